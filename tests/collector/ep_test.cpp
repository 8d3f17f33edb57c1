// Expert parallelism in the collector without sockets: the hot-rank episode
// with the layers and experts it names (the planner and the join are tested
// with the analysis library, tests/analysis/).
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <algorithm>

#include "inferscope/collector/pipeline.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;

namespace {

// [SECTION] Hot ranks through the pipeline

constexpr int64_t kW = 200'000'000;

wire::ExpertParallelStep ep(uint64_t step, uint32_t layer, int64_t ts, int64_t compute_ns,
                            uint32_t rows) {
  wire::ExpertParallelStep s;
  s.step = step;
  s.layer = layer;
  s.timestamp_ns = ts;
  s.dispatch_ns = 10'000;
  s.compute_ns = compute_ns;
  s.combine_ns = 20'000;
  s.rows_sent = rows / 2;
  s.rows_computed = rows;
  return s;
}

struct EpFixture {
  CollectorOptions options;
  CollectorMetrics metrics;
  std::unique_ptr<Pipeline> pipeline;
  std::vector<wire::AlertEpisode> alerts;
  Session a{options.limits}, b{options.limits};

  explicit EpFixture(bool with_ep_records) : with_ep(with_ep_records) {
    options.aggregation.window_ns = kW;
    pipeline = std::make_unique<Pipeline>(options, metrics, nullptr);
    pipeline->aggregator().set_alert_sink(
        [this](const wire::AlertEpisode& x) { alerts.push_back(x); });
    for (uint32_t rank = 0; rank < 2; ++rank) {
      auto h = make_hello("ep", rank, 2, 4, {0, 0, 1, 1});
      h.world_size = 2;
      Rejection why;
      EXPECT_TRUE(pipeline->on_frame(rank == 0 ? a : b, frame_of({h}), why)) << why.message;
    }
  }
  // One window: layer 0 sends most rows (and, in expert loads, expert 2) to rank 1 when skewed.
  void window(int w, bool skewed) {
    for (uint32_t rank = 0; rank < 2; ++rank) {
      const int64_t ts = w * kW + 1000 + rank;
      std::vector<wire::Record> recs;
      recs.push_back(make_load(
          0, ts,
          skewed ? std::vector<uint32_t>{10, 10, 60, 20} : std::vector<uint32_t>{25, 25, 25, 25}));
      recs.push_back(make_load(1, ts, {25, 25, 25, 25}));
      if (with_ep) {
        recs.push_back(ep(w, 0, ts, 100'000, skewed ? (rank == 1 ? 250 : 50) : 200));
        recs.push_back(ep(w, 1, ts, 100'000, 200));
      }
      Rejection why;
      ASSERT_TRUE(pipeline->on_frame(rank == 0 ? a : b, frame_of(recs), why)) << why.message;
    }
  }
  std::vector<wire::AlertEpisode> hot_rank_alerts() const {
    std::vector<wire::AlertEpisode> out;
    for (const auto& x : alerts)
      if (x.kind == wire::AlertKind::kHotRank) out.push_back(x);
    return out;
  }
  std::map<std::string, double> scrape() {
    prometheus::TextSerializer ser;
    return parse_exposition(ser.Serialize(metrics.registry->Collect()));
  }
  bool with_ep;
};

TEST(EpHotRank, NamesTheRankItsLayersAndExpertsThenClears) {
  EpFixture f(/*with_ep_records=*/true);
  for (int w = 0; w < 4; ++w) f.window(w, true);  // windows 0-2 closed: M = 3 hot windows
  auto hot = f.pipeline->aggregator().hot_ranks("ep");
  ASSERT_EQ(hot.size(), 1u);
  EXPECT_EQ(hot[0].rank, 1u);
  // Rows: rank 1 computes 250 + 200 of 700, mean 350: 450 / 350.
  EXPECT_NEAR(hot[0].utilization, 450.0 / 350.0, 1e-6);
  ASSERT_EQ(hot[0].layers.size(), 1u);  // layer 1 is balanced
  EXPECT_EQ(hot[0].layers[0].layer, 0u);
  EXPECT_NEAR(hot[0].layers[0].utilization, 250.0 / 150.0, 1e-9);
  // Experts 2 and 3 live on rank 1; expert 2 has 120 of layer 0's 200 assignments.
  ASSERT_EQ(hot[0].experts.size(), 2u);
  EXPECT_EQ(hot[0].experts[0].expert, 2u);
  EXPECT_NEAR(hot[0].experts[0].share, 0.6, 1e-9);
  EXPECT_EQ(hot[0].experts[1].expert, 3u);
  auto opened = f.hot_rank_alerts();
  ASSERT_EQ(opened.size(), 1u);
  EXPECT_EQ(opened[0].rank, 1u);
  EXPECT_EQ(opened[0].layer, 0u);
  EXPECT_EQ(opened[0].expert, 2u);
  EXPECT_EQ(opened[0].end_ns, 0);
  EXPECT_EQ(opened[0].start_ns, 0);  // the streak began with window 0
  auto m = f.scrape();
  EXPECT_EQ(find_series(m, "inferscope_ep_rank_hot", {"rank=\"1\""}), 1.0);
  EXPECT_EQ(find_series(m, "inferscope_ep_rank_hot", {"rank=\"0\""}), 0.0);
  EXPECT_EQ(find_series(m, "inferscope_ep_hot_rank_episodes_total", {"rank=\"1\""}), 1.0);

  for (int w = 4; w < 6; ++w) f.window(w, false);  // window 4 balanced: clears
  EXPECT_TRUE(f.pipeline->aggregator().hot_ranks("ep").empty());
  auto all = f.hot_rank_alerts();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].start_ns, all[0].start_ns);
  EXPECT_EQ(all[1].end_ns, 4 * kW);
  EXPECT_EQ(find_series(f.scrape(), "inferscope_ep_rank_hot", {"rank=\"1\""}), 0.0);
}

TEST(EpHotRank, WithoutEpRecordsThePlacementLoadDecides) {
  EpFixture f(/*with_ep_records=*/false);
  for (int w = 0; w < 4; ++w) f.window(w, true);
  // Placement load, both agents summed: layer 0 rank 1 holds 160 of 200, layer 1 100 of 200.
  auto hot = f.pipeline->aggregator().hot_ranks("ep");
  ASSERT_EQ(hot.size(), 1u);
  EXPECT_EQ(hot[0].rank, 1u);
  EXPECT_NEAR(hot[0].utilization, 260.0 / 200.0, 1e-6);
  ASSERT_EQ(hot[0].layers.size(), 1u);
  EXPECT_NEAR(hot[0].layers[0].utilization, 160.0 / 100.0, 1e-9);
  // And the what-if: EPLB with 2 redundant slots balances layer 0 (now 0.625).
  auto now = f.pipeline->aggregator().rank_load("ep", 0);
  auto eplb = f.pipeline->aggregator().eplb_rank_load("ep", 0);
  ASSERT_TRUE(now && eplb);
  EXPECT_DOUBLE_EQ(now->balancedness, 100.0 / 160.0);
  EXPECT_GT(eplb->balancedness, now->balancedness);
  auto m = f.scrape();
  EXPECT_EQ(find_series(m, "inferscope_moe_ep_eplb_balancedness_ratio", {"layer=\"0\""}),
            eplb->balancedness);
  EXPECT_EQ(find_series(m, "inferscope_moe_ep_eplb_rank_utilization_ratio",
                        {"rank=\"1\"", "layer=\"0\""}),
            eplb->utilization[1]);
}

TEST(EpRecords, ForALayerTheHelloDoesNotHaveAsMoeCloseTheConnection) {
  EpFixture f(true);
  Rejection why;
  EXPECT_FALSE(f.pipeline->on_frame(f.a, frame_of({ep(0, 5, 1, 1, 1)}), why));
  EXPECT_EQ(why.reason, "schema");
  EXPECT_NE(why.message.find("expert_parallel for layer 5"), std::string::npos) << why.message;
}

}  // namespace
