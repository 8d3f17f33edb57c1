// Expert parallelism through the whole collector over real loopback sockets:
// two fake EP ranks (real wire frames over TCP), the real prometheus-cpp
// exposer fetched over HTTP, and promtool on what it serves.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "running_collector.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kW = 200'000'000;

wire::ExpertParallelStep ep_step(uint64_t step, uint32_t layer, int64_t ts, int64_t compute_ns,
                                 uint32_t rows) {
  wire::ExpertParallelStep s;
  s.step = step;
  s.layer = layer;
  s.timestamp_ns = ts;
  s.dispatch_ns = 40'000;
  s.compute_ns = compute_ns;
  s.combine_ns = 60'000;
  s.rows_sent = rows / 2;
  s.rows_computed = rows;
  return s;
}

// Two ranks of one model (world size 2), 2 MoE layers of 4 experts, experts
// 0-1 on rank 0 and 2-3 on rank 1. Step w is sent in window w.
struct TwoRanks {
  RunningCollector& c;
  FakeAgent a, b;
  size_t sent = 0;
  explicit TwoRanks(RunningCollector& collector) : c(collector), a(c.ingest), b(c.ingest) {
    for (uint32_t rank = 0; rank < 2; ++rank) {
      auto h = make_hello("ep2", rank, 2, 4, {0, 0, 1, 1});
      h.world_size = 2;
      (rank == 0 ? a : b).send({h});
    }
  }
  // Expert compute per (rank, layer): layer 0 rank 1 is slow (300 us vs 100 us),
  // layer 1 rank 0 is slow (500 us vs 200 us). Skewed windows send layer 0's
  // rows (and expert 2's tokens) to rank 1.
  void window(int w, bool skewed) {
    const int64_t compute[2][2] = {{100'000, 500'000}, {300'000, 200'000}};  // [rank][layer]
    for (uint32_t rank = 0; rank < 2; ++rank) {
      const int64_t ts = w * kW + 1000 + rank;
      const uint32_t rows0 = skewed ? (rank == 1 ? 250 : 50) : 200;
      (rank == 0 ? a : b)
          .send({
              make_load(0, ts,
                        skewed ? std::vector<uint32_t>{10, 10, 60, 20}
                               : std::vector<uint32_t>{25, 25, 25, 25}),
              make_load(1, ts, {25, 25, 25, 25}),
              ep_step(static_cast<uint64_t>(w), 0, ts, compute[rank][0], rows0),
              ep_step(static_cast<uint64_t>(w), 1, ts, compute[rank][1], 200),
          });
    }
    sent += 4;
    // Both ranks' records of this window are in before the next window opens.
    ASSERT_TRUE(eventually([&] {
      return find_series(c.scrape(), "inferscope_collector_records_total",
                         {"kind=\"expert_parallel\""}) == static_cast<double>(sent);
    }));
  }
};

TEST(EpNet, IdleAndStragglersFromTwoRanksAreExact) {
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  RunningCollector c(o);
  TwoRanks ranks(c);
  for (int w = 0; w < 10; ++w) ranks.window(w, false);
  // A pair rank 1 never completes stays pending: not joined, not counted idle.
  ranks.a.send({ep_step(10, 0, 10 * kW + 5, 100'000, 200)});
  ASSERT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_collector_records_total",
                       {"kind=\"expert_parallel\""}) == 41.0;
  }));
  auto m = c.scrape();
  auto value = [&](const std::string& name, std::vector<std::string> labels) {
    labels.push_back("model=\"ep2\"");
    auto v = find_series(m, name, labels);
    EXPECT_TRUE(v.has_value()) << name;
    return v.value_or(-1.0);
  };
  // 10 steps: layer 0 rank 0 waits 200 us each, layer 1 rank 1 waits 300 us each.
  EXPECT_NEAR(value("inferscope_ep_idle_seconds_total", {"rank=\"0\"", "layer=\"0\""}), 10 * 200e-6,
              1e-12);
  EXPECT_NEAR(value("inferscope_ep_idle_seconds_total", {"rank=\"1\"", "layer=\"1\""}), 10 * 300e-6,
              1e-12);
  EXPECT_EQ(value("inferscope_ep_idle_seconds_total", {"rank=\"1\"", "layer=\"0\""}), 0.0);
  EXPECT_EQ(value("inferscope_ep_idle_seconds_total", {"rank=\"0\"", "layer=\"1\""}), 0.0);
  EXPECT_EQ(value("inferscope_ep_straggler_steps_total", {"rank=\"0\""}), 10.0);
  EXPECT_EQ(value("inferscope_ep_straggler_steps_total", {"rank=\"1\""}), 10.0);
  EXPECT_EQ(value("inferscope_ep_joined_steps_total", {}), 20.0);
  // Rank 0 sent 11 records for layer 0: its counters include the unjoined one.
  EXPECT_NEAR(value("inferscope_ep_expert_compute_seconds_total", {"rank=\"0\"", "layer=\"0\""}),
              11 * 100e-6, 1e-12);
  EXPECT_NEAR(value("inferscope_ep_dispatch_seconds_total", {"rank=\"1\"", "layer=\"1\""}),
              10 * 40e-6, 1e-12);
  EXPECT_NEAR(value("inferscope_ep_combine_seconds_total", {"rank=\"1\"", "layer=\"1\""}),
              10 * 60e-6, 1e-12);
  EXPECT_EQ(value("inferscope_ep_rows_computed_total", {"rank=\"0\"", "layer=\"0\""}), 11 * 200.0);
  EXPECT_EQ(value("inferscope_ep_rows_sent_total", {"rank=\"1\"", "layer=\"0\""}), 10 * 100.0);
  EXPECT_EQ(value("inferscope_ep_layer_steps_total", {"rank=\"0\"", "layer=\"0\""}), 11.0);
  EXPECT_FALSE(
      find_series(m, "inferscope_ep_unjoined_steps_total", {"reason=\"incomplete\""}).has_value());
}

TEST(EpNet, SkewRaisesAndClearsTheHotRankEpisode) {
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  RunningCollector c(o);
  TwoRanks ranks(c);
  for (int w = 0; w < 4; ++w) ranks.window(w, true);  // windows 0-2 closed hot: opens
  auto m = c.scrape();
  EXPECT_EQ(find_series(m, "inferscope_ep_rank_hot", {"model=\"ep2\"", "rank=\"1\""}), 1.0);
  EXPECT_EQ(find_series(m, "inferscope_ep_rank_hot", {"model=\"ep2\"", "rank=\"0\""}), 0.0);
  EXPECT_NEAR(*find_series(m, "inferscope_ep_rank_utilization_ratio", {"rank=\"1\""}),
              450.0 / 350.0, 1e-9);
  for (int w = 4; w < 6; ++w) ranks.window(w, false);  // window 4 balanced: clears
  m = c.scrape();
  EXPECT_EQ(find_series(m, "inferscope_ep_rank_hot", {"model=\"ep2\"", "rank=\"1\""}), 0.0);
  EXPECT_EQ(
      find_series(m, "inferscope_ep_hot_rank_episodes_total", {"model=\"ep2\"", "rank=\"1\""}),
      1.0);
  EXPECT_FALSE(
      find_series(m, "inferscope_ep_hot_rank_episodes_total", {"model=\"ep2\"", "rank=\"0\""})
          .value_or(0) > 0);

  c.stop();  // now the pipeline may be read from here
  std::vector<wire::AlertEpisode> hot;
  for (const auto& a : c.collector->pipeline().aggregator().recent_alerts())
    if (a.kind == wire::AlertKind::kHotRank) hot.push_back(a);
  ASSERT_EQ(hot.size(), 2u);  // opened, closed
  for (const auto& a : hot) {
    EXPECT_EQ(a.model, "ep2");
    EXPECT_EQ(a.rank, 1u);
    EXPECT_EQ(a.layer, 0u);   // the hot layer
    EXPECT_EQ(a.expert, 2u);  // the rank's largest expert in it
  }
  EXPECT_EQ(hot[0].end_ns, 0);
  EXPECT_EQ(hot[1].end_ns, 4 * kW);
}

TEST(EpNet, MetricsWithEpSeriesPassPromtool) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "promtool not installed";
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  RunningCollector c(o);
  TwoRanks ranks(c);
  for (int w = 0; w < 5; ++w) ranks.window(w, w < 4);
  const std::string text = http_get(c.metrics);
  EXPECT_NE(text.find("inferscope_moe_ep_eplb_balancedness_ratio{"), std::string::npos);
  EXPECT_NE(text.find("inferscope_ep_idle_seconds_total{"), std::string::npos);
  const fs::path file =
      fs::temp_directory_path() / ("inferscope-ep-metrics-" + std::to_string(::getpid()) + ".txt");
  std::ofstream(file) << text;
  const std::string cmd =
      "promtool check metrics < " + file.string() + " > " + file.string() + ".out 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream out(file.string() + ".out");
  std::string report((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << report;
  fs::remove(file);
  fs::remove(file.string() + ".out");
}

}  // namespace
