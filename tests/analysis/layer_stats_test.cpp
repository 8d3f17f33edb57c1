// The analysis library's layer arithmetic on hand-computed inputs: utilization,
// imbalance, CV, rank loads (replicas split their expert's load), and the
// verdicts (hot / cold / dead, drop bursts) the collector, viewer and engine share.
#include "inferscope/analysis/layer_stats.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "inferscope/analysis/classify.hpp"
#include "inferscope/analysis/options.hpp"

using namespace inferscope::analysis;

// [SECTION] Layer statistics (moved from tests/collector/layer_stats_test.cpp)

TEST(LayerStats, UtilizationImbalanceCvAndDrops) {
  // 4 experts, 100 assignments: ideal 25 each.
  const std::vector<uint64_t> load{50, 25, 25, 0};
  LayerStats s = compute_layer_stats(load, 10);
  EXPECT_EQ(s.routed, 100u);
  EXPECT_DOUBLE_EQ(s.utilization[0], 2.0);
  EXPECT_DOUBLE_EQ(s.utilization[1], 1.0);
  EXPECT_DOUBLE_EQ(s.utilization[3], 0.0);
  EXPECT_DOUBLE_EQ(s.share[0], 0.5);
  EXPECT_DOUBLE_EQ(s.imbalance, 2.0);
  EXPECT_DOUBLE_EQ(s.max_utilization, 2.0);
  EXPECT_DOUBLE_EQ(s.min_utilization, 0.0);
  // Loads relative to the mean: 2,1,1,0 -> deviations 1,0,0,-1 -> var 0.5.
  EXPECT_NEAR(s.cv, std::sqrt(0.5), 1e-12);
  EXPECT_DOUBLE_EQ(s.drop_ratio, 0.1);
}

TEST(LayerStats, BalancedLayerHasCvZero) {
  const std::vector<uint64_t> load{7, 7, 7, 7, 7, 7, 7, 7};
  LayerStats s = compute_layer_stats(load, 0);
  EXPECT_DOUBLE_EQ(s.imbalance, 1.0);
  EXPECT_DOUBLE_EQ(s.cv, 0.0);
  EXPECT_DOUBLE_EQ(s.min_utilization, 1.0);
}

TEST(LayerStats, IdleLayerIsAllZero) {
  const std::vector<uint64_t> load{0, 0, 0};
  LayerStats s = compute_layer_stats(load, 0);
  EXPECT_EQ(s.routed, 0u);
  EXPECT_EQ(s.imbalance, 0.0);
  EXPECT_EQ(s.utilization.size(), 3u);
}

TEST(RankLoad, ReplicasSplitLoadEvenly) {
  // Experts 0..3 on ranks 0,0,1,1; expert 0 also replicated on rank 1.
  const std::vector<uint64_t> load{60, 20, 10, 10};
  const std::vector<std::vector<uint32_t>> placement{{0, 1}, {0}, {1}, {1}};
  RankLoad r = compute_rank_load(load, placement, 2);
  EXPECT_DOUBLE_EQ(r.load[0], 50.0);  // 30 + 20
  EXPECT_DOUBLE_EQ(r.load[1], 50.0);  // 30 + 10 + 10
  EXPECT_DOUBLE_EQ(r.balancedness, 1.0);
  // Without the replica: 80 vs 20 -> mean 50, max 80.
  RankLoad r2 = compute_rank_load(load, {{0}, {0}, {1}, {1}}, 2);
  EXPECT_DOUBLE_EQ(r2.balancedness, 50.0 / 80.0);
  EXPECT_DOUBLE_EQ(r2.utilization[0], 80.0 / 50.0);
  EXPECT_DOUBLE_EQ(r2.utilization[1], 20.0 / 50.0);
}
// [SECTION] imbalance() alone, as the engine counts it per step

TEST(Imbalance, MatchesTheLayerStatistics) {
  const std::vector<uint64_t> load{50, 25, 25, 0};
  EXPECT_DOUBLE_EQ(imbalance(load), 2.0);
  EXPECT_DOUBLE_EQ(imbalance(load), compute_layer_stats(load, 0).imbalance);
  const std::vector<uint64_t> skewed{1, 2, 3, 94};
  EXPECT_DOUBLE_EQ(imbalance(skewed), 94.0 * 4 / 100);
  EXPECT_DOUBLE_EQ(imbalance(std::vector<uint64_t>{0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(imbalance(std::vector<uint64_t>{}), 0.0);
  // A router's per-step uint32 counts give the same number.
  EXPECT_DOUBLE_EQ(imbalance(std::vector<uint32_t>{1, 2, 3, 94}), imbalance(skewed));
}

// [SECTION] Classification

TEST(Classify, OneWindowVerdictsAtTheDefaultThresholds) {
  const AnalysisOptions o;
  EXPECT_EQ(classify(2.0, 0.5, o), ExpertClass::kHot);  // at the threshold is hot
  EXPECT_EQ(classify(1.99, 0.49, o), ExpertClass::kNormal);
  EXPECT_EQ(classify(0.24, 0.01, o), ExpertClass::kCold);
  EXPECT_EQ(classify(0.25, 0.01, o), ExpertClass::kNormal);  // cold is strictly below
  EXPECT_EQ(classify(0.0, 0.0, o), ExpertClass::kDead);      // dead wins over cold
  EXPECT_STREQ(expert_class_name(ExpertClass::kDead), "dead");
}

TEST(Classify, HysteresisEdges) {
  AnalysisOptions o;
  EXPECT_FALSE(hot_clears(1.5, o));  // a hot expert at 1.5 stays hot
  EXPECT_TRUE(hot_clears(1.49, o));
  EXPECT_FALSE(cold_clears(0.49, o));
  EXPECT_TRUE(cold_clears(0.5, o));
  EXPECT_TRUE(is_hot_rank(1.25, o));
  EXPECT_FALSE(is_hot_rank(1.24, o));
  o.hot_threshold = 3.0;  // every verdict reads the options, none a constant of its own
  EXPECT_FALSE(is_hot(2.5, o));
  EXPECT_TRUE(is_hot(3.0, o));
}

TEST(Classify, WholeLayerAndDropBursts) {
  const AnalysisOptions o;
  // 4 experts, 100 assignments: utilization 2.8, 1.0, 0.2, 0.
  const std::vector<uint64_t> load{70, 25, 5, 0};
  const LayerStats s = compute_layer_stats(load, 5);
  EXPECT_EQ(classify_layer(s, o),
            (std::vector<ExpertClass>{ExpertClass::kHot, ExpertClass::kNormal, ExpertClass::kCold,
                                      ExpertClass::kDead}));
  EXPECT_TRUE(is_drop_burst(s, o));  // 5 / 100 = the threshold
  EXPECT_FALSE(is_drop_burst(compute_layer_stats(load, 4), o));
  // An idle layer says nothing about its experts.
  const LayerStats idle = compute_layer_stats(std::vector<uint64_t>{0, 0}, 0);
  EXPECT_EQ(classify_layer(idle, o),
            (std::vector<ExpertClass>{ExpertClass::kNormal, ExpertClass::kNormal}));
  EXPECT_FALSE(is_drop_burst(idle, o));
}

// The defaults the collector's CLI (docs/collector.md), the viewer and the engine's
// summary all start from: changing one changes all three, so it is pinned here.
TEST(AnalysisOptions, DefaultsAreTheDocumentedOnes) {
  const AnalysisOptions o;
  EXPECT_EQ(o.hot_threshold, 2.0);
  EXPECT_EQ(o.hot_clear_threshold, 1.5);
  EXPECT_EQ(o.cold_threshold, 0.25);
  EXPECT_EQ(o.cold_clear_threshold, 0.5);
  EXPECT_EQ(o.windows, 3u);
  EXPECT_EQ(o.drop_burst_threshold, 0.05);
  EXPECT_EQ(o.hot_rank_threshold, 1.25);
  EXPECT_EQ(o.hot_rank_clear_threshold, 1.1);
  EXPECT_EQ(o.experts_per_hot_layer, 3u);
  EXPECT_LT(o.hot_clear_threshold, o.hot_threshold);  // hysteresis needs a gap
  EXPECT_GT(o.cold_clear_threshold, o.cold_threshold);
  EXPECT_LT(o.hot_rank_clear_threshold, o.hot_rank_threshold);
}
