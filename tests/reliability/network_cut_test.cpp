// The network path between an agent and a collector that stays up is cut
// (both TCP connections reset, as a dead link or a restarted proxy would): the
// agent reconnects to the same collector, and the collector's view of the
// agent's books stays equal to the agent's own (no double counting of the
// cumulative health reports across the two connections).
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstdio>

#include "harness.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::reliability {
namespace {

// The collector keeps the last cumulative AgentHealth per agent process (not per
// connection), so a reconnect to the same collector must not add the agent's
// whole history to inferscope_agent_records_sent_total again.
TEST(NetworkCut, AgentReconnectsToTheSameCollectorWithoutDoubleCounting) {
  CollectorProcess c(0, {});
  ASSERT_TRUE(c.ok()) << c.error();
  Proxy proxy(c.ports().ingest);
  ASSERT_NE(proxy.port(), 0);
  agent::Config cfg;
  cfg.collector = "tcp://127.0.0.1:" + std::to_string(proxy.port());
  cfg.service = "reliability";
  cfg.model.name = "reliab-cut";
  cfg.flush_interval = 5ms;
  cfg.reconnect_max_backoff = 100ms;
  cfg.nvtx = false;
  const uint32_t name = agent::intern("reliab.cut.counter");
  agent::Agent a(cfg);
  for (int i = 0; i < 20000; ++i) a.counter(name, 1);
  ASSERT_TRUE(a.flush(10s));
  ASSERT_TRUE(eventually(
      [&] {
        return sum_series(scrape(c.ports().metrics), "inferscope_agent_records_sent_total",
                          {"model=\"reliab-cut\""}) == 20000;
      },
      30s));

  proxy.cut();
  ASSERT_TRUE(eventually([&] { return a.stats().reconnects == 1 && a.stats().connected; }, 30s));
  for (int i = 0; i < 1000; ++i) a.counter(name, 1);
  ASSERT_TRUE(a.flush(10s));
  const agent::Stats st = a.stats();
  EXPECT_EQ(st.records_sent, 21000u);
  // The agent counts a connection once the kernel completed it; the proxy's
  // thread may call accept() later (a slow machine, ASan), so wait for it.
  EXPECT_TRUE(eventually([&] { return proxy.connections_accepted() == 2u; }, 30s))
      << proxy.connections_accepted();
  Series m;
  // Wait for a health report from after the reconnect to arrive.
  EXPECT_TRUE(eventually(
      [&] {
        m = scrape(c.ports().metrics);
        return sum_series(m, "inferscope_agent_reconnects_total", {"model=\"reliab-cut\""}) >= 1;
      },
      30s));
  // Health reports are periodic: wait for one that carries the agent's final books.
  EXPECT_TRUE(eventually(
      [&] {
        m = scrape(c.ports().metrics);
        return sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab-cut\""}) ==
               static_cast<double>(st.records_sent);
      },
      30s));
  std::printf(
      "[figures] network cut: agent sent %llu, collector shows agent_records_sent_total %.0f, "
      "reconnects %.0f, received %.0f counter records\n",
      (unsigned long long)st.records_sent,
      sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab-cut\""}),
      sum_series(m, "inferscope_agent_reconnects_total", {"model=\"reliab-cut\""}),
      sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}));
  EXPECT_EQ(sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab-cut\""}),
            static_cast<double>(st.records_sent));
  EXPECT_EQ(sum_series(m, "inferscope_agent_reconnects_total", {"model=\"reliab-cut\""}), 1.0);
  // Records in flight at the cut are written again on the new connection and
  // the collector skips what it had already applied: exactly once.
  EXPECT_EQ(sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}), 21000.0);
  EXPECT_TRUE(eventually([&] { return a.stats().records_delivered == 21000u; }, 30s))
      << "delivered " << a.stats().records_delivered;
  EXPECT_EQ(a.stats().records_unconfirmed, 0u);
}

}  // namespace
}  // namespace inferscope::reliability
