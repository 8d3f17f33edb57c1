// The EPLB advisor on numbers computed by hand (docs/expert-parallel.md,
// "How the advisor computes").
#include "inferscope/analysis/eplb_advisor.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace inferscope::analysis {
namespace {

using Placement = std::vector<std::vector<uint32_t>>;

// 2 ranks, 4 experts. Now: e0, e1 on rank 0; e2, e3 on rank 1. Loads 60/20/10/10
// -> rank loads 80 / 20, balancedness 50 / 80. Plan: e1 moves to rank 1 -> 60 / 40,
// balancedness 50 / 60 = 5/6.
const std::vector<uint64_t> kLoad = {60, 20, 10, 10};
const Placement kNow = {{0}, {0}, {1}, {1}};
const Placement kPlan = {{0}, {1}, {1}, {1}};
// Measured over 10 passes: rank 0 800 ns per pass, rank 1 200 ns.
const std::vector<int64_t> kCompute = {8000, 2000};

TEST(EplbAdvisor, SavingCostAndBreakEvenByHand) {
  AdvisorLayerInput in{3, kLoad, &kNow, &kPlan, kCompute, 10};
  AdvisorOptions o;
  o.expert_bytes = 3'000'000;
  o.move_bytes_per_second = 1e9;
  o.steps_per_second = 50;
  Advice a = advise_eplb(std::span(&in, 1), 2, o);
  ASSERT_EQ(a.layers.size(), 1u);
  const AdvisorLayer& l = a.layers[0];
  EXPECT_EQ(l.layer, 3u);
  EXPECT_DOUBLE_EQ(l.straggler_ns, 800.0);
  EXPECT_DOUBLE_EQ(l.mean_ns, 500.0);
  EXPECT_DOUBLE_EQ(l.balancedness_now, 0.625);
  EXPECT_NEAR(l.balancedness_after, 5.0 / 6.0, 1e-12);
  EXPECT_NEAR(l.after_ns, 600.0, 1e-9);       // 500 / (5/6)
  EXPECT_NEAR(l.saving_ns, 200.0, 1e-9);      // 800 - 600
  EXPECT_NEAR(l.idle_now_ns, 600.0, 1e-9);    // (800 - 800) + (800 - 200)
  EXPECT_NEAR(l.idle_after_ns, 200.0, 1e-9);  // 2 * (600 - 500)
  EXPECT_NEAR(a.saving_ns_per_step, 200.0, 1e-9);
  // Rank 1 loads e1 (3 MB); rank 0 keeps what it has.
  EXPECT_EQ(a.bytes_in, (std::vector<uint64_t>{0, 3'000'000}));
  EXPECT_EQ(a.max_bytes_in, 3'000'000u);
  EXPECT_EQ(a.experts_moved, 1u);
  EXPECT_DOUBLE_EQ(a.stall_s, 0.003);               // 3 MB at 1 GB/s
  EXPECT_NEAR(a.break_even_steps, 15'000.0, 1e-6);  // 3 ms / 200 ns
  EXPECT_NEAR(a.break_even_s, 300.0, 1e-9);         // at 50 steps/s
}

TEST(EplbAdvisor, LayersAddUpAndABalancedLayerSavesNothing) {
  const std::vector<uint64_t> even = {25, 25, 25, 25};
  const std::vector<int64_t> same = {5000, 5000};
  AdvisorLayerInput in[2] = {{3, kLoad, &kNow, &kPlan, kCompute, 10},
                             {5, even, &kNow, &kNow, same, 10}};
  AdvisorOptions o;
  o.expert_bytes = 1000;
  o.move_bytes_per_second = 1e6;  // 1 ms for one expert
  Advice a = advise_eplb(in, 2, o);
  ASSERT_EQ(a.layers.size(), 2u);
  EXPECT_DOUBLE_EQ(a.layers[1].saving_ns, 0.0);
  EXPECT_DOUBLE_EQ(a.layers[1].idle_now_ns, 0.0);
  EXPECT_NEAR(a.saving_ns_per_step, 200.0, 1e-9);
  EXPECT_NEAR(a.break_even_steps, 5'000.0, 1e-6);  // 1 ms / 200 ns
  EXPECT_TRUE(std::isinf(a.break_even_s));         // no step rate given
}

TEST(EplbAdvisor, NothingToSaveNeverPaysBackAndUnknownSizeHasNoHorizon) {
  AdvisorLayerInput in{1, kLoad, &kNow, &kNow, kCompute, 10};  // plan = now
  AdvisorOptions o;
  o.expert_bytes = 1000;
  Advice a = advise_eplb(std::span(&in, 1), 2, o);
  ASSERT_EQ(a.layers.size(), 1u);
  // Predicted straggler = 500 / 0.625 = 800 = measured: no saving.
  EXPECT_NEAR(a.saving_ns_per_step, 0.0, 1e-9);
  EXPECT_EQ(a.max_bytes_in, 0u);
  EXPECT_TRUE(std::isinf(a.break_even_steps));

  AdvisorLayerInput moved{1, kLoad, &kNow, &kPlan, kCompute, 10};
  Advice u = advise_eplb(std::span(&moved, 1), 2, AdvisorOptions{});  // expert size unknown
  EXPECT_FALSE(u.cost_known);
  EXPECT_NEAR(u.saving_ns_per_step, 200.0, 1e-9);
  EXPECT_TRUE(std::isnan(u.break_even_steps));
}

TEST(EplbAdvisor, MismatchedOrIdleLayersAreSkipped) {
  const std::vector<int64_t> three = {1, 2, 3};
  const std::vector<uint64_t> zero = {0, 0, 0, 0};
  AdvisorLayerInput in[3] = {{1, kLoad, &kNow, &kPlan, three, 10},
                             {2, zero, &kNow, &kPlan, kCompute, 10},
                             {4, kLoad, &kNow, &kPlan, kCompute, 0}};
  Advice a = advise_eplb(in, 2, AdvisorOptions{});
  EXPECT_TRUE(a.layers.empty());
  EXPECT_DOUBLE_EQ(a.saving_ns_per_step, 0.0);
}

}  // namespace
}  // namespace inferscope::analysis
