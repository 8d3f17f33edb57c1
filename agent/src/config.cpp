// Config::from_environment: INFERSCOPE_* variables over a base config. A value
// that does not parse is reported on stderr and ignored (the base value stays),
// so a typo never stops the host from starting.
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "inferscope/agent.hpp"

namespace inferscope::agent {
namespace {

const char* env(const char* name) {
  return std::getenv(name);
}

void complain(const char* name, const char* value, const char* expected) {
  std::fprintf(stderr, "inferscope agent: ignoring %s='%s' (expected %s)\n", name, value, expected);
}

template <typename T>
void read_uint(const char* name, T& out, uint64_t min, uint64_t max) {
  const char* v = env(name);
  if (!v) return;
  uint64_t x = 0;
  const char* end = v + std::char_traits<char>::length(v);
  auto [p, ec] = std::from_chars(v, end, x);
  if (ec != std::errc{} || p != end || x < min || x > max) {
    char expected[96];
    std::snprintf(expected, sizeof expected, "an integer in [%llu, %llu]",
                  static_cast<unsigned long long>(min), static_cast<unsigned long long>(max));
    complain(name, v, expected);
    return;
  }
  out = static_cast<T>(x);
}

void read_ms(const char* name, std::chrono::milliseconds& out, uint64_t min, uint64_t max) {
  uint64_t ms = static_cast<uint64_t>(out.count());
  read_uint(name, ms, min, max);
  out = std::chrono::milliseconds(ms);
}

void read_bool(const char* name, bool& out) {
  const char* v = env(name);
  if (!v) return;
  const std::string s(v);
  if (s == "1" || s == "true" || s == "on" || s == "yes")
    out = true;
  else if (s == "0" || s == "false" || s == "off" || s == "no")
    out = false;
  else
    complain(name, v, "1/0, true/false, on/off");
}

void read_string(const char* name, std::string& out) {
  if (const char* v = env(name)) out = v;
}

}  // namespace

Config Config::from_environment(Config base) {
  Config c = std::move(base);
  if (const char* v = env("INFERSCOPE_COLLECTOR")) {
    const std::string s(v);
    c.collector = (s == "off" || s == "none") ? std::string() : s;
  }
  read_string("INFERSCOPE_SERVICE", c.service);
  read_string("INFERSCOPE_INSTANCE", c.instance);
  read_uint("INFERSCOPE_RANK", c.rank, 0, wire::kMaxRanks - 1);
  read_uint("INFERSCOPE_WORLD_SIZE", c.world_size, 1, wire::kMaxRanks);
  read_string("INFERSCOPE_TOKEN", c.auth_token);
  if (const char* path = env("INFERSCOPE_TOKEN_FILE")) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string token = ss.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' '))
      token.pop_back();
    if (!in)
      complain("INFERSCOPE_TOKEN_FILE", path, "a readable file");
    else
      c.auth_token = token;
  }
  if (const char* v = env("INFERSCOPE_SPAN_SAMPLE_RATE")) {
    char* end = nullptr;
    errno = 0;
    const double r = std::strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(r >= 0.0 && r <= 1.0))
      complain("INFERSCOPE_SPAN_SAMPLE_RATE", v, "a number in [0, 1]");
    else
      c.span_sample_rate = r;
  }
  read_uint("INFERSCOPE_BUFFER_BYTES", c.thread_buffer_bytes, 64u << 10, 1u << 30);
  read_uint("INFERSCOPE_MAX_THREADS", c.max_threads, 1, 4096);
  read_uint("INFERSCOPE_MAX_PENDING_BYTES", c.max_pending_bytes, 1u << 20, uint64_t{1} << 34);
  read_ms("INFERSCOPE_FLUSH_MS", c.flush_interval, 1, 60'000);
  read_ms("INFERSCOPE_RECONNECT_MAX_MS", c.reconnect_max_backoff, 50, 600'000);
  read_ms("INFERSCOPE_SHUTDOWN_TIMEOUT_MS", c.shutdown_timeout, 0, 600'000);
  read_ms("INFERSCOPE_ACK_TIMEOUT_MS", c.ack_timeout, 1, 600'000);
  read_ms("INFERSCOPE_PROTOCOL_ERROR_BACKOFF_MS", c.protocol_error_backoff, 1, 3'600'000);
  read_bool("INFERSCOPE_NVTX", c.nvtx);
  read_bool("INFERSCOPE_CUPTI", c.cupti);
  if (const char* v = env("INFERSCOPE_GPU_TRACE")) {
    if (!parse_gpu_trace_mode(v, c.gpu_trace))
      complain("INFERSCOPE_GPU_TRACE", v, "off, sampled, triggered or full");
  }
  read_ms("INFERSCOPE_GPU_TRACE_BURST_MS", c.gpu_trace_burst, 1, 60'000);
  uint64_t period_s = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(c.gpu_trace_period).count());
  if (env("INFERSCOPE_GPU_TRACE_PERIOD_S")) {
    read_uint("INFERSCOPE_GPU_TRACE_PERIOD_S", period_s, 1, 86'400);
    c.gpu_trace_period = std::chrono::seconds(period_s);
  }
  if (const char* v = env("INFERSCOPE_GPU_TRACE_KINDS")) {
    if (!parse_gpu_trace_kinds(v, c.gpu_trace_kinds))
      complain("INFERSCOPE_GPU_TRACE_KINDS", v,
               "a comma list of kernel,callbacks,memcpy,memset,runtime,driver,extcorr with kernel");
  }
  read_bool("INFERSCOPE_GPU_TRACE_DETACH", c.gpu_trace_detach);
  read_ms("INFERSCOPE_GPU_CAPTURE_MAX_MS", c.gpu_capture_max, 1, 600'000);
  uint64_t cooldown_s = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(c.gpu_capture_cooldown).count());
  if (env("INFERSCOPE_GPU_CAPTURE_COOLDOWN_S")) {
    read_uint("INFERSCOPE_GPU_CAPTURE_COOLDOWN_S", cooldown_s, 0, 86'400);
    c.gpu_capture_cooldown = std::chrono::seconds(cooldown_s);
  }
  read_bool("INFERSCOPE_COMPRESS", c.compress);
  return c;
}

}  // namespace inferscope::agent

namespace inferscope::agent {
Config Config::from_environment() {
  return from_environment(Config{});
}
}  // namespace inferscope::agent
