// The EPLB advisor's prediction against a real re-placed run (issue 24, item 3).
// 4 CPU ranks (threads, each its own CPU backend and host communicator over real
// sockets) run moe_ffn_ep on a skewed routing under the contiguous placement P0.
// The per-expert loads they report go to plan_eplb (no redundant replicas: the
// engine's shards are equal-sized, one copy per expert) and advise_eplb, which
// predict the balancedness after re-placement. The plan is written as an
// --ep-placement file, parsed by the engine's own parser into P1, and the SAME
// tokens run again under P1 (router rows relabelled as the model loader does).
// The rows each rank computed under P1 must be the plan's predicted rank loads,
// row for row, and their mean/max must be the advisor's balancedness_after.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <functional>
#include <numeric>
#include <span>

#include "ep_class_routing.hpp"
#include "ep_test_util.hpp"
#include "inferscope/analysis/eplb.hpp"
#include "inferscope/analysis/eplb_advisor.hpp"
#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/layers.hpp"
#include "inferscope/engine/placement_file.hpp"

namespace ie = inferscope::engine;
namespace an = inferscope::analysis;

namespace {

constexpr int kRanks = 4, kE = ie::test::kClassExperts, kD = ie::test::kClassD,
              kF = ie::test::kClassF, kPerRank = kE / kRanks;
constexpr int32_t kLayer = 1;

// Routing (logical ids, ep_class_routing.hpp): a token of class c goes to experts
// c and (c + 3) % 8, whatever the placement.
using ie::test::second_expert;

// Skewed toward rank 0's contiguous experts {0, 1}: classes 0, 1, 5, 6 all hit them.
// Expert loads: 9 7 2 6 5 4 2 1; contiguous rank loads 16 8 9 3 (balancedness 9/16).
const std::array<std::vector<int>, kRanks> kClasses = {{
    {0, 0, 0, 1, 1, 5},
    {0, 0, 1, 1, 6, 2},
    {0, 1, 5, 5, 6},
    {7},
}};

ie::ModelConfig config() {
  ie::ModelConfig c;
  c.name = "advisor-truth";
  c.d_model = kD;
  c.mixers = "AA";
  c.ffns = "DM";  // layer kLayer is the MoE layer the placement file may relabel
  c.moe.experts = kE;
  c.moe.top_k = 2;
  c.moe.expert_hidden = kF;
  c.moe.shared_experts = 1;
  c.moe.capacity_factor = 0.0f;  // dropless: every assignment is computed
  return c;
}

using RankResult = ie::test::ClassRankResult;

// All ranks under the placement `placement_of(rank)` gives.
std::vector<RankResult> run_all(const std::function<ie::ExpertPlacement(int)>& placement_of) {
  ie::test::TempDir dir{"ep-advisor"};
  std::vector<RankResult> r(kRanks);
  ie::test::run_ranks(kRanks, [&](int rank) {
    r[static_cast<size_t>(rank)] = ie::test::run_class_routed_rank(
        config(), kLayer, rank, kRanks, kClasses[static_cast<size_t>(rank)], placement_of(rank),
        dir.path.string(), /*max_tokens=*/10);
  });
  return r;
}

// mean / max of the rows each rank computed: the run's measured balancedness.
double measured_balancedness(const std::vector<RankResult>& run) {
  double sum = 0.0, max = 0.0;
  for (const auto& r : run) {
    sum += r.stats.rows_computed;
    max = std::max(max, static_cast<double>(r.stats.rows_computed));
  }
  return max > 0.0 ? sum / kRanks / max : 0.0;
}

std::string placement_json(const std::vector<std::vector<uint32_t>>& expert_to_ranks) {
  std::string j = "{\"ranks\": " + std::to_string(kRanks) + ", \"expert_to_ranks\": [";
  for (size_t e = 0; e < expert_to_ranks.size(); ++e) {
    j += e ? ", [" : "[";
    for (size_t i = 0; i < expert_to_ranks[e].size(); ++i)
      j += (i ? ", " : "") + std::to_string(expert_to_ranks[e][i]);
    j += "]";
  }
  return j + "]}";
}

TEST(EpAdvisorTruth, PredictedBalancednessEqualsTheReplacedRun) {
  // P0: contiguous. The per-expert loads come from the run (logical ids: P0 is the identity).
  const auto p0 = run_all([](int rank) { return ie::ExpertPlacement::make(kE, kRanks, rank); });
  std::vector<uint64_t> load(kE, 0);
  std::vector<int64_t> compute_ns;
  for (const auto& r : p0) {
    ASSERT_EQ(r.counts.routed.size(), static_cast<size_t>(kE));
    for (int e = 0; e < kE; ++e)
      load[static_cast<size_t>(e)] += r.counts.routed[static_cast<size_t>(e)];
    compute_ns.push_back(std::max<int64_t>(r.stats.compute_ns, 1));
  }
  // The construction, by hand (a wrong engine cannot agree with a wrong helper).
  ASSERT_EQ(load, (std::vector<uint64_t>{9, 7, 2, 6, 5, 4, 2, 1}));
  std::vector<uint32_t> rows0;
  for (const auto& r : p0) rows0.push_back(r.stats.rows_computed);
  ASSERT_EQ(rows0, (std::vector<uint32_t>{16, 8, 9, 3}));

  // The planner and the advisor, as the collector runs them on a window.
  std::vector<std::vector<uint32_t>> current(kE);
  for (int e = 0; e < kE; ++e)
    current[static_cast<size_t>(e)] = {static_cast<uint32_t>(e / kPerRank)};
  const an::EplbPlan plan = an::plan_eplb(load, kRanks, /*redundant=*/0, &current);
  ASSERT_EQ(plan.expert_to_ranks.size(), static_cast<size_t>(kE));
  for (const auto& holders : plan.expert_to_ranks) ASSERT_EQ(holders.size(), 1u);
  const an::AdvisorLayerInput in{static_cast<uint32_t>(kLayer), load,       &current,
                                 &plan.expert_to_ranks,         compute_ns, 1};
  const an::Advice advice = an::advise_eplb(std::span(&in, 1), kRanks, an::AdvisorOptions{});
  ASSERT_EQ(advice.layers.size(), 1u);
  const an::AdvisorLayer& predicted = advice.layers[0];
  // Now: the advisor's view of P0 is what P0 measured.
  EXPECT_DOUBLE_EQ(predicted.balancedness_now, measured_balancedness(p0));
  EXPECT_DOUBLE_EQ(predicted.balancedness_now, 9.0 / 16.0);
  EXPECT_GT(predicted.balancedness_after, predicted.balancedness_now);  // a skew worth fixing
  // 36 rows over 4 ranks, two experts each: expert 0 (9) shares a rank with at least one
  // more row, so 9 / 10 is the best any placement can do; the planner finds it here.
  EXPECT_DOUBLE_EQ(predicted.balancedness_after, 9.0 / 10.0);

  // P1: the plan as an --ep-placement file, through the engine's own parser.
  const std::string json = placement_json(plan.expert_to_ranks);
  const ie::ModelConfig c = config();
  const auto p1 = run_all(
      [&](int rank) { return ie::parse_expert_placement(json, c, kRanks, rank, "advisor plan"); });
  ASSERT_NE(ie::parse_expert_placement(json, c, kRanks, 0).relabel(kLayer), nullptr)
      << "the plan should move experts: " << json;

  // Row for row: each rank computed exactly the load the planner gave it.
  const an::RankLoad want = an::compute_rank_load(load, plan.expert_to_ranks, kRanks);
  for (int r = 0; r < kRanks; ++r)
    EXPECT_EQ(static_cast<double>(p1[static_cast<size_t>(r)].stats.rows_computed),
              want.load[static_cast<size_t>(r)])
        << "rank " << r << ", plan " << json;
  // And the balancedness: predicted == measured.
  EXPECT_DOUBLE_EQ(predicted.balancedness_after, measured_balancedness(p1)) << json;
  // Same tokens, same logical routing: the per-expert loads did not change.
  uint64_t rows1 = 0;
  for (const auto& r : p1) rows1 += r.stats.rows_computed;
  EXPECT_EQ(rows1, std::accumulate(load.begin(), load.end(), uint64_t{0}));
}

}  // namespace
