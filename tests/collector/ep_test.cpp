// Expert parallelism in the collector without sockets: the EPLB what-if
// planner, the (step, layer) join, and the hot-rank episode with the layers
// and experts it names.
#include <gtest/gtest.h>

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <random>

#include "inferscope/collector/ep_join.hpp"
#include "inferscope/collector/eplb.hpp"
#include "inferscope/collector/layer_stats.hpp"
#include "inferscope/collector/pipeline.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;

namespace {

using Table = std::vector<std::vector<uint32_t>>;

Table contiguous(uint32_t experts, uint32_t ranks) {
  Table t(experts);
  for (uint32_t e = 0; e < experts; ++e) t[e] = {e / (experts / ranks)};
  return t;
}

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
  EXPECT_DOUBLE_EQ(compute_rank_load(std::vector<uint64_t>{100, 0, 0, 0}, plan.expert_to_ranks, 4).balancedness, 1.0);
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
    EXPECT_GE(after, now - 1e-12) << "trial " << trial << " ranks " << ranks << " experts " << experts;
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

// [SECTION] Hot ranks through the pipeline

constexpr int64_t kW = 200'000'000;

wire::ExpertParallelStep ep(uint64_t step, uint32_t layer, int64_t ts, int64_t compute_ns, uint32_t rows) {
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
    pipeline->aggregator().set_alert_sink([this](const wire::AlertEpisode& x) { alerts.push_back(x); });
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
      recs.push_back(make_load(0, ts, skewed ? std::vector<uint32_t>{10, 10, 60, 20} : std::vector<uint32_t>{25, 25, 25, 25}));
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
  EXPECT_EQ(find_series(m, "inferscope_moe_ep_eplb_balancedness_ratio", {"layer=\"0\""}), eplb->balancedness);
  EXPECT_EQ(find_series(m, "inferscope_moe_ep_eplb_rank_utilization_ratio", {"rank=\"1\"", "layer=\"0\""}),
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
