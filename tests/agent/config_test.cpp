// Config::from_environment and collector address parsing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

#include "../../agent/src/endpoint.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::agent {
namespace {

struct EnvGuard {
  std::vector<std::string> names;
  void set(const char* n, const char* v) {
    names.emplace_back(n);
    setenv(n, v, 1);
  }
  ~EnvGuard() {
    for (auto& n : names) unsetenv(n.c_str());
  }
};

TEST(AgentConfig, ReadsEveryVariable) {
  EnvGuard env;
  env.set("INFERSCOPE_COLLECTOR", "unix:///tmp/x.sock");
  env.set("INFERSCOPE_SERVICE", "svc");
  env.set("INFERSCOPE_INSTANCE", "inst");
  env.set("INFERSCOPE_RANK", "3");
  env.set("INFERSCOPE_WORLD_SIZE", "8");
  env.set("INFERSCOPE_TOKEN", "tok");
  env.set("INFERSCOPE_SPAN_SAMPLE_RATE", "0.25");
  env.set("INFERSCOPE_BUFFER_BYTES", "262144");
  env.set("INFERSCOPE_MAX_THREADS", "17");
  env.set("INFERSCOPE_MAX_PENDING_BYTES", "2097152");
  env.set("INFERSCOPE_FLUSH_MS", "7");
  env.set("INFERSCOPE_RECONNECT_MAX_MS", "900");
  env.set("INFERSCOPE_SHUTDOWN_TIMEOUT_MS", "300");
  env.set("INFERSCOPE_NVTX", "0");
  env.set("INFERSCOPE_CUPTI", "1");
  env.set("INFERSCOPE_COMPRESS", "true");
  const Config c = Config::from_environment();
  EXPECT_EQ(c.collector, "unix:///tmp/x.sock");
  EXPECT_EQ(c.service, "svc");
  EXPECT_EQ(c.instance, "inst");
  EXPECT_EQ(c.rank, 3u);
  EXPECT_EQ(c.world_size, 8u);
  EXPECT_EQ(c.auth_token, "tok");
  EXPECT_DOUBLE_EQ(c.span_sample_rate, 0.25);
  EXPECT_EQ(c.thread_buffer_bytes, 262144u);
  EXPECT_EQ(c.max_threads, 17u);
  EXPECT_EQ(c.max_pending_bytes, 2097152u);
  EXPECT_EQ(c.flush_interval.count(), 7);
  EXPECT_EQ(c.reconnect_max_backoff.count(), 900);
  EXPECT_EQ(c.shutdown_timeout.count(), 300);
  EXPECT_FALSE(c.nvtx);
  EXPECT_TRUE(c.cupti);
  EXPECT_TRUE(c.compress);
}

TEST(AgentConfig, BadValuesKeepTheBase) {
  EnvGuard env;
  env.set("INFERSCOPE_RANK", "-1");
  env.set("INFERSCOPE_SPAN_SAMPLE_RATE", "1.5");
  env.set("INFERSCOPE_BUFFER_BYTES", "12abc");
  env.set("INFERSCOPE_NVTX", "maybe");
  Config base;
  base.rank = 5;
  const Config c = Config::from_environment(base);
  EXPECT_EQ(c.rank, 5u);
  EXPECT_DOUBLE_EQ(c.span_sample_rate, 1.0);
  EXPECT_EQ(c.thread_buffer_bytes, base.thread_buffer_bytes);
  EXPECT_TRUE(c.nvtx);
}

TEST(AgentConfig, OffDisablesTheCollector) {
  EnvGuard env;
  env.set("INFERSCOPE_COLLECTOR", "off");
  EXPECT_EQ(Config::from_environment().collector, "");
}

TEST(AgentEndpoint, ParsesTcpUnixAndRejectsJunk) {
  detail::Endpoint e;
  std::string err;
  ASSERT_TRUE(detail::parse_endpoint("tcp://127.0.0.1:7431", e, err));
  EXPECT_EQ(e.kind, detail::Endpoint::Kind::kTcp);
  EXPECT_EQ(e.host, "127.0.0.1");
  EXPECT_EQ(e.port, 7431);
  ASSERT_TRUE(detail::parse_endpoint("localhost:9", e, err));
  EXPECT_EQ(e.host, "localhost");
  ASSERT_TRUE(detail::parse_endpoint("tcp://[::1]:80", e, err));
  EXPECT_EQ(e.host, "::1");
  ASSERT_TRUE(detail::parse_endpoint("unix:///run/a.sock", e, err));
  EXPECT_EQ(e.kind, detail::Endpoint::Kind::kUnix);
  EXPECT_EQ(e.path, "/run/a.sock");
  for (const char* bad : {"tcp://host", "tcp://h:0", "tcp://h:70000", "tcp://h:12x", "http://h:1",
                          "unix://", ":80"}) {
    EXPECT_FALSE(detail::parse_endpoint(bad, e, err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
}

TEST(AgentEndpoint, BadAddressMeansRecordNothing) {
  Config c;
  c.collector = "tcp://nowhere";
  Agent agent(c);
  agent.counter(intern("x"), 1);
  EXPECT_EQ(agent.stats().records_recorded, 0u);
}

TEST(AgentIntern, SameNameSameIdAcrossThreads) {
  const uint32_t a = intern("intern.same");
  uint32_t b = 0;
  std::thread t([&] { b = intern("intern.same"); });
  t.join();
  EXPECT_EQ(a, b);
  EXPECT_NE(a, 0u);
  EXPECT_NE(intern("intern.other"), a);
}

}  // namespace
}  // namespace inferscope::agent

namespace inferscope::agent {
namespace {

TEST(AgentConfig, ReadsTheGpuTraceVariables) {
  EnvGuard env;
  env.set("INFERSCOPE_GPU_TRACE", "sampled");
  env.set("INFERSCOPE_GPU_TRACE_BURST_MS", "30");
  env.set("INFERSCOPE_GPU_TRACE_PERIOD_S", "5");
  env.set("INFERSCOPE_GPU_TRACE_KINDS", "kernel,callbacks,memcpy");
  env.set("INFERSCOPE_GPU_CAPTURE_MAX_MS", "1500");
  env.set("INFERSCOPE_GPU_CAPTURE_COOLDOWN_S", "0");
  env.set("INFERSCOPE_GPU_TRACE_DETACH", "0");
  EXPECT_TRUE(Config{}.gpu_trace_detach) << "on by default since the H100 run (agent.hpp)";
  const Config c = Config::from_environment();
  EXPECT_FALSE(c.gpu_trace_detach) << "INFERSCOPE_GPU_TRACE_DETACH=0 keeps CUPTI attached";
  EXPECT_EQ(c.gpu_trace, GpuTraceMode::kSampled);
  EXPECT_EQ(c.gpu_trace_burst.count(), 30);
  EXPECT_EQ(c.gpu_trace_period.count(), 5000);
  EXPECT_EQ(c.gpu_trace_kinds, kGpuKernels | kGpuLaunchCallbacks | kGpuMemcpy);
  EXPECT_EQ(c.gpu_capture_max.count(), 1500);
  EXPECT_EQ(c.gpu_capture_cooldown.count(), 0);
}

TEST(AgentConfig, BadGpuTraceValuesKeepTheDefaults) {
  EnvGuard env;
  env.set("INFERSCOPE_GPU_TRACE", "sometimes");
  env.set("INFERSCOPE_GPU_TRACE_KINDS", "kernel,everything");
  env.set("INFERSCOPE_GPU_TRACE_PERIOD_S", "0");
  env.set("INFERSCOPE_GPU_TRACE_DETACH", "sometimes");
  testing::internal::CaptureStderr();
  const Config c = Config::from_environment();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(c.gpu_trace, GpuTraceMode::kOff);
  EXPECT_TRUE(c.gpu_trace_detach) << "a bad value keeps the default (on)";
  EXPECT_NE(err.find("INFERSCOPE_GPU_TRACE_DETACH"), std::string::npos) << err;
  EXPECT_EQ(c.gpu_trace_kinds, kGpuTraceDefaultKinds);
  EXPECT_EQ(c.gpu_trace_period.count(), 10'000);
  EXPECT_NE(err.find("INFERSCOPE_GPU_TRACE='sometimes'"), std::string::npos) << err;
  EXPECT_NE(err.find("INFERSCOPE_GPU_TRACE_KINDS"), std::string::npos) << err;
  EXPECT_NE(err.find("INFERSCOPE_GPU_TRACE_PERIOD_S"), std::string::npos) << err;
}

TEST(AgentConfig, KindsWithoutKernelsAreRefused) {
  uint32_t k = 0;
  EXPECT_FALSE(parse_gpu_trace_kinds("memcpy", k));
  EXPECT_TRUE(parse_gpu_trace_kinds("default", k));
  EXPECT_EQ(k, kGpuTraceDefaultKinds);
  EXPECT_TRUE(parse_gpu_trace_kinds("all", k));
  EXPECT_TRUE(k & kGpuExternalCorrelation);
}

// Without CUPTI (this test has no GPU, or no CUDA build) the modes still run:
// captures start in the scheduler and are counted, nothing crashes.
TEST(AgentGpuTrace, WithoutCuptiCapturesAreScheduledAndCounted) {
  Config c;
  c.collector = "";
  c.gpu_trace = GpuTraceMode::kTriggered;
  c.gpu_capture_cooldown = std::chrono::hours(1);
  ::setenv("INFERSCOPE_CUPTI_LIBRARY", "/nonexistent/libcupti.so", 1);
  testing::internal::CaptureStderr();
  {
    Agent a(c);
    EXPECT_EQ(a.gpu_trace_mode(), GpuTraceMode::kTriggered);
    EXPECT_EQ(a.request_gpu_capture(0, std::chrono::milliseconds(1), 77),
              Agent::CaptureResult::kStarted);
    EXPECT_EQ(a.request_gpu_capture(0, std::chrono::milliseconds(1), 78),
              Agent::CaptureResult::kRefusedBusy);
    // Poll (no time bound on correctness): the 1 ms capture completes.
    for (int i = 0; i < 30'000 && a.stats().gpu.captures_completed == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const GpuTraceStats g = a.stats().gpu;
    EXPECT_FALSE(g.cupti_available);
    EXPECT_EQ(g.captures_started, 1u);
    EXPECT_EQ(g.captures_completed, 1u);
    EXPECT_EQ(g.captures_refused_busy, 1u);
    EXPECT_EQ(g.last_capture_tag, 77u);
    EXPECT_EQ(a.request_gpu_capture(0, std::chrono::milliseconds(1), 79),
              Agent::CaptureResult::kRefusedCooldown);
    a.set_gpu_trace_mode(GpuTraceMode::kOff);
    EXPECT_EQ(a.request_gpu_capture(3, std::chrono::milliseconds(0), 80),
              Agent::CaptureResult::kRefusedOff);
    static const uint32_t kName = intern("gpu_trace_no_cupti");
    { ScopedRange r(a, kName); }
    a.gpu_step();
  }
  testing::internal::GetCapturedStderr();
  ::unsetenv("INFERSCOPE_CUPTI_LIBRARY");
}

}  // namespace
}  // namespace inferscope::agent
