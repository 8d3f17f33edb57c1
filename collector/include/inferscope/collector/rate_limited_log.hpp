// inferscope collector: log lines that a flood of connections cannot multiply.
//
//   RateLimitedLog log(log_line);                      // 10 s interval, steady clock
//   log.write("timeout", "closing tcp 1.2.3.4:5: no hello in time");
//   ...                                                // once a second:
//   log.flush_due();
//
// At most one line per key per interval goes to the sink. Lines in between
// are counted, not written; the count rides on the next line written for that
// key ("... [1234 more \"timeout\" lines suppressed in the last 10 s]"), or, if
// the flood has stopped, flush_due() writes it with the last suppressed message.
// Keys are the collector's rejection reasons and the like, a small fixed set:
// the table is never pruned. Thread-safe (the viewer API logs from its query thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace inferscope::collector {

class RateLimitedLog {
 public:
  using Sink = std::function<void(const std::string&)>;
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  static constexpr std::chrono::seconds kDefaultInterval{10};

  // A null sink makes every call a no-op. The clock is injectable for tests.
  explicit RateLimitedLog(
      Sink sink, std::chrono::nanoseconds interval = kDefaultInterval,
      Clock clock = [] { return std::chrono::steady_clock::now(); });
  ~RateLimitedLog();  // flush_all(): a count still owed is written, not lost
  RateLimitedLog(const RateLimitedLog&) = delete;
  RateLimitedLog& operator=(const RateLimitedLog&) = delete;

  void write(std::string_view key, const std::string& message);
  // Writes the suppressed count of every key whose interval has passed since its last line.
  void flush_due();
  // Writes every suppressed count now (at shutdown: no count is lost).
  void flush_all();
  // Lines suppressed so far in total (for tests and the figures).
  uint64_t suppressed_total() const;

 private:
  struct Entry {
    std::chrono::steady_clock::time_point last_written{};
    uint64_t suppressed = 0;  // since last_written
    std::string last_suppressed;
  };
  std::string summary(std::string_view key, const Entry& e) const;
  void flush(bool all);

  Sink sink_;
  std::chrono::nanoseconds interval_;
  Clock clock_;
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
  uint64_t suppressed_total_ = 0;
};

}  // namespace inferscope::collector
