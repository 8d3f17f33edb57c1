// Statistics: percentiles, heatmap numbers, placement, series, requests.
#include "inferscope/viewer/stats.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

wire::ExpertLoad load(uint32_t layer, int64_t t, std::vector<uint32_t> routed,
                      uint32_t dropped = 0) {
  wire::ExpertLoad l;
  l.layer = layer;
  l.timestamp_ns = t;
  l.routed = std::move(routed);
  l.dropped = dropped;
  for (uint32_t r : l.routed) l.tokens += r;
  return l;
}

TEST(ViewerPercentile, NearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  EXPECT_EQ(percentile(v, 50), 50);
  EXPECT_EQ(percentile(v, 95), 95);
  EXPECT_EQ(percentile(v, 99), 99);
  EXPECT_EQ(percentile(v, 100), 100);
  EXPECT_EQ(percentile(v, 0), 1);
  EXPECT_EQ(percentile({7.0}, 99), 7);
  EXPECT_EQ(percentile({}, 50), 0);
  Percentiles p = percentiles({1, 2, 3, 4});
  EXPECT_EQ(p.count, 4u);
  EXPECT_EQ(p.p50, 2);
  EXPECT_EQ(p.p99, 4);
}

TEST(ViewerHeatmap, NumbersMatchTheRecordsInTheWindow) {
  TraceModel m;
  m.add(1, test::hello(0, {0, 0, 1, 1}));
  m.add(2, test::hello(1, {0, 0, 1, 1}));
  m.add(1, load(1, 100, {10, 0, 0, 30}, 3));
  m.add(1, load(1, 200, {10, 10, 0, 20}, 2));
  m.add(1, load(1, 900, {1000, 0, 0, 0}));  // outside the window
  m.add(2, load(1, 150, {0, 40, 0, 0}));    // rank 1
  m.finalize();

  Heatmap h = expert_heatmap(m, 0, 500, 0);
  ASSERT_EQ(h.layers.size(), 1u);
  const HeatmapLayer& l = h.layers[0];
  EXPECT_EQ(l.layer, 1u);
  EXPECT_EQ(l.assignments, (std::vector<uint64_t>{20, 10, 0, 50}));
  EXPECT_EQ(l.total, 80u);
  EXPECT_EQ(l.dropped, 5u);
  EXPECT_DOUBLE_EQ(l.share(3), 50.0 / 80.0);
  EXPECT_DOUBLE_EQ(l.utilization(3), 4 * 50.0 / 80.0);
  EXPECT_DOUBLE_EQ(l.imbalance, 50.0 / 20.0);
  double mean = 20, var = (0 + 100 + 400 + 900) / 4.0;
  EXPECT_NEAR(l.cv, std::sqrt(var) / mean, 1e-12);
  // No alerts in the trace: hot by threshold (utilization >= 2).
  EXPECT_EQ(l.hot, (std::vector<uint8_t>{0, 0, 0, 1}));
  EXPECT_EQ(h.experts, 4u);

  Heatmap all = expert_heatmap(m, 0, 500);
  EXPECT_EQ(all.layers[0].assignments, (std::vector<uint64_t>{20, 50, 0, 50}));

  // Ranks' shares 30/80 and 50/80 of the layer: utilization = share x 2 ranks.
  std::vector<inferscope::analysis::RankLoad> rl = rank_loads(h, {0, 0, 1, 1});
  ASSERT_EQ(rl.size(), 1u);
  ASSERT_EQ(rl[0].load.size(), 2u);
  EXPECT_DOUBLE_EQ(rl[0].utilization[0], 30.0 / 40.0);
  EXPECT_DOUBLE_EQ(rl[0].utilization[1], 50.0 / 40.0);
}

TEST(ViewerHeatmap, AlertsDecideWhichExpertsAreHot) {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, load(1, 100, {10, 10, 10, 70}));
  wire::AlertEpisode a;
  a.kind = wire::AlertKind::kHotExpert;
  a.layer = 1;
  a.expert = 1;  // the collector says expert 1 (say, over a longer history)
  a.start_ns = 50;
  a.end_ns = 0;  // open
  m.add(0, a);
  m.finalize();
  Heatmap h = expert_heatmap(m, 0, 500);
  EXPECT_EQ(h.layers[0].hot, (std::vector<uint8_t>{0, 1, 0, 0}));
  // The episode closed before the window: nothing hot.
  a.end_ns = 60;
  m.add(0, a);  // same episode, now closed: updated in place
  m.finalize();
  EXPECT_EQ(m.alerts().size(), 1u);
  Heatmap later = expert_heatmap(m, 80, 500);
  EXPECT_EQ(later.layers[0].hot, (std::vector<uint8_t>{0, 0, 0, 0}));
}

TEST(ViewerSeries, ExpertShareOverTime) {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, load(1, 10, {1, 3}));
  m.add(1, load(1, 20, {1, 1}));
  m.add(1, load(1, 160, {0, 4}));
  m.finalize();
  Series s = expert_share_series(m, 1, 1, 0, 200, 2);
  ASSERT_EQ(s.v.size(), 2u);
  EXPECT_DOUBLE_EQ(s.v[0], 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(s.v[1], 1.0);
  Series empty = expert_share_series(m, 1, 1, 0, 200, 4);
  EXPECT_TRUE(std::isnan(empty.v[2]));
}

TEST(ViewerSeries, MemoryIsAStepFunctionSummedOverRanks) {
  TraceModel m;
  m.add(1, wire::MemorySample{100, 0, wire::MemoryKind::kKvCache, 10, 100});
  m.add(1, wire::MemorySample{300, 0, wire::MemoryKind::kKvCache, 30, 100});
  m.add(2, wire::MemorySample{100, 1, wire::MemoryKind::kKvCache, 5, 50});
  m.add(2, wire::MemorySample{100, 1, wire::MemoryKind::kSsmState, 7, 8});
  m.finalize();
  MemorySeries s = memory_series(m, 0, 400, 5);  // t = 0, 100, 200, 300, 400
  auto kv = static_cast<size_t>(wire::MemoryKind::kKvCache);
  auto ssm = static_cast<size_t>(wire::MemoryKind::kSsmState);
  EXPECT_EQ(s.used[kv], (std::vector<double>{0, 15, 15, 35, 35}));
  EXPECT_EQ(s.capacity[kv][4], 150);
  EXPECT_EQ(s.used[ssm][2], 7);
  EXPECT_TRUE(s.has_kind[ssm]);
  EXPECT_FALSE(s.has_kind[static_cast<size_t>(wire::MemoryKind::kWeights)]);
  MemorySeries r1 = memory_series(m, 0, 400, 5, 1);
  EXPECT_EQ(r1.used[kv][4], 5);
}

TEST(ViewerSeries, PrefixHitRateSplitsAttentionAndSsm) {
  TraceModel m;
  m.add(1, wire::PrefixCacheSample{10, 100, 60, 100, 10});
  m.add(1, wire::PrefixCacheSample{20, 100, 80, 100, 30});
  m.add(1, wire::PrefixCacheSample{150, 0, 0, 50, 50});
  m.finalize();
  HitRateSeries h = prefix_hit_rate(m, 0, 200, 2);
  EXPECT_DOUBLE_EQ(h.attention[0], 0.7);
  EXPECT_DOUBLE_EQ(h.ssm[0], 0.2);
  EXPECT_TRUE(std::isnan(h.attention[1]));
  EXPECT_DOUBLE_EQ(h.ssm[1], 1.0);
  EXPECT_EQ(h.attention_queried, 200u);
  EXPECT_EQ(h.ssm_hit, 90u);
}

TEST(ViewerRequests, RowsAndStagePercentiles) {
  TraceModel m;
  m.add(1, test::hello(2));
  // 11 output tokens from 300 to 1300 ns: TPOT = 1000 / 10.
  m.add(1, wire::StageTiming{7, wire::Stage::kEncoder, wire::Device::kGpu, 10, 110, 0});
  m.add(1, wire::StageTiming{7, wire::Stage::kBackbonePrefill, wire::Device::kGpu, 110, 300, 0});
  m.add(1, wire::StageTiming{7, wire::Stage::kBackboneDecode, wire::Device::kGpu, 300, 1300, 0});
  m.add(1, wire::RequestEvent{7, 0, 300, 1300, 50, 11, 576, 20, wire::RequestStatus::kOk});
  m.add(1, wire::RequestEvent{8, 2000, 0, 2100, 50, 0, 0, 0, wire::RequestStatus::kError});
  m.finalize();
  auto rows = request_rows(m);
  ASSERT_EQ(rows.size(), 2u);
  const RequestRow& r = rows[0];
  EXPECT_EQ(r.request_id, 7u);
  EXPECT_EQ(r.rank, 2u);
  EXPECT_DOUBLE_EQ(r.ttft_s, 300e-9);
  EXPECT_DOUBLE_EQ(r.tpot_s, 100e-9);
  EXPECT_DOUBLE_EQ(r.e2e_s, 1300e-9);
  EXPECT_DOUBLE_EQ(r.stage_s[0], 100e-9);
  EXPECT_DOUBLE_EQ(r.stage_s[3], 1000e-9);
  EXPECT_EQ(r.images, 576u);
  EXPECT_TRUE(std::isnan(rows[1].ttft_s));
  StageStats st = stage_stats(rows);
  EXPECT_EQ(st.per_stage[0].count, 1u);
  EXPECT_EQ(st.per_stage[1].count, 0u);
  EXPECT_EQ(st.ttft.count, 1u);
  EXPECT_EQ(st.e2e.count, 2u);
  EXPECT_DOUBLE_EQ(st.e2e.p99, 1300e-9);
  EXPECT_EQ(request_rows(m, 1500, 3000).size(), 1u);
}

}  // namespace
}  // namespace inferscope::viewer
