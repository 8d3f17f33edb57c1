// 64 agents flood one collector: every connection is served, the collector's
// memory stays under a bound, ingest is fair between connections, and each
// agent's books close exactly (received + dropped = recorded).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>

#include "harness.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::reliability {
namespace {

constexpr int kAgents = 64;
constexpr int kDrivers = 4;  // host threads; each drives kAgents / kDrivers agents
constexpr uint16_t kExperts = 16;
// Under AddressSanitizer the collector (built the same way) keeps freed memory
// in its quarantine (256 MiB by default) before reuse, so its RSS bound must
// include that; the ingest bound itself is the same.
#if defined(__SANITIZE_ADDRESS__)
constexpr uint64_t kAllocatorSlackKiB = 256 * 1024;
#else
constexpr uint64_t kAllocatorSlackKiB = 0;
#endif
constexpr uint32_t kTokensPerStep = 8;  // routed assignments per record = tokens * top_k = 16

agent::Config agent_config(const std::string& address, uint32_t rank) {
  agent::Config c;
  c.collector = address;
  c.service = "reliability";
  c.instance = "flood-" + std::to_string(rank);
  c.rank = rank;
  c.world_size = kAgents;
  c.model.name = "reliab-flood";
  c.model.top_k = 2;
  c.model.layers.push_back({wire::LayerKind::kAttention, wire::FfnKind::kMoe, kExperts});
  c.flush_interval = 10ms;
  c.reconnect_max_backoff = 200ms;
  c.thread_buffer_bytes = 128u << 10;
  c.max_pending_bytes = 256u << 10;
  c.nvtx = false;
  // 64 agents drain their last frames at once on two cores (slower still under
  // ASan): a short shutdown bound would cut a frame and lose its health report.
  c.shutdown_timeout = std::chrono::seconds(15);
  return c;
}

TEST(Flood, SixtyFourAgentsAreAllServedFairlyWithinAMemoryBound) {
  CollectorProcess c(0, {"--window", "1s"});
  ASSERT_TRUE(c.ok()) << c.error();
  const pid_t collector_pid = c.child().pid();
  const uint64_t rss_idle = rss_kib(collector_pid);

  std::vector<std::unique_ptr<agent::Agent>> agents;
  for (int i = 0; i < kAgents; ++i)
    agents.push_back(
        std::make_unique<agent::Agent>(agent_config(c.ingest_address(), static_cast<uint32_t>(i))));
  ASSERT_TRUE(eventually(
      [&] {
        return sum_series(scrape(c.ports().metrics), "inferscope_collector_connections") == kAgents;
      },
      30s))
      << "not every agent got a connection";

  // Each driver thread cycles over its agents, recording as fast as it can.
  std::atomic<bool> stop{false};
  std::vector<uint64_t> produced(kAgents, 0);
  std::vector<std::thread> drivers;
  for (int d = 0; d < kDrivers; ++d)
    drivers.emplace_back([&, d] {
      std::vector<uint32_t> routed(kExperts, 1);
      uint64_t step = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = d; i < kAgents; i += kDrivers) {
          for (int k = 0; k < 16; ++k) agents[i]->expert_load(step, 0, routed, kTokensPerStep, 0);
          produced[i] += 16;
        }
        ++step;
      }
    });
  uint64_t rss_peak = rss_idle;
  const auto until = Clock::now() + 4s;
  while (Clock::now() < until) {
    rss_peak = std::max(rss_peak, rss_kib(collector_pid));
    std::this_thread::sleep_for(50ms);
  }
  stop = true;
  for (auto& t : drivers) t.join();

  std::vector<agent::Stats> stats(kAgents);
  for (int i = 0; i < kAgents; ++i) {
    EXPECT_TRUE(agents[i]->flush(10s)) << "agent " << i;
    stats[i] = agents[i]->stats();
  }
  agents.clear();  // final health reports
  rss_peak = std::max(rss_peak, peak_rss_kib(collector_pid));

  Series m;
  uint64_t total_sent = 0;
  for (auto& s : stats) total_sent += s.records_sent;
  ASSERT_TRUE(eventually(
      [&] {
        m = scrape(c.ports().metrics);
        return sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab-flood\""}) ==
               static_cast<double>(total_sent);
      },
      30s))
      << "final health reports did not arrive";

  // Per connection: what the collector received, from the routed-token counter
  // of that agent's rank (16 assignments per record).
  std::vector<double> received(kAgents);
  double sum = 0, lo = 1e300, hi = 0;
  uint64_t total_dropped = 0;
  for (int i = 0; i < kAgents; ++i) {
    const std::string rank = "rank=\"" + std::to_string(i) + "\"";
    received[i] =
        sum_series(m, "inferscope_moe_routed_tokens_total", {"model=\"reliab-flood\"", rank}) /
        (kTokensPerStep * 2);
    const double dropped =
        sum_series(m, "inferscope_agent_records_dropped_total", {"model=\"reliab-flood\"", rank});
    // Exact per connection: the connection never broke, so nothing was in flight at a failure.
    EXPECT_EQ(received[i] + dropped, static_cast<double>(produced[i])) << "agent " << i;
    EXPECT_EQ(received[i], static_cast<double>(stats[i].records_sent)) << "agent " << i;
    EXPECT_EQ(stats[i].reconnects, 0u) << "agent " << i;
    EXPECT_GT(received[i], 0) << "agent " << i << " was starved";
    total_dropped += stats[i].records_dropped;
    sum += received[i];
    lo = std::min(lo, received[i]);
    hi = std::max(hi, received[i]);
  }
  const double mean = sum / kAgents;
  std::printf(
      "[figures] %d agents: %.0f records received (%.0f/s), %llu dropped by agents; per connection "
      "min %.0f mean %.0f max %.0f (min/mean %.2f, max/mean %.2f); collector RSS idle %llu KiB, "
      "peak %llu KiB\n",
      kAgents, sum, sum / 4.0, (unsigned long long)total_dropped, lo, mean, hi, lo / mean,
      hi / mean, (unsigned long long)rss_idle, (unsigned long long)rss_peak);
  // Fair share: no connection gets less than a third or more than three times the mean.
  EXPECT_GT(lo, mean / 3);
  EXPECT_LT(hi, mean * 3);
  // The collector's memory is bounded by its limits, not by the offered load:
  // 64 connections x (64 KiB read buffer + one frame) plus the registry.
  EXPECT_LT(rss_peak, rss_idle + 128 * 1024 + kAllocatorSlackKiB);

  c.child().signal(SIGTERM);
  EXPECT_EQ(c.child().wait(10s), std::optional<int>(0));
}

}  // namespace
}  // namespace inferscope::reliability
