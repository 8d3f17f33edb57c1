// The analysis library's expert-parallel arithmetic: the EPLB what-if planner,
// the (step, layer) join and its idle time, and hot-rank attribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "inferscope/analysis/ep_join.hpp"
#include "inferscope/analysis/eplb.hpp"
#include "inferscope/analysis/hot_rank.hpp"
#include "inferscope/analysis/layer_stats.hpp"

using namespace inferscope::analysis;

namespace {

using Table = std::vector<std::vector<uint32_t>>;

Table contiguous(uint32_t experts, uint32_t ranks) {
  Table t(experts);
  for (uint32_t e = 0; e < experts; ++e) t[e] = {e / (experts / ranks)};
  return t;
}

}  // namespace

// [SECTION] EPLB planner

TEST(Eplb, ReplicatesTheHeaviestAndPacksOntoTheLightestRank) {
  // Hand-checked: E0 (6) gets a second replica (3 + 3), then E1 (2 per replica,
  // the lowest id among the ties). Replicas 3,3,2,2,1,1 packed heaviest first
  // onto the least-loaded rank with a free slot (3 slots each): 6 and 6.
  const std::vector<uint64_t> load{6, 2, 2, 2};
  EplbPlan plan = plan_eplb(load, 2, 2);
  EXPECT_EQ(plan.slots_per_rank, 3u);
  EXPECT_EQ(plan.replicas_added, 2u);
  EXPECT_EQ(plan.expert_to_ranks, (Table{{0, 1}, {0, 1}, {0}, {1}}));
  RankLoad after = compute_rank_load(load, plan.expert_to_ranks, 2);
  EXPECT_DOUBLE_EQ(after.load[0], 6.0);
  EXPECT_DOUBLE_EQ(after.load[1], 6.0);
  EXPECT_DOUBLE_EQ(after.balancedness, 1.0);
  // The contiguous placement it replaces: 8 vs 4.
  EXPECT_DOUBLE_EQ(compute_rank_load(load, contiguous(4, 2), 2).balancedness, 0.75);
}

TEST(Eplb, WithoutRedundancyItIsGreedyPacking) {
  // 4 -> r0, 3 -> r1, 2 -> r1 (3 < 4), 1 -> r0 (its last slot): 5 and 5.
  const std::vector<uint64_t> load{4, 3, 2, 1};
  EplbPlan plan = plan_eplb(load, 2, 0);
  EXPECT_EQ(plan.replicas_added, 0u);
  EXPECT_EQ(plan.expert_to_ranks, (Table{{0}, {1}, {1}, {0}}));
}

TEST(Eplb, OneReplicaPerRankAndSlotsWhenExpertsDoNotDivide) {
  // One expert carries everything: it is spread over all 4 ranks and no further.
  EplbPlan plan = plan_eplb(std::vector<uint64_t>{100, 0, 0, 0}, 4, 4);
  EXPECT_EQ(plan.slots_per_rank, 2u);
  ASSERT_EQ(plan.expert_to_ranks[0].size(), 4u);
  EXPECT_DOUBLE_EQ(
      compute_rank_load(std::vector<uint64_t>{100, 0, 0, 0}, plan.expert_to_ranks, 4).balancedness,
      1.0);
  // 3 experts on 2 ranks, no redundancy: 2 slots per rank, every expert placed once.
  EplbPlan odd = plan_eplb(std::vector<uint64_t>{5, 5, 5}, 2, 0);
  EXPECT_EQ(odd.slots_per_rank, 2u);
  for (const auto& holders : odd.expert_to_ranks) EXPECT_EQ(holders.size(), 1u);
  EXPECT_TRUE(plan_eplb(std::vector<uint64_t>{}, 2, 2).expert_to_ranks.empty());
}

TEST(Eplb, NeverWorseThanTheContiguousPlacementOnRandomLoads) {
  std::mt19937 rng(1234);
  int better = 0, greedy_won = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const uint32_t ranks = std::array<uint32_t, 3>{2, 4, 8}[trial % 3];
    const uint32_t experts = ranks * std::array<uint32_t, 4>{1, 2, 4, 8}[(trial / 3) % 4];
    // Zipf-like skew of random strength, experts in random order.
    const double s = std::uniform_real_distribution<double>(0.0, 2.0)(rng);
    std::vector<uint64_t> load(experts);
    for (uint32_t e = 0; e < experts; ++e)
      load[e] = static_cast<uint64_t>(10000.0 / std::pow(e + 1.0, s)) +
                std::uniform_int_distribution<uint64_t>(0, 50)(rng);
    std::shuffle(load.begin(), load.end(), rng);
    const uint32_t redundant = trial % 2 == 0 ? ranks : 0;
    const Table current = contiguous(experts, ranks);
    EplbPlan plan = plan_eplb(load, ranks, redundant, &current);
    // Every expert placed, no rank over its slots, no expert twice on one rank.
    std::vector<uint32_t> used(ranks, 0);
    for (const auto& holders : plan.expert_to_ranks) {
      ASSERT_FALSE(holders.empty());
      auto sorted = holders;
      std::sort(sorted.begin(), sorted.end());
      EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
      for (uint32_t r : holders) ++used[r];
    }
    for (uint32_t u : used) EXPECT_LE(u, plan.slots_per_rank);
    const double now = compute_rank_load(load, current, ranks).balancedness;
    const double after = compute_rank_load(load, plan.expert_to_ranks, ranks).balancedness;
    EXPECT_GE(after, now - 1e-12) << "trial " << trial << " ranks " << ranks << " experts "
                                  << experts;
    better += after > now + 1e-9;
    greedy_won += !plan.kept_current;
  }
  EXPECT_GT(better, 200);      // usually strictly better
  EXPECT_GT(greedy_won, 300);  // and mostly by the greedy re-placement itself
}

// [SECTION] Join on (step, layer)

TEST(EpJoin, SlowestRankAndIdleOnceEveryRankReported) {
  EpStepJoin join;
  EpStepJoin::Joined out;
  EXPECT_EQ(join.add(2, 0, 7, 3, 100, out), EpStepJoin::Result::kPending);
  EXPECT_EQ(join.add(2, 0, 7, 3, 100, out), EpStepJoin::Result::kDuplicate);
  EXPECT_EQ(join.add(2, 2, 7, 3, 100, out), EpStepJoin::Result::kOutOfWorld);
  ASSERT_EQ(join.add(2, 1, 7, 3, 300, out), EpStepJoin::Result::kJoined);
  EXPECT_EQ(out.step, 7u);
  EXPECT_EQ(out.layer, 3u);
  EXPECT_EQ(out.compute_ns, (std::vector<int64_t>{100, 300}));
  EXPECT_EQ(out.slowest, 1u);
  EXPECT_EQ(join.pending(), 0u);
  // A world of one joins at once and idles never.
  ASSERT_EQ(join.add(1, 0, 8, 0, 50, out), EpStepJoin::Result::kJoined);
  EXPECT_EQ(out.slowest, 0u);
}

TEST(EpJoin, PairsARankNeverCompletesAreEvictedAndCounted) {
  EpStepJoin join(/*max_steps=*/4, /*max_pending=*/100);
  EpStepJoin::Joined out;
  for (uint64_t step = 0; step < 10; ++step) join.add(2, 0, step, 0, 1, out);  // rank 1 is gone
  EXPECT_EQ(join.evicted(), 6u);  // steps 0..5 fell behind the newest (9) by 4 or more
  EXPECT_EQ(join.pending(), 4u);
  // The pending cap holds too.
  EpStepJoin small(1000, 3);
  for (uint32_t layer = 0; layer < 5; ++layer) small.add(2, 0, 1, layer, 1, out);
  EXPECT_EQ(small.pending(), 3u);
  EXPECT_EQ(small.evicted(), 2u);
}

TEST(EpJoin, AStepCounterRestartStartsOver) {
  EpStepJoin join(4, 100);
  EpStepJoin::Joined out;
  join.add(2, 0, 100, 0, 1, out);
  join.add(2, 0, 101, 0, 1, out);
  EXPECT_EQ(join.add(2, 0, 0, 0, 5, out), EpStepJoin::Result::kPending);  // restarted
  EXPECT_EQ(join.evicted(), 2u);
  EXPECT_EQ(join.add(2, 1, 0, 0, 9, out), EpStepJoin::Result::kJoined);
  EXPECT_EQ(out.slowest, 1u);
}
TEST(EpJoin, RankIdleIsTheWaitForTheSlowest) {
  const std::vector<int64_t> compute{100, 300, 300, 50};
  const RankIdle idle = rank_idle(compute);
  EXPECT_EQ(idle.slowest, 1u);  // the lowest of the tied slowest ranks
  EXPECT_EQ(idle.idle_ns, (std::vector<int64_t>{200, 0, 0, 250}));
  EXPECT_TRUE(rank_idle(std::vector<int64_t>{}).idle_ns.empty());
}

// [SECTION] Hot-rank attribution

TEST(HotRank, NamesTheLayersOverTheThresholdAndTheirLargestExperts) {
  AnalysisOptions o;
  o.experts_per_hot_layer = 2;
  // Two ranks. Layer 3: rank 0 carries 75 of 100 (1.5x the mean); layer 5: balanced.
  const std::vector<double> l3{75, 25}, l5{50, 50};
  const std::vector<uint64_t> experts3{40, 30, 5, 25};
  const Table placement{{0}, {0}, {0}, {1}};
  const std::vector<RankLayerInput> in{{3, l3, experts3, &placement}, {5, l5, {}, nullptr}};
  const HotRankCause c = hot_rank_cause(0, in, o);
  ASSERT_EQ(c.layers.size(), 1u);
  EXPECT_EQ(c.layers[0].layer, 3u);
  EXPECT_DOUBLE_EQ(c.layers[0].utilization, 1.5);
  ASSERT_EQ(c.experts.size(), 2u);  // the cap, not all three on rank 0
  EXPECT_EQ(c.experts[0].expert, 0u);
  EXPECT_DOUBLE_EQ(c.experts[0].share, 0.4);
  EXPECT_EQ(c.experts[1].expert, 1u);
  // Rank 1 is under the threshold everywhere.
  EXPECT_TRUE(hot_rank_cause(1, in, o).layers.empty());
  // A rank outside the layer's ranks is not hot there.
  EXPECT_TRUE(hot_rank_cause(7, in, o).layers.empty());
}

TEST(HotRank, AReplicatedExpertCountsWithItsLoadSplitAmongReplicas) {
  // Expert 0 (60 of 100) has replicas on ranks 0 and 1: each carries 30, so on
  // rank 0 expert 1 (40) is the larger part. This is the collector's split,
  // which the viewer's own copy lacked.
  const std::vector<double> ranks{70, 30};
  const std::vector<uint64_t> experts{60, 40};
  const Table placement{{0, 1}, {0}};
  const std::vector<RankLayerInput> in{{0, ranks, experts, &placement}};
  const HotRankCause c = hot_rank_cause(0, in, AnalysisOptions{});
  ASSERT_EQ(c.experts.size(), 2u);
  EXPECT_EQ(c.experts[0].expert, 1u);
  EXPECT_DOUBLE_EQ(c.experts[0].share, 0.4);
  EXPECT_EQ(c.experts[1].expert, 0u);
  EXPECT_DOUBLE_EQ(c.experts[1].share, 0.3);
}

TEST(HotRank, ExpertsOfSeveralLayersAreOrderedByShare) {
  const std::vector<double> a{90, 10}, b{80, 20};
  const std::vector<uint64_t> ea{50, 40, 10}, eb{70, 10, 20};
  const Table p{{0}, {0}, {1}};
  const std::vector<RankLayerInput> in{{1, a, ea, &p}, {2, b, eb, &p}};
  const HotRankCause c = hot_rank_cause(0, in, AnalysisOptions{});
  ASSERT_EQ(c.layers.size(), 2u);
  ASSERT_EQ(c.experts.size(), 4u);
  EXPECT_EQ(c.experts[0].layer, 2u);  // 0.7
  EXPECT_EQ(c.experts[1].layer, 1u);  // 0.5
  EXPECT_EQ(c.experts[2].layer, 1u);  // 0.4
  EXPECT_EQ(c.experts[3].layer, 2u);  // 0.1
}
