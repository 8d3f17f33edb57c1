// The agent under stress, against a real loopback server: many threads,
// a collector that is down, restarts or stalls, bounded shutdown, sampling.
#include <gtest/gtest.h>

#include <barrier>
#include <cstdio>
#include <map>
#include <set>
#include <thread>

#include "inferscope/agent.hpp"
#include "test_collector.hpp"

namespace inferscope::agent {
namespace {

using testing::only;
using testing::TestCollector;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

Config fast_config(const std::string& address) {
  Config c;
  c.collector = address;
  c.service = "robustness";
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 100ms;
  c.nvtx = false;
  return c;
}

bool is_data(const wire::Record& r) {
  return !std::holds_alternative<wire::Hello>(r) && !std::holds_alternative<wire::StringDef>(r) &&
         !std::holds_alternative<wire::AgentHealth>(r);
}

size_t count_data(const std::vector<wire::Record>& recs) {
  size_t n = 0;
  for (auto& r : recs) n += is_data(r);
  return n;
}

// Every name id a record refers to was defined earlier on the same connection.
void expect_strings_precede_use(const std::vector<wire::Record>& conn) {
  std::set<uint32_t> defined;
  for (auto& r : conn) {
    if (auto* d = std::get_if<wire::StringDef>(&r)) defined.insert(d->id);
    if (auto* s = std::get_if<wire::Span>(&r)) {
      ASSERT_TRUE(defined.count(s->name_id))
          << "span name " << s->name_id << " used before defined";
    }
    if (auto* c = std::get_if<wire::CounterSample>(&r)) {
      ASSERT_TRUE(defined.count(c->name_id))
          << "counter name " << c->name_id << " used before defined";
    }
  }
}

// Waits until the agent on connection conn_index has closed it (shut down)
// and returns the last record if it is a health report (the final one).
wire::AgentHealth final_health(TestCollector& c, size_t conn_index) {
  EXPECT_TRUE(c.wait_closed(conn_index, 20s));
  auto conns = c.by_connection();
  if (conns.size() <= conn_index || conns[conn_index].empty()) return {};
  auto* h = std::get_if<wire::AgentHealth>(&conns[conn_index].back());
  EXPECT_NE(h, nullptr) << "the last record is not the final health report";
  return h ? *h : wire::AgentHealth{};
}

uint16_t free_port() {
  TestCollector probe;
  return probe.port();
}

TEST(AgentRobustness, ManyThreadsArriveCompleteAndOrderedPerThread) {
  TestCollector collector;
  constexpr int kThreads = 6;
  constexpr uint64_t kPerThread = 10000;
  Config cfg = fast_config(collector.address());
  cfg.thread_buffer_bytes = 4u << 20;  // large enough that nothing drops
  {
    Agent agent(cfg);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&agent, t] {
        const uint32_t name = intern("thread." + std::to_string(t));
        const std::vector<uint32_t> routed(8, static_cast<uint32_t>(t));
        for (uint64_t i = 0; i < kPerThread; ++i) {
          agent.span(name, 1, 2, wire::SpanCategory::kCpuRange, i);
          if (i % 100 == 0) agent.expert_load(i, static_cast<uint32_t>(t), routed, 8, 0);
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE(agent.flush(20s));
    EXPECT_EQ(agent.stats().records_dropped, 0u);
  }
  const auto health = final_health(collector, 0);
  const auto conns = collector.by_connection();
  ASSERT_EQ(conns.size(), 1u);
  expect_strings_precede_use(conns[0]);
  std::map<uint32_t, std::vector<uint64_t>> by_track;
  for (auto& s : only<wire::Span>(conns[0])) by_track[s.track_id].push_back(s.request_id);
  ASSERT_EQ(by_track.size(), static_cast<size_t>(kThreads));
  for (auto& [track, seq] : by_track) {
    ASSERT_EQ(seq.size(), kPerThread) << "track " << track;
    for (uint64_t i = 0; i < kPerThread; ++i) ASSERT_EQ(seq[i], i) << "track " << track;
  }
  EXPECT_EQ(only<wire::ExpertLoad>(conns[0]).size(), kThreads * kPerThread / 100);
  EXPECT_EQ(health.records_sent, kThreads * (kPerThread + kPerThread / 100));
  EXPECT_EQ(health.records_dropped, 0u);
}

TEST(AgentRobustness, CollectorDownThenUpDropsAreExact) {
  const uint16_t port = free_port();
  constexpr uint64_t kRecords = 200000;
  Config cfg = fast_config("tcp://127.0.0.1:" + std::to_string(port));
  cfg.thread_buffer_bytes = 64u << 10;
  cfg.max_pending_bytes = 256u << 10;
  const uint32_t name = intern("down.counter");
  std::unique_ptr<TestCollector> collector;
  {
    Agent agent(cfg);
    // Nobody listens: every call must still return at once.
    for (uint64_t i = 0; i < kRecords; ++i) {
      agent.counter(name, 1.0);
      if (i % 20000 == 0) std::this_thread::sleep_for(2ms);  // let the shipper fill its queue
    }
    const Stats down = agent.stats();
    EXPECT_FALSE(down.connected);
    EXPECT_GT(down.records_dropped, 0u);
    EXPECT_LE(down.pending_high_water_bytes, cfg.max_pending_bytes + (256u << 10));

    collector = std::make_unique<TestCollector>(TestCollector::Mode::kRead, port);
    ASSERT_TRUE(agent.flush(20s));
    EXPECT_TRUE(agent.stats().connected);
  }
  const auto health = final_health(*collector, 0);
  const auto recs = collector->records();
  const uint64_t received = count_data(recs);
  EXPECT_GT(received, 0u);
  EXPECT_GT(health.records_dropped, 0u);
  EXPECT_EQ(received + health.records_dropped, kRecords);
  EXPECT_EQ(health.dropped_by_kind[static_cast<size_t>(wire::RecordKind::kCounter)],
            health.records_dropped);
  EXPECT_EQ(health.records_sent, received);
  // The first report after the connection came back already carried drops.
  const auto reports = only<wire::AgentHealth>(recs);
  ASSERT_GE(reports.size(), 2u);
  EXPECT_GT(reports.front().records_dropped, 0u);
}

TEST(AgentRobustness, CollectorRestartReconnectsAndResendsNames) {
  auto first = std::make_unique<TestCollector>();
  const uint16_t port = first->port();
  Config cfg = fast_config(first->address());
  cfg.reconnect_max_backoff = 200ms;
  const uint32_t before = intern("restart.before");
  const uint32_t after = intern("restart.after");
  Agent agent(cfg);
  agent.counter(before, 1);
  ASSERT_TRUE(agent.flush(20s));
  ASSERT_TRUE(first->wait_for([](auto& r) { return !only<wire::CounterSample>(r).empty(); }, 20s));
  first.reset();  // the collector goes away
  const auto t0 = Clock::now();
  while (agent.stats().connected && Clock::now() - t0 < 20s) std::this_thread::sleep_for(1ms);
  ASSERT_FALSE(agent.stats().connected);

  agent.counter(after, 2);  // waits in the agent's queue
  TestCollector second(TestCollector::Mode::kRead, port);
  const auto t1 = Clock::now();
  ASSERT_TRUE(second.wait_for([](auto& r) { return !only<wire::CounterSample>(r).empty(); }, 20s));
  std::printf("[figures] reconnected and delivered %.0f ms after the second collector listened\n",
              std::chrono::duration<double, std::milli>(Clock::now() - t1).count());
  EXPECT_EQ(agent.stats().reconnects, 1u);
  const auto recs = second.records();
  ASSERT_TRUE(std::holds_alternative<wire::Hello>(recs.front()));
  expect_strings_precede_use(recs);
  // The "before" frame may come again: the first collector went away before
  // its acknowledgement reached the agent, and this one never saw that stream.
  std::vector<wire::CounterSample> counters;
  for (const auto& c : only<wire::CounterSample>(recs))
    if (c.name_id != before) counters.push_back(c);
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].name_id, after);
  EXPECT_EQ(counters[0].value, 2.0);
  std::set<uint32_t> defined;
  for (auto& d : only<wire::StringDef>(recs)) defined.insert(d.id);
  EXPECT_TRUE(defined.count(before));  // every name again, not only new ones
}

TEST(AgentRobustness, StalledCollectorKeepsMemoryBoundedAndShutdownBounded) {
  TestCollector collector(TestCollector::Mode::kStall);
  Config cfg = fast_config(collector.address());
  cfg.max_pending_bytes = 1u << 20;
  cfg.shutdown_timeout = 300ms;
  const std::vector<uint32_t> routed(64, 3);
  Clock::time_point destroy_start;
  {
    Agent agent(cfg);
    for (int chunk = 0; chunk < 300; ++chunk) {
      for (int i = 0; i < 1000; ++i) agent.expert_load(i, 0, routed, 64, 0);
      std::this_thread::sleep_for(1ms);
    }
    const Stats s = agent.stats();
    EXPECT_TRUE(s.connected);
    EXPECT_GT(s.records_dropped, 0u);
    // The queue never grows past its budget plus the frame being sealed.
    EXPECT_LE(s.pending_high_water_bytes, cfg.max_pending_bytes + (256u << 10));
    EXPECT_LE(s.buffer_high_water_bytes, cfg.thread_buffer_bytes);
    // Frames still queued cannot be flushed to a peer that never reads. (If the
    // kernel's socket buffers swallowed everything, nothing is queued.)
    if (s.pending_bytes > 0) {
      EXPECT_FALSE(agent.flush(50ms));
    }
    destroy_start = Clock::now();
  }
  // Bounded: the stalled peer never reads, so only the agent's own shutdown
  // timeout can end the destructor (were it to wait for the peer, this test
  // would hang until ctest's timeout). The time is a figure, not an assertion.
  std::printf("[figures] shutdown against a stalled collector took %.0f ms (timeout %lld ms)\n",
              std::chrono::duration<double, std::milli>(Clock::now() - destroy_start).count(),
              static_cast<long long>(cfg.shutdown_timeout.count()));
}

TEST(AgentRobustness, ShutdownFlushesWithoutAnExplicitFlush) {
  TestCollector collector;
  constexpr int kRecords = 5000;
  {
    Agent agent(fast_config(collector.address()));
    const uint32_t name = intern("shutdown.counter");
    for (int i = 0; i < kRecords; ++i) agent.counter(name, i);
  }
  const auto health = final_health(collector, 0);
  EXPECT_EQ(only<wire::CounterSample>(collector.records()).size(), static_cast<size_t>(kRecords));
  EXPECT_EQ(health.records_sent, static_cast<uint64_t>(kRecords));
}

TEST(AgentRobustness, ShutdownIsBoundedWhenTheCollectorIsDown) {
  Config cfg = fast_config("tcp://127.0.0.1:" + std::to_string(free_port()));
  cfg.shutdown_timeout = 200ms;
  Clock::time_point start;
  {
    Agent agent(cfg);
    for (int i = 0; i < 1000; ++i) agent.counter(intern("down.shutdown"), 1);
    start = Clock::now();
  }
  // Nobody listens, so nothing but the agent's own timeout ends its shutdown.
  std::printf("[figures] shutdown with the collector down took %.0f ms (timeout %lld ms)\n",
              std::chrono::duration<double, std::milli>(Clock::now() - start).count(),
              static_cast<long long>(cfg.shutdown_timeout.count()));
}

TEST(AgentRobustness, ThreadsBeyondMaxThreadsAreCountedThenSlotsAreReused) {
  TestCollector collector;
  Config cfg = fast_config(collector.address());
  cfg.max_threads = 2;
  Agent agent(cfg);
  const uint32_t name = intern("overflow.counter");
  std::barrier sync(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      sync.arrive_and_wait();
      for (int i = 0; i < 100; ++i) agent.counter(name, 1);
      sync.arrive_and_wait();  // all four are alive while they record
    });
  for (auto& t : threads) t.join();
  ASSERT_TRUE(agent.flush(20s));
  Stats s = agent.stats();
  EXPECT_EQ(s.records_recorded, 200u);
  EXPECT_EQ(s.dropped_by_kind[static_cast<size_t>(wire::RecordKind::kCounter)], 200u);
  // The recording threads have exited and their rings are drained: a new
  // thread gets a slot again.
  std::thread([&] {
    for (int i = 0; i < 10; ++i) agent.counter(name, 1);
  }).join();
  ASSERT_TRUE(agent.flush(20s));
  s = agent.stats();
  EXPECT_EQ(s.records_recorded, 210u);
  EXPECT_EQ(s.records_dropped, 200u);
}

TEST(AgentRobustness, SamplingKeepsOrDropsWholeTrees) {
  TestCollector collector;
  Config cfg = fast_config(collector.address());
  cfg.span_sample_rate = 0.5;
  constexpr int kRoots = 4000;
  const uint32_t root = intern("sample.root");
  const uint32_t child = intern("sample.child");
  {
    Agent agent(cfg);
    for (int i = 0; i < kRoots; ++i) {
      ScopedRange r(agent, root, static_cast<uint64_t>(i));
      ScopedRange c(agent, child, static_cast<uint64_t>(i));
    }
    ASSERT_TRUE(agent.flush(20s));
  }
  final_health(collector, 0);
  std::map<uint64_t, int> roots, children;
  for (auto& s : only<wire::Span>(collector.records())) {
    if (s.name_id == root) {
      EXPECT_EQ(s.depth, 0);
      roots[s.request_id]++;
    } else if (s.name_id == child) {
      EXPECT_EQ(s.depth, 1);
      children[s.request_id]++;
    }
  }
  // Half, give or take: binomial(4000, 0.5) lies within +-300 with overwhelming probability.
  EXPECT_GT(roots.size(), kRoots / 2 - 300u);
  EXPECT_LT(roots.size(), kRoots / 2 + 300u);
  EXPECT_EQ(roots, children);
}

TEST(AgentRobustness, SetModelResendsHello) {
  TestCollector collector;
  Agent agent(fast_config(collector.address()));
  agent.counter(intern("model.counter"), 1);
  ASSERT_TRUE(agent.flush(20s));
  wire::ModelDescription m;
  m.name = "changed";
  m.layers = {{wire::LayerKind::kSsm, wire::FfnKind::kMoe, 16}};
  agent.set_model(m);
  ASSERT_TRUE(collector.wait_for(
      [](auto& r) {
        auto h = only<wire::Hello>(r);
        return h.size() == 2 && h[1].model.name == "changed";
      },
      20s));
  EXPECT_EQ(only<wire::Hello>(collector.records())[1].model, m);
}

}  // namespace
}  // namespace inferscope::agent
