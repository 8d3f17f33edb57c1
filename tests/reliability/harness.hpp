// Fault-injection harness: real processes, real sockets, real /proc.
//
// [SECTION] Child      fork/exec a binary, read its stdout lines, signal it, reap it
// [SECTION] Collector  inferscope-collector on free ports, its listening lines parsed
// [SECTION] Metrics    GET /metrics over loopback, the text exposition parsed
// [SECTION] Traces     every record of a trace directory, read with TraceFileReader
// [SECTION] Peers      raw loopback sockets for misbehaving clients
//
// Everything is bounded in time: every wait takes a deadline, and a Child's
// destructor kills (SIGKILL) and reaps whatever is still running, so a failed
// assertion never leaves a process behind.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::reliability {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// [SECTION] Child
struct ChildOptions {
  std::string stderr_path;       // "" = inherit
  uint64_t file_size_limit = 0;  // RLIMIT_FSIZE in bytes (0 = none); SIGXFSZ is ignored so
                                 // writes past it fail with EFBIG, as on a full disk
};

class Child {
 public:
  Child() = default;
  Child(const std::string& binary, const std::vector<std::string>& args, ChildOptions options = {});
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;

  pid_t pid() const { return pid_; }
  bool running();
  // The next stdout line, or nullopt at EOF / after the timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  // Everything printed on stdout so far plus whatever comes until EOF or the timeout.
  std::string read_all(std::chrono::milliseconds timeout);
  void signal(int sig);
  // Waits for exit; the exit code (128 + signal when killed), or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // SIGKILL and reap (idempotent).
  void kill_and_reap();

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string pending_;
  std::optional<int> status_;
};

// Resident set (VmRSS), its peak (VmHWM) in KiB and open descriptors of a process, from /proc.
uint64_t rss_kib(pid_t pid);
uint64_t peak_rss_kib(pid_t pid);
size_t open_fds(pid_t pid);

// [SECTION] Collector
struct CollectorPorts {
  uint16_t ingest = 0, metrics = 0, viewer = 0;
};

std::string collector_binary();
std::string engine_binary();
std::string source_dir();

// Starts inferscope-collector with `--listen tcp://127.0.0.1:<ingest_port>` (0 = free),
// free metrics and viewer ports and the extra arguments; waits for the three listening lines.
class CollectorProcess {
 public:
  CollectorProcess(uint16_t ingest_port, const std::vector<std::string>& extra_args,
                   ChildOptions options = {});
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const CollectorPorts& ports() const { return ports_; }
  std::string ingest_address() const { return "tcp://127.0.0.1:" + std::to_string(ports_.ingest); }
  Child& child() { return child_; }

 private:
  Child child_;
  CollectorPorts ports_;
  bool ok_ = false;
  std::string error_;
};

// [SECTION] Metrics
using Series = std::map<std::string, double>;  // "name{labels}" -> value, labels as printed

// GET http://127.0.0.1:port/metrics; empty on failure.
std::string http_get(uint16_t port, const std::string& path = "/metrics");
Series parse_exposition(const std::string& text);
Series scrape(uint16_t port);
// Sum of every series named `name` (exactly) whose labels hold every `key="value"` part.
double sum_series(const Series& series, const std::string& name,
                  const std::vector<std::string>& label_parts = {});

// [SECTION] Traces
struct TraceCount {
  uint64_t files = 0, frames = 0, corrupt_frames = 0, bytes_skipped = 0, truncated_tails = 0;
  uint64_t file_bytes = 0;   // sizes of the segment files
  uint64_t frame_bytes = 0;  // bytes in complete, checksum-valid frames (plus 16-byte file headers)
  uint64_t largest_file = 0;
  uint64_t undecodable_frames = 0;  // CRC-valid frames whose records do not decode
  uint64_t segments_without_hello =
      0;  // a segment whose first frame is not a hello (not self-contained)
  std::map<uint32_t, std::map<uint8_t, uint64_t>> records;  // source id -> record kind -> count
  std::map<std::string, uint64_t> counter_records_by_name;  // counter samples by interned name
  uint64_t records_of(wire::RecordKind kind) const;         // over all sources
};
TraceCount read_trace_dir(const std::string& dir);

// [SECTION] Peers
// A connected, blocking loopback TCP socket; -1 on failure.
int connect_loopback(uint16_t port);
bool send_all(int fd, const void* data, size_t n);
// True once the peer closed the connection (EOF or reset) within the timeout.
bool closed_by_peer(int fd, std::chrono::milliseconds timeout);

// A fresh empty directory under the test temp dir (removed by the caller's TempDir).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Polls pred() every 10 ms until it holds or the timeout passes.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

}  // namespace inferscope::reliability

namespace inferscope::reliability {

// [SECTION] Proxy
// A loopback TCP proxy in front of a port, for network faults between an agent
// and the collector: cut() resets every connection passing through it (the
// collector stays up; the agent sees a broken connection and reconnects).
class Proxy {
 public:
  explicit Proxy(uint16_t upstream_port);
  ~Proxy();
  uint16_t port() const { return port_; }
  void cut();
  size_t connections_accepted() const { return accepted_; }

 private:
  void run();
  uint16_t upstream_, port_ = 0;
  int listener_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stop_{false};
  std::atomic<bool> cut_{false};
  std::atomic<size_t> accepted_{0};
  std::thread thread_;
};

}  // namespace inferscope::reliability
