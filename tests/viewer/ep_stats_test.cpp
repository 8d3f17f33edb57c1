// ep_report: per-rank rows share, time per step, idle from the (step, layer)
// join, hot ranks with their layers and experts, and the EPLB what-if, from
// hand-made records with hand-computed answers.
#include "inferscope/viewer/ep_stats.hpp"

#include <gtest/gtest.h>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

wire::ExpertParallelStep ep(uint64_t step, int64_t ts, int64_t compute_ns, uint32_t rows) {
  wire::ExpertParallelStep s;
  s.step = step;
  s.layer = 1;
  s.timestamp_ns = ts;
  s.dispatch_ns = 1'000'000;
  s.compute_ns = compute_ns;
  s.combine_ns = 2'000'000;
  s.rows_sent = 10;
  s.rows_computed = rows;
  return s;
}

wire::ExpertLoad load(int64_t ts, std::vector<uint32_t> routed) {
  wire::ExpertLoad l;
  l.layer = 1;
  l.timestamp_ns = ts;
  l.routed = std::move(routed);
  return l;
}

TraceModel two_ranks() {
  TraceModel m;
  for (uint32_t r = 0; r < 2; ++r) {
    auto h = test::hello(r, {0, 0, 1, 1});
    h.world_size = 2;
    m.add(r + 1, h);
  }
  // Two steps; rank 1 computes 3x the rows and is the straggler.
  for (uint64_t step = 0; step < 2; ++step) {
    m.add(1, ep(step, 100 + static_cast<int64_t>(step), 1'000'000, 100));
    m.add(2, ep(step, 100 + static_cast<int64_t>(step), 3'000'000, 300));
    // Expert loads: experts 2 and 3 (rank 1) get 60 + 20 of 100 per rank.
    m.add(1, load(100, {10, 10, 60, 20}));
    m.add(2, load(100, {10, 10, 60, 20}));
  }
  m.add(2, ep(2, 100, 1, 1));  // step 2 only from rank 1: not joined
  m.finalize();
  return m;
}

TEST(EpReport, SharesTimesIdleAndStragglers) {
  TraceModel m = two_ranks();
  EpReport r = ep_report(m, 0, 1000);
  ASSERT_EQ(r.ranks, 2u);
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_EQ(r.joined, 2u);
  const EpRankRow& a = r.rows[0];
  const EpRankRow& b = r.rows[1];
  EXPECT_EQ(a.rows_computed, 200u);
  EXPECT_EQ(b.rows_computed, 601u);
  EXPECT_NEAR(b.rows_share, 601.0 / 801.0, 1e-12);
  EXPECT_EQ(a.steps, 2u);
  EXPECT_EQ(b.steps, 3u);
  // Rank 0 waits 2 ms in each of the 2 joined steps: 2 ms per step.
  EXPECT_DOUBLE_EQ(a.idle_ms, 2.0);
  EXPECT_DOUBLE_EQ(b.idle_ms, 0.0);
  EXPECT_DOUBLE_EQ(a.compute_ms, 1.0);
  EXPECT_DOUBLE_EQ(a.dispatch_ms, 1.0);
  EXPECT_EQ(a.straggler, 0u);
  EXPECT_EQ(b.straggler, 2u);
}

TEST(EpReport, HotRankNamesItsLayerAndExpertsAndEplbBalancesIt) {
  TraceModel m = two_ranks();
  EpReport r = ep_report(m, 0, 1000);
  ASSERT_EQ(r.hot.size(), 1u);
  EXPECT_EQ(r.hot[0].rank, 1u);
  ASSERT_EQ(r.hot[0].layers.size(), 1u);
  EXPECT_EQ(r.hot[0].layers[0].layer, 1u);
  ASSERT_GE(r.hot[0].experts.size(), 2u);
  EXPECT_EQ(r.hot[0].experts[0].expert, 2u);
  EXPECT_DOUBLE_EQ(r.hot[0].experts[0].share, 0.6);
  EXPECT_EQ(r.hot[0].experts[1].expert, 3u);
  // Placement: rank 0 holds 80 of 400, rank 1 320: now 0.4/1.6; EPLB with 2
  // redundant slots replicates expert 2 and balances to 1.0.
  ASSERT_TRUE(r.has_placement);
  EXPECT_DOUBLE_EQ(r.rows[1].load_now, 1.6);
  EXPECT_DOUBLE_EQ(r.balancedness_now, 200.0 / 320.0);
  EXPECT_GT(r.balancedness_eplb, 0.9);
  EXPECT_LT(r.rows[1].load_eplb, r.rows[1].load_now);
}

// Issue 24: the window's traffic matrix per layer (rows_to_rank summed over
// steps) and the advisor on the same window.
TEST(EpReport, TrafficMatrixPerLayerAndTheAdvisor) {
  TraceModel m;
  for (uint32_t r = 0; r < 2; ++r) {
    auto h = test::hello(r, {0, 0, 1, 1});
    h.world_size = 2;
    m.add(r + 1, h);
  }
  for (uint64_t step = 0; step < 2; ++step) {
    auto a = ep(step, 100, 1'000'000, 100);
    a.rows_to_rank = {40, 60};  // rank 0 keeps 40, sends 60 to rank 1
    auto b = ep(step, 100, 3'000'000, 300);
    b.rows_to_rank = {5, 95};
    m.add(1, a);
    m.add(2, b);
    m.add(1, load(100, {10, 10, 60, 20}));
    m.add(2, load(100, {10, 10, 60, 20}));
  }
  m.finalize();
  EpReport r = ep_report(m, 0, 1000);
  ASSERT_EQ(r.traffic.size(), 1u);
  EXPECT_EQ(r.traffic[0].layer, 1u);
  EXPECT_EQ(r.traffic[0].matrix, (std::vector<uint64_t>{80, 120, 10, 190}));
  EXPECT_EQ(r.traffic[0].max_pair, 120u);  // off-diagonal only
  // Advisor: rank loads 40 / 160 -> the plan balances them; measured 1 and 3 ms per pass:
  // straggler 3 ms, mean 2 ms, so the saving is 3 ms - 2 ms / balancedness_after.
  ASSERT_TRUE(r.has_advice);
  ASSERT_EQ(r.advice.layers.size(), 1u);
  const auto& l = r.advice.layers[0];
  EXPECT_DOUBLE_EQ(l.straggler_ns, 3'000'000.0);
  EXPECT_DOUBLE_EQ(l.mean_ns, 2'000'000.0);
  EXPECT_NEAR(l.saving_ns, 3'000'000.0 - 2'000'000.0 / l.balancedness_after, 1e-6);
  EXPECT_GT(l.saving_ns, 0.0);
  EXPECT_FALSE(r.advice.cost_known);
}

// Issue 24, "over time": rows each rank sends to other ranks, per time slice. Rank 1's
// off-rank traffic jumps in the second half; what is kept local never counts.
TEST(EpReport, TrafficOverTimeSplitsTheWindowIntoSlices) {
  TraceModel m;
  for (uint32_t r = 0; r < 2; ++r) {
    auto h = test::hello(r, {0, 0, 1, 1});
    h.world_size = 2;
    m.add(r + 1, h);
  }
  for (uint64_t step = 0; step < 4; ++step) {
    const int64_t ts = 100 + int64_t(step) * 250;  // 100, 350, 600, 850 in [0, 1000)
    auto a = ep(step, ts, 1'000'000, 100);
    a.rows_to_rank = {40, 60};  // rank 0 sends 60 to rank 1 every step
    auto b = ep(step, ts, 1'000'000, 100);
    b.rows_to_rank = {step < 2 ? 10u : 90u, 50};  // rank 1: 10 off-rank, then 90
    m.add(1, a);
    m.add(2, b);
  }
  auto other_layer = ep(9, 500, 1, 1);
  other_layer.layer = 3;
  other_layer.rows_to_rank = {1000, 1000};
  m.add(1, other_layer);
  m.finalize();

  const EpTrafficOverTime t = ep_traffic_over_time(m, 0, 1000, 1, 2);
  ASSERT_EQ(t.ranks, 2u);
  ASSERT_EQ(t.buckets, 2u);
  // [rank 0: first half, second half, rank 1: first half, second half]
  EXPECT_EQ(t.sent, (std::vector<uint64_t>{120, 120, 20, 180}));
  EXPECT_EQ(t.max_cell, 180u);
  // One slice per step: each step's own off-rank rows.
  const EpTrafficOverTime fine = ep_traffic_over_time(m, 0, 1000, 1, 4);
  EXPECT_EQ(fine.sent, (std::vector<uint64_t>{60, 60, 60, 60, 10, 10, 90, 90}));
  // A window without that layer's traffic is empty.
  EXPECT_EQ(ep_traffic_over_time(m, 0, 1000, 2, 4).ranks, 0u);
  EXPECT_EQ(ep_traffic_over_time(m, 2000, 3000, 1, 4).ranks, 0u);
}

TEST(EpReport, NothingOutsideTheWindowAndNoEpData) {
  TraceModel m = two_ranks();
  EpReport r = ep_report(m, 5000, 6000);
  EXPECT_FALSE(r.has_ep_records);
  EXPECT_EQ(r.joined, 0u);
  TraceModel empty;
  empty.finalize();
  EXPECT_EQ(ep_report(empty, 0, 100).ranks, 0u);
}

TEST(EpReport, SampleTraceWithExpertParallelRanksShowsTheSkew) {
  SampleOptions o;
  o.ranks = 4;
  o.seconds = 8;
  o.hot_from_s = 2;
  o.hot_to_s = 6;
  o.target_spans = 20'000;
  o.expert_parallel = true;
  auto bytes = sample_trace_bytes(o);
  TraceModel m;
  LoadResult res = load_trace_bytes(bytes, m);
  ASSERT_TRUE(res.ok) << res.error;
  ASSERT_FALSE(m.ep_steps().empty());
  const int64_t s = m.min_ns();
  EpReport hot = ep_report(m, s + 3'000'000'000, s + 5'000'000'000);
  ASSERT_FALSE(hot.hot.empty());
  const uint32_t owner = (o.hot_expert % o.experts) / (o.experts / o.ranks);
  EXPECT_EQ(hot.hot[0].rank, owner);
  EXPECT_GT(hot.rows[owner].idle_ms, -1e-9);
  for (uint32_t k = 0; k < hot.ranks; ++k)
    if (k != owner) {
      EXPECT_GT(hot.rows[k].idle_ms, hot.rows[owner].idle_ms);  // the others wait for it
    }
  EpReport calm = ep_report(m, s, s + 1'500'000'000);
  EXPECT_TRUE(calm.hot.empty());
  EXPECT_GT(hot.balancedness_eplb, hot.balancedness_now);
}

}  // namespace
}  // namespace inferscope::viewer
