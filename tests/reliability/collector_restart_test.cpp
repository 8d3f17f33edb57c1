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
  uint64_t produced = 0, sent = 0, dropped = 0, unconfirmed = 0;
  uint64_t received_first = 0;     // counter records in the first collector's trace files
  uint64_t scraped_first = 0;      // its records_total{kind="counter"} scraped just before the stop
  uint64_t sent_after_scrape = 0;  // records the agent sent between that scrape and the stop
  uint64_t received_second = 0;    // counter records the second collector counted
  uint64_t produced_last_second = 0;  // recorded in the second before the fault
  double reconnect_ms = 0;
  int64_t max_call_ns = 0;
  int64_t calls_over_1ms = 0;
  uint64_t voluntary_switches = 0;
};

// Runs producer -> collector A, stops A with `sig`, starts B on the same port,
// finishes against B; returns the figures. Assertions common to both signals inside.
RestartFigures restart_run(int sig, const std::string& counter_name) {
  RestartFigures f;
  TempDir dir_a, dir_b;
  auto a =
      std::make_unique<CollectorProcess>(0, std::vector<std::string>{"--trace-dir", dir_a.path()});
  EXPECT_TRUE(a->ok()) << a->error();
  if (!a->ok()) return f;
  const uint16_t port = a->ports().ingest;
  const uint32_t name = agent::intern(counter_name);

  auto agent = std::make_unique<agent::Agent>(agent_config(a->ingest_address()));
  Producer producer(*agent, name);
  EXPECT_TRUE(eventually(
      [&] {
        return sum_series(scrape(a->ports().metrics), "inferscope_collector_records_total",
                          {"kind=\"counter\""}) > 0;
      },
      30s))
      << "no records reached the first collector";
  std::this_thread::sleep_for(1s);
  const uint64_t second_before = producer.produced();
  std::this_thread::sleep_for(1s);
  f.produced_last_second = producer.produced() - second_before;

  const uint64_t sent_before_scrape = agent->stats().records_sent;
  f.scraped_first = static_cast<uint64_t>(sum_series(
      scrape(a->ports().metrics), "inferscope_collector_records_total", {"kind=\"counter\""}));
  a->child().signal(sig);
  EXPECT_TRUE(a->child().wait(30s).has_value());
  // What the first collector can have processed after the scrape (an upper bound:
  // it can only process what the agent wrote before it died).
  f.sent_after_scrape = agent->stats().records_sent - sent_before_scrape;
  EXPECT_TRUE(eventually([&] { return !agent->stats().connected; }, 30s));
  std::this_thread::sleep_for(300ms);  // the collector stays away for a while; the agent queues

  CollectorProcess b(port, {"--trace-dir", dir_b.path()});
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
  const agent::Stats st = agent->stats();
  agent.reset();  // the final health report goes to B
  f.sent = st.records_sent;
  f.dropped = st.records_dropped;
  f.unconfirmed = st.records_unconfirmed;

  // The agent's own books close: every call either shipped or counted as a drop.
  EXPECT_EQ(f.produced, f.sent + f.dropped);
  EXPECT_EQ(st.reconnects, 1u);
  // No host call waited on the network: not one voluntary context switch inside
  // the calls (preemption on a loaded machine is involuntary; latency is printed only).
  f.voluntary_switches = producer.voluntary_switches();
  EXPECT_EQ(f.voluntary_switches, 0u) << "host calls gave up the CPU to wait";
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
  EXPECT_EQ(sum_series(m, "inferscope_agent_records_unconfirmed_total", {"model=\"reliab\""}),
            static_cast<double>(f.unconfirmed));
  f.received_second = static_cast<uint64_t>(
      sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}));

  b.child().signal(SIGTERM);
  EXPECT_EQ(b.child().wait(30s), std::optional<int>(0));
  TraceCount tb = read_trace_dir(dir_b.path());
  EXPECT_EQ(tb.counter_records_by_name[counter_name], f.received_second)
      << "the trace store holds every record the collector counted";
  EXPECT_EQ(tb.corrupt_frames, 0u);
  EXPECT_EQ(tb.truncated_tails, 0u);

  // A's segments after its death: every complete frame readable, nothing
  // damaged in the middle (a kill -9 may cut only the last frame of a file).
  TraceCount ta = read_trace_dir(dir_a.path());
  EXPECT_GT(ta.frames, 0u);
  EXPECT_EQ(ta.corrupt_frames, 0u);
  f.received_first = ta.counter_records_by_name[counter_name];
  std::printf(
      "[figures] signal %d: produced %llu sent %llu dropped %llu | first collector (trace) %llu, "
      "scraped before the stop %llu (+ at most %llu after), second collector %llu, unaccounted "
      "%lld, unconfirmed %llu | reconnect %.0f ms after the new collector listened, "
      "max host call %.1f us (%lld calls over 1 ms)\n",
      sig, (unsigned long long)f.produced, (unsigned long long)f.sent,
      (unsigned long long)f.dropped, (unsigned long long)f.received_first,
      (unsigned long long)f.scraped_first, (unsigned long long)f.sent_after_scrape,
      (unsigned long long)f.received_second,
      (long long)f.sent - (long long)(f.received_first + f.received_second),
      (unsigned long long)f.unconfirmed, f.reconnect_ms, static_cast<double>(f.max_call_ns) / 1e3,
      (long long)f.calls_over_1ms);
  return f;
}

// SIGTERM drains: the collector half-closes each connection and reads until
// the agent, having finished its frame in flight, closes its side. Nothing
// is in doubt, so the books close exactly across the restart.
TEST(CollectorRestart, GracefulRestartLosesNothingUncounted) {
  const RestartFigures f = restart_run(SIGTERM, "reliab.restart.graceful");
  EXPECT_GT(f.received_first, 0u);
  EXPECT_GT(f.received_second, 0u);
  // Exact: what the agent calls sent is what the two collectors received,
  // and nothing was left unconfirmed.
  EXPECT_EQ(f.received_first + f.received_second, f.sent);
  EXPECT_EQ(f.unconfirmed, 0u);
}

TEST(CollectorRestart, KilledCollectorIsReplacedAndTheAgentReconnects) {
  const RestartFigures f = restart_run(SIGKILL, "reliab.restart.kill9");
  EXPECT_GT(f.received_second, 0u);
  // A kill -9 cannot be exact: what sat in the dead collector's socket, and what
  // it processed after its last acknowledgement, is in doubt. The agent counts
  // that doubt as unconfirmed (records on the broken connection not yet
  // acknowledged) and never re-sends it, so the books are bounded both ways:
  // nothing is counted twice, and nothing is lost beyond the unconfirmed count.
  // (produced == sent + dropped is asserted in restart_run.)
  //
  // What the first collector processed is known only from below: its trace
  // files lose the store's open block on a kill -9, and its last scrape
  // predates the kill. The records the agent wrote between that scrape and the
  // kill are the test's own uncertainty (a few milliseconds of traffic).
  const uint64_t first_at_least = std::max(f.received_first, f.scraped_first);
  const uint64_t received = first_at_least + f.received_second;
  EXPECT_LE(received + f.dropped, f.produced) << "a record was counted twice";
  EXPECT_GE(received + f.dropped + f.unconfirmed + f.sent_after_scrape, f.produced)
      << "lost beyond the unconfirmed count: produced " << f.produced << ", received at least "
      << received << ", dropped " << f.dropped << ", unconfirmed " << f.unconfirmed
      << ", written after the last scrape of the first collector " << f.sent_after_scrape;
  // Acknowledgements every 100 ms keep the doubt well under a second of traffic.
  EXPECT_LT(f.unconfirmed, f.produced_last_second);
}

}  // namespace
}  // namespace inferscope::reliability
