// End to end over real loopback sockets: the agent's records reach a real asio
// server and decode with the wire library, intact, in order, with their names.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <map>
#include <thread>

#include "inferscope/agent.hpp"
#include "test_collector.hpp"

namespace inferscope::agent {
namespace {

using testing::only;
using testing::TestCollector;
using namespace std::chrono_literals;

Config config_for(const TestCollector& c) {
  Config cfg;
  cfg.collector = c.address();
  cfg.service = "agent-test";
  cfg.flush_interval = 5ms;
  cfg.nvtx = false;
  return cfg;
}

std::map<uint32_t, std::string> names(const std::vector<wire::Record>& records) {
  std::map<uint32_t, std::string> out;
  for (auto& d : only<wire::StringDef>(records)) out[d.id] = d.value;
  return out;
}

TEST(AgentEndToEnd, EveryRecordKindArrivesIntact) {
  TestCollector collector;
  Config cfg = config_for(collector);
  cfg.rank = 3;
  cfg.world_size = 8;
  cfg.auth_token = "secret";
  cfg.model.name = "tiny";
  cfg.model.layers = {{wire::LayerKind::kAttention, wire::FfnKind::kMoe, 4}};
  cfg.model.top_k = 2;
  const uint32_t span_name = intern("e2e.span");
  const uint32_t range_name = intern("e2e.range");
  const uint32_t counter_name = intern("e2e.counter");
  const std::vector<uint32_t> routed = {5, 0, 7, 1};
  wire::RequestEvent req{42, 100, 200, 300, 10, 5, 3, 2, wire::RequestStatus::kOk};
  int64_t before = 0, after = 0;
  {
    Agent agent(cfg);
    before = now_ns();
    agent.span(span_name, 1000, 2000, wire::SpanCategory::kCpuRange, 7, 1);
    { ScopedRange r(agent, range_name, 9); }
    agent.expert_load(11, 0, routed, 8, 1, 2);
    agent.memory(wire::MemoryKind::kSsmState, 123, 456);
    agent.prefix_cache(10, 4, 6, 0);
    agent.stage(42, wire::Stage::kConnector, 5000, 6000, wire::Device::kGpu, 700);
    agent.request(req);
    agent.counter(counter_name, 2.5);
    agent.gauge(counter_name, 9.0);
    after = now_ns();
    ASSERT_TRUE(agent.flush(20s));
    const Stats s = agent.stats();
    EXPECT_EQ(s.records_recorded, 9u);
    EXPECT_EQ(s.records_sent, 9u);
    EXPECT_EQ(s.records_dropped, 0u);
    EXPECT_TRUE(s.connected);
  }
  // The agent has written everything; give the server's thread time to read it.
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  ASSERT_EQ(collector.error(), "");
  const auto recs = collector.records();
  ASSERT_FALSE(recs.empty());
  // Hello first, with what the config said.
  const auto* hello = std::get_if<wire::Hello>(&recs.front());
  ASSERT_NE(hello, nullptr);
  EXPECT_EQ(hello->service, "agent-test");
  EXPECT_EQ(hello->rank, 3u);
  EXPECT_EQ(hello->world_size, 8u);
  EXPECT_EQ(hello->auth_token, "secret");
  EXPECT_EQ(hello->model, cfg.model);
  EXPECT_EQ(hello->pid, static_cast<uint32_t>(getpid()));
  EXPECT_GT(hello->clock.realtime_minus_monotonic_ns, 0);

  auto n = names(recs);
  auto spans = only<wire::Span>(recs);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(n[spans[0].name_id], "e2e.span");
  EXPECT_EQ(spans[0].start_ns, 1000);
  EXPECT_EQ(spans[0].end_ns, 2000);
  EXPECT_EQ(spans[0].request_id, 7u);
  EXPECT_EQ(spans[0].depth, 1);
  EXPECT_EQ(n[spans[1].name_id], "e2e.range");
  EXPECT_EQ(spans[1].request_id, 9u);
  EXPECT_GE(spans[1].start_ns, before);
  EXPECT_LE(spans[1].end_ns, after);
  EXPECT_LE(spans[1].start_ns, spans[1].end_ns);
  EXPECT_EQ(spans[0].track_id, spans[1].track_id);
  EXPECT_NE(spans[0].track_id, 0u);

  auto loads = only<wire::ExpertLoad>(recs);
  ASSERT_EQ(loads.size(), 1u);
  EXPECT_EQ(loads[0].step, 11u);
  EXPECT_EQ(loads[0].routed, routed);
  EXPECT_EQ(loads[0].tokens, 8u);
  EXPECT_EQ(loads[0].dropped, 1u);
  EXPECT_EQ(loads[0].rerouted, 2u);

  auto mem = only<wire::MemorySample>(recs);
  ASSERT_EQ(mem.size(), 1u);
  EXPECT_EQ(mem[0].rank, 3u);
  EXPECT_EQ(mem[0].kind, wire::MemoryKind::kSsmState);
  EXPECT_EQ(mem[0].used_bytes, 123u);
  EXPECT_EQ(mem[0].capacity_bytes, 456u);

  auto pc = only<wire::PrefixCacheSample>(recs);
  ASSERT_EQ(pc.size(), 1u);
  EXPECT_EQ(pc[0].attention_queried_tokens, 10u);
  EXPECT_EQ(pc[0].attention_hit_tokens, 4u);
  EXPECT_EQ(pc[0].ssm_queried_tokens, 6u);

  auto st = only<wire::StageTiming>(recs);
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0],
            (wire::StageTiming{42, wire::Stage::kConnector, wire::Device::kGpu, 5000, 6000, 700}));

  auto rq = only<wire::RequestEvent>(recs);
  ASSERT_EQ(rq.size(), 1u);
  EXPECT_EQ(rq[0], req);

  auto ctr = only<wire::CounterSample>(recs);
  ASSERT_EQ(ctr.size(), 2u);
  EXPECT_EQ(n[ctr[0].name_id], "e2e.counter");
  EXPECT_FALSE(ctr[0].is_gauge);
  EXPECT_EQ(ctr[0].value, 2.5);
  EXPECT_TRUE(ctr[1].is_gauge);
  EXPECT_EQ(ctr[1].value, 9.0);

  // The last record is the final health report, after all data.
  const auto* health = std::get_if<wire::AgentHealth>(&recs.back());
  ASSERT_NE(health, nullptr);
  EXPECT_EQ(health->records_sent, 9u);
  EXPECT_EQ(health->records_dropped, 0u);
}

// ScopedRange's inline path (TSC ticks and a 32-byte record, converted by the
// shipper): nesting depth, request id or none, the recording thread's track,
// nested times and INFERSCOPE_RANGE's once-per-site names all survive.
TEST(AgentEndToEnd, InlineRangesCarryDepthRequestIdAndThread) {
  TestCollector collector;
  const uint32_t outer = intern("e2e.outer");
  uint32_t worker_tid = 0;
  int64_t before = 0, after = 0;
  {
    Agent agent(config_for(collector));
    auto body = [&] {
      ScopedRange a(agent, outer, 5);
      INFERSCOPE_RANGE(agent, "e2e.inner");
      { INFERSCOPE_RANGE(agent, "e2e.innermost"); }
    };
    before = now_ns();
    body();  // registers this thread's ring (slow path)
    body();  // inline path
    std::thread t([&] {
      worker_tid = static_cast<uint32_t>(::syscall(SYS_gettid));
      body();
      body();
    });
    t.join();
    after = now_ns();
    ASSERT_TRUE(agent.flush(20s));
  }
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  const auto recs = collector.records();
  auto n = names(recs);
  const auto spans = only<wire::Span>(recs);
  ASSERT_EQ(spans.size(), 12u);
  const auto main_tid = static_cast<uint32_t>(::syscall(SYS_gettid));
  for (size_t i = 0; i < spans.size(); i += 3) {
    // Closed innermost first.
    const wire::Span& in = spans[i];
    const wire::Span& mid = spans[i + 1];
    const wire::Span& out = spans[i + 2];
    EXPECT_EQ(n[in.name_id], "e2e.innermost");
    EXPECT_EQ(n[mid.name_id], "e2e.inner");
    EXPECT_EQ(n[out.name_id], "e2e.outer");
    EXPECT_EQ(in.depth, 2);
    EXPECT_EQ(mid.depth, 1);
    EXPECT_EQ(out.depth, 0);
    EXPECT_EQ(in.request_id, 0u);
    EXPECT_EQ(mid.request_id, 0u);
    EXPECT_EQ(out.request_id, 5u);
    for (const auto* s : {&in, &mid, &out}) {
      EXPECT_EQ(s->category, wire::SpanCategory::kCpuRange);
      EXPECT_EQ(s->track_kind, wire::TrackKind::kCpuThread);
      EXPECT_EQ(s->track_id, i < 6 ? main_tid : worker_tid);
    }
    // Nested in time as in code, all within the test's own clock reads.
    EXPECT_LE(before, out.start_ns);
    EXPECT_LE(out.start_ns, mid.start_ns);
    EXPECT_LE(mid.start_ns, in.start_ns);
    EXPECT_LE(in.start_ns, in.end_ns);
    EXPECT_LE(in.end_ns, mid.end_ns);
    EXPECT_LE(mid.end_ns, out.end_ns);
    EXPECT_LE(out.end_ns, after);
  }
}

TEST(AgentEndToEnd, EmptyCollectorRecordsNothing) {
  Config cfg;
  cfg.collector = "";
  Agent agent(cfg);
  const uint32_t name = intern("noop");
  for (int i = 0; i < 1000; ++i) {
    ScopedRange r(agent, name);
    agent.counter(name, 1);
  }
  EXPECT_TRUE(agent.flush(10ms));
  EXPECT_EQ(agent.stats().records_recorded, 0u);
  EXPECT_FALSE(agent.stats().connected);
}

TEST(AgentEndToEnd, UnixSocket) {
  const std::string path = "/tmp/inferscope-agent-test-" + std::to_string(getpid()) + ".sock";
  TestCollector collector(TestCollector::Mode::kRead, 0, path);
  {
    Agent agent(config_for(collector));
    agent.counter(intern("unix.counter"), 1);
    ASSERT_TRUE(agent.flush(20s));
  }
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  EXPECT_EQ(only<wire::CounterSample>(collector.records()).size(), 1u);
}

}  // namespace
}  // namespace inferscope::agent
