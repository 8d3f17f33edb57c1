// The collector dies (kill -9) or is restarted (SIGTERM) while an
// agent-instrumented producer keeps recording: the agent reconnects to the new
// collector within a few seconds, the host's calls never wait, and every record
// is accounted for: delivered to a collector, or counted as dropped by the agent.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "harness.hpp"
#include "host_blocking.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::reliability {
namespace {

// A host thread recording counters at a steady pace (about 100k records/s)
// and timing every call it makes into the agent.
class Producer {
 public:
  Producer(agent::Agent& agent, uint32_t name) : agent_(agent), name_(name) {
    thread_ = std::thread([this] { run(); });
  }
  ~Producer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t produced() const { return produced_.load(); }
  int64_t max_call_ns() const { return max_call_ns_; }
  int64_t calls_over_1ms() const { return over_1ms_; }
  // Read after stop(): voluntary context switches inside the host's calls.
  uint64_t voluntary_switches() const { return meter_.voluntary(); }
  uint64_t blocked_batches() const { return meter_.blocked_batches(); }
  uint64_t fault_wait_batches() const { return meter_.fault_wait_batches(); }

 private:
  void run() {
    agent_.counter(name_, 0.0);  // the thread's ring exists before counting
    produced_ = 1;
    while (!stop_) {
      meter_.begin();
      for (int i = 0; i < 100; ++i) {
        const auto t0 = Clock::now();
        agent_.counter(name_, 1.0);
        const int64_t ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
        max_call_ns_ = std::max(max_call_ns_, ns);
        over_1ms_ += ns > 1'000'000;
      }
      meter_.end();
      produced_ += 100;
      std::this_thread::sleep_for(1ms);  // outside the measured batch
    }
  }
  agent::Agent& agent_;
  uint32_t name_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> produced_{0};
  int64_t max_call_ns_ = 0;
  int64_t over_1ms_ = 0;
  test_support::BlockingMeter meter_;
  std::thread thread_;
};

agent::Config agent_config(const std::string& address) {
  agent::Config c;
  c.collector = address;
  c.service = "reliability";
  c.model.name = "reliab";
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 200ms;
  c.max_pending_bytes = 8u << 20;
  c.nvtx = false;
  return c;
}

struct RestartFigures {
  uint64_t produced = 0, sent = 0, delivered = 0, dropped = 0, unconfirmed = 0, undelivered = 0;
  uint64_t received = 0;         // counter records in the trace directory both collectors wrote
  uint64_t received_second = 0;  // counter records the second collector counted
  uint64_t duplicates_skipped =
      0;  // re-sent frames the second collector had already (from the store)
  double reconnect_ms = 0;
  int64_t max_call_ns = 0;
  int64_t calls_over_1ms = 0;
  uint64_t voluntary_switches = 0;
  uint64_t blocked_batches = 0, fault_wait_batches = 0;
};

// Runs producer -> collector A, stops A with `sig`, starts B on the same port
// and the same --trace-dir (a restart), finishes against B; returns the
// figures. Assertions common to both signals inside.
RestartFigures restart_run(int sig, const std::string& counter_name) {
  RestartFigures f;
  TempDir dir;
  const std::vector<std::string> args{"--trace-dir", dir.path(), "--trace-block-age", "200ms"};
  auto a = std::make_unique<CollectorProcess>(0, args);
  EXPECT_TRUE(a->ok()) << a->error();
  if (!a->ok()) return f;
  const uint16_t port = a->ports().ingest;
  const uint32_t name = agent::intern(counter_name);

  auto agent = std::make_unique<agent::Agent>(agent_config(a->ingest_address()));
  Producer producer(*agent, name);
  EXPECT_TRUE(eventually([&] { return agent->stats().records_delivered > 0; }, 30s))
      << "nothing was acknowledged by the first collector";
  std::this_thread::sleep_for(1s);  // traffic in every state: stored, in the open block, in flight

  a->child().signal(sig);
  EXPECT_TRUE(a->child().wait(30s).has_value());
  EXPECT_TRUE(eventually([&] { return !agent->stats().connected; }, 30s));
  std::this_thread::sleep_for(300ms);  // the collector stays away for a while; the agent queues

  CollectorProcess b(port, args);
  EXPECT_TRUE(b.ok()) << b.error();
  if (!b.ok()) return f;
  const auto up = Clock::now();
  EXPECT_TRUE(
      eventually([&] { return agent->stats().connected && agent->stats().reconnects >= 1; }, 30s));
  f.reconnect_ms = std::chrono::duration<double, std::milli>(Clock::now() - up).count();
  std::this_thread::sleep_for(500ms);

  producer.stop();
  f.produced = producer.produced();
  f.max_call_ns = producer.max_call_ns();
  EXPECT_TRUE(agent->flush(60s));
  const agent::Stats st = agent->shutdown();  // the final health report goes to B
  agent.reset();
  f.sent = st.records_sent;
  f.delivered = st.records_delivered;
  f.dropped = st.records_dropped;
  f.unconfirmed = st.records_unconfirmed;
  f.undelivered = st.records_undelivered;

  // The agent's own books close: every call shipped or counted as a drop, and
  // everything shipped was acknowledged in the end (re-sent where needed).
  EXPECT_EQ(f.produced, f.sent + f.dropped);
  EXPECT_EQ(f.produced, f.delivered + f.dropped + f.unconfirmed + f.undelivered);
  EXPECT_EQ(f.unconfirmed, 0u);
  EXPECT_EQ(f.undelivered, 0u);
  EXPECT_EQ(st.reconnects, 1u);
  // No host call waited on the network: no batch of calls gave up the CPU outside
  // a page fault (host_blocking.hpp; preemption on a loaded machine is
  // involuntary; latency is printed only).
  f.voluntary_switches = producer.voluntary_switches();
  f.blocked_batches = producer.blocked_batches();
  f.fault_wait_batches = producer.fault_wait_batches();
  EXPECT_EQ(f.blocked_batches, 0u) << "host calls gave up the CPU to wait";
  f.calls_over_1ms = producer.calls_over_1ms();

  // The new collector exports the agent's books (cumulative, from its health reports).
  Series m;
  EXPECT_TRUE(eventually(
      [&] {
        m = scrape(b.ports().metrics);
        return sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab\""}) ==
               static_cast<double>(f.sent);
      },
      30s))
      << "collector shows agent_records_sent_total "
      << sum_series(m, "inferscope_agent_records_sent_total") << ", agent says " << f.sent;
  EXPECT_EQ(sum_series(m, "inferscope_agent_records_dropped_total", {"model=\"reliab\""}),
            static_cast<double>(f.dropped));
  EXPECT_EQ(sum_series(m, "inferscope_agent_reconnects_total", {"model=\"reliab\""}), 1.0);
  f.received_second = static_cast<uint64_t>(
      sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}));
  f.duplicates_skipped =
      static_cast<uint64_t>(sum_series(m, "inferscope_collector_duplicate_frames_total"));

  b.child().signal(SIGTERM);
  EXPECT_EQ(b.child().wait(30s), std::optional<int>(0));
  // What both collectors stored, read back: every frame whole, and every
  // record once (A's segments, possibly cut by the kill, then B's).
  TraceCount t = read_trace_dir(dir.path());
  EXPECT_GT(t.frames, 0u);
  EXPECT_EQ(t.corrupt_frames, 0u);
  f.received = t.counter_records_by_name[counter_name];
  std::printf(
      "[figures] signal %d: produced %llu = stored %llu + dropped %llu (sent %llu, delivered %llu, "
      "unconfirmed %llu, undelivered %llu); second collector applied %llu, skipped %llu re-sent "
      "frames "
      "it found stored | reconnect %.0f ms after the new collector listened, max host call %.1f us "
      "(%lld calls over 1 ms, %llu voluntary switches inside calls: %llu batches blocked, %llu "
      "waited "
      "in a page fault)\n",
      sig, (unsigned long long)f.produced, (unsigned long long)f.received,
      (unsigned long long)f.dropped, (unsigned long long)f.sent, (unsigned long long)f.delivered,
      (unsigned long long)f.unconfirmed, (unsigned long long)f.undelivered,
      (unsigned long long)f.received_second, (unsigned long long)f.duplicates_skipped,
      f.reconnect_ms, static_cast<double>(f.max_call_ns) / 1e3, (long long)f.calls_over_1ms,
      (unsigned long long)f.voluntary_switches, (unsigned long long)f.blocked_batches,
      (unsigned long long)f.fault_wait_batches);
  return f;
}

// SIGTERM drains: the collector half-closes each connection and reads until
// the agent, having finished its frame in flight, closes its side.
TEST(CollectorRestart, GracefulRestartLosesNothingUncounted) {
  const RestartFigures f = restart_run(SIGTERM, "reliab.restart.graceful");
  EXPECT_GT(f.received_second, 0u);
  // Exact: what was offered is what the store holds plus what the agent dropped.
  EXPECT_EQ(f.received + f.dropped, f.produced);
  EXPECT_EQ(f.received, f.sent);
}

// kill -9: the collector dies with frames in its socket, in its open block and
// unacknowledged. Acknowledgements cover only what the store settled, so the
// agent still holds everything else and re-sends it; the new collector skips
// the frames the dead one had stored (their numbers are in the newest
// segments). The books close exactly: nothing lost, nothing counted twice.
TEST(CollectorRestart, KilledCollectorIsReplacedAndNothingIsLostOrCountedTwice) {
  const RestartFigures f = restart_run(SIGKILL, "reliab.restart.kill9");
  EXPECT_GT(f.received_second, 0u);
  EXPECT_EQ(f.received + f.dropped, f.produced)
      << "produced " << f.produced << ", stored " << f.received << ", dropped " << f.dropped;
  EXPECT_EQ(f.received, f.sent);
}

}  // namespace
}  // namespace inferscope::reliability
