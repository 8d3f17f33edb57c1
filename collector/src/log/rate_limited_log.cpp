#include "inferscope/collector/rate_limited_log.hpp"

#include <cstdio>

namespace inferscope::collector {

RateLimitedLog::RateLimitedLog(Sink sink, std::chrono::nanoseconds interval, Clock clock)
    : sink_(std::move(sink)), interval_(interval), clock_(std::move(clock)) {}

RateLimitedLog::~RateLimitedLog() {
  flush_all();
}

std::string RateLimitedLog::summary(std::string_view key, const Entry& e) const {
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%g", std::chrono::duration<double>(interval_).count());
  return std::to_string(e.suppressed) + " more \"" + std::string(key) + "\" line" +
         (e.suppressed == 1 ? "" : "s") + " suppressed (at most one per " + seconds + " s)";
}

void RateLimitedLog::write(std::string_view key, const std::string& message) {
  if (!sink_) return;
  const auto now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    it = entries_.emplace(std::string(key), Entry{}).first;
  } else if (now - it->second.last_written < interval_) {
    ++it->second.suppressed;
    ++suppressed_total_;
    it->second.last_suppressed = message;
    return;
  }
  Entry& e = it->second;
  sink_(e.suppressed == 0 ? message : message + " [" + summary(key, e) + "]");
  e.last_written = now;
  e.suppressed = 0;
  e.last_suppressed.clear();
}

void RateLimitedLog::flush_due() {
  flush(false);
}
void RateLimitedLog::flush_all() {
  flush(true);
}

void RateLimitedLog::flush(bool all) {
  if (!sink_) return;
  const auto now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, e] : entries_) {
    if (e.suppressed == 0 || (!all && now - e.last_written < interval_)) continue;
    sink_(summary(key, e) + "; the last: " + e.last_suppressed);
    e.last_written = now;
    e.suppressed = 0;
    e.last_suppressed.clear();
  }
}

uint64_t RateLimitedLog::suppressed_total() const {
  std::lock_guard<std::mutex> lock(mu_);
  return suppressed_total_;
}

}  // namespace inferscope::collector
