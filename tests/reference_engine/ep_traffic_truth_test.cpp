// The EP traffic matrix against the truth: 4 CPU ranks (threads, each its own
// CPU backend and host communicator over real sockets) run moe_ffn_ep on a
// crafted routing where every token's two experts, hence every (src, dst) pair's
// rows, are known by construction. Every pair of the measured matrix must equal
// the routing; fed to a real collector pipeline as the ranks' expert_parallel
// records, the per-rank in/out totals must add up and the exported top-K pairs
// must be the heaviest pairs of that matrix.
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <array>

#include "../collector/test_client.hpp"
#include "ep_class_routing.hpp"
#include "ep_test_util.hpp"
#include "inferscope/collector/pipeline.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/layers.hpp"

namespace ie = inferscope::engine;
namespace col = inferscope::collector;
namespace wire = inferscope::wire;

namespace {

constexpr int kRanks = 4, kE = ie::test::kClassExperts, kD = ie::test::kClassD,
              kF = ie::test::kClassF, kPerRank = kE / kRanks;
constexpr uint32_t kLayer = 3;

// Placement: rank r holds experts [2r, 2r+1] (ExpertPlacement::make). Routing
// (ep_class_routing.hpp): a token of class c goes to experts c and (c + 3) % 8.
using ie::test::second_expert;
int owner(int e) {
  return e / kPerRank;
}

// Each rank's tokens, as classes. Rank 3 has none (an idle rank still serves).
const std::array<std::vector<int>, kRanks> kClasses = {{
    {2, 2, 2, 2, 2, 2, 0, 0, 0, 7},  // rows to ranks 0..3: 3, 10, 6, 1
    {4, 4, 4, 4, 4, 4, 4, 4, 1, 1},  // 2, 0, 10, 8
    {6, 6, 6, 6, 6},                 // 5, 0, 0, 5
    {},
}};

// The matrix by construction, src-major.
std::vector<uint64_t> expected_matrix() {
  std::vector<uint64_t> m(kRanks * kRanks, 0);
  for (int s = 0; s < kRanks; ++s)
    for (int c : kClasses[static_cast<size_t>(s)]) {
      ++m[static_cast<size_t>(s * kRanks + owner(c))];
      ++m[static_cast<size_t>(s * kRanks + owner(second_expert(c)))];
    }
  return m;
}

using RankResult = ie::test::ClassRankResult;

ie::ModelConfig config() {
  ie::ModelConfig c;
  c.d_model = kD;
  c.moe.experts = kE;
  c.moe.top_k = 2;
  c.moe.expert_hidden = kF;
  c.moe.shared_experts = 1;
  c.moe.capacity_factor = 0.0f;  // dropless: every assignment travels
  return c;
}

std::vector<RankResult> run_all() {
  ie::test::TempDir dir{"ep-traffic"};
  std::vector<RankResult> r(kRanks);
  ie::test::run_ranks(kRanks, [&](int rank) {
    r[static_cast<size_t>(rank)] = ie::test::run_class_routed_rank(
        config(), static_cast<int32_t>(kLayer), rank, kRanks, kClasses[static_cast<size_t>(rank)],
        ie::ExpertPlacement::make(kE, kRanks, rank), dir.path.string(),
        /*max_tokens=*/10);
  });
  return r;
}

TEST(EpTrafficTruth, EveryPairEqualsTheRouting) {
  const std::vector<uint64_t> want = expected_matrix();
  // The construction itself, by hand (so a wrong helper cannot agree with a wrong engine).
  EXPECT_EQ(std::vector<uint64_t>(want.begin(), want.begin() + 4),
            (std::vector<uint64_t>{3, 10, 6, 1}));
  const auto got = run_all();
  for (int s = 0; s < kRanks; ++s) {
    const auto& st = got[static_cast<size_t>(s)].stats;
    ASSERT_EQ(st.rows_to_rank.size(), static_cast<size_t>(kRanks)) << "rank " << s;
    uint32_t others = 0;
    for (int d = 0; d < kRanks; ++d) {
      EXPECT_EQ(st.rows_to_rank[static_cast<size_t>(d)], want[static_cast<size_t>(s * kRanks + d)])
          << "pair " << s << " -> " << d;
      if (d != s) others += st.rows_to_rank[static_cast<size_t>(d)];
    }
    EXPECT_EQ(st.rows_sent, others) << "rank " << s;
    EXPECT_EQ(st.row_bytes, static_cast<uint32_t>(kD * sizeof(float)));
    // Rows computed = the matrix's column (what every source sent here, own included).
    uint64_t column = 0;
    for (int src = 0; src < kRanks; ++src) column += want[static_cast<size_t>(src * kRanks + s)];
    EXPECT_EQ(st.rows_computed, column) << "rank " << s;
  }
}

TEST(EpTrafficTruth, CollectorTotalsAndTopPairsAreTheMatrixs) {
  const auto got = run_all();
  const std::vector<uint64_t> want = expected_matrix();
  constexpr int64_t kW = 200'000'000;
  constexpr int kSteps = 5;
  col::CollectorOptions options;
  options.aggregation.window_ns = kW;
  options.aggregation.ep_top_pairs = 3;
  col::CollectorMetrics metrics;
  col::Pipeline pipeline(options, metrics, nullptr);
  std::vector<std::unique_ptr<col::Session>> sessions;
  for (uint32_t r = 0; r < kRanks; ++r) {
    sessions.push_back(std::make_unique<col::Session>(options.limits));
    auto h = col::testing::make_hello("ep", r, kLayer + 1, kE, {0, 0, 1, 1, 2, 2, 3, 3});
    h.world_size = kRanks;
    col::Rejection why;
    ASSERT_TRUE(pipeline.on_frame(*sessions.back(), col::testing::frame_of({h}), why))
        << why.message;
  }
  // kSteps steps in window 0, then one in window 1 closes it.
  for (int step = 0; step <= kSteps; ++step)
    for (uint32_t r = 0; r < kRanks; ++r) {
      const auto& res = got[r];
      const int64_t ts = (step == kSteps ? kW : 0) + 1000 * step + r + 1;
      wire::ExpertParallelStep e;
      e.step = static_cast<uint64_t>(step);
      e.layer = kLayer;
      e.timestamp_ns = ts;
      e.dispatch_ns = res.stats.dispatch_ns;
      e.compute_ns = res.stats.compute_ns;
      e.combine_ns = res.stats.combine_ns;
      e.rows_sent = res.stats.rows_sent;
      e.rows_computed = res.stats.rows_computed;
      e.row_bytes = res.stats.row_bytes;
      e.rows_to_rank = res.stats.rows_to_rank;
      std::vector<uint32_t> routed(res.counts.routed.begin(), res.counts.routed.end());
      if (routed.empty()) routed.assign(kE, 0);
      col::Rejection why;
      ASSERT_TRUE(pipeline.on_frame(
          *sessions[r], col::testing::frame_of({col::testing::make_load(kLayer, ts, routed), e}),
          why))
          << why.message;
    }
  const col::EpRanks* ep = pipeline.aggregator().ep_ranks("ep");
  ASSERT_NE(ep, nullptr);
  // The heaviest off-diagonal pairs: 0->1 and 1->2 (10 each, lower src first), 1->3 (8).
  const auto top = ep->top_pairs(kLayer);
  std::vector<uint64_t> window = want;  // kSteps identical steps in window 0
  for (auto& v : window) v *= kSteps;
  const auto heaviest = inferscope::analysis::top_traffic_pairs(window, kRanks, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top, heaviest);
  EXPECT_EQ(top[0], (inferscope::analysis::TrafficPair{0, 1, 10 * kSteps}));
  EXPECT_EQ(top[1], (inferscope::analysis::TrafficPair{1, 2, 10 * kSteps}));
  EXPECT_EQ(top[2], (inferscope::analysis::TrafficPair{1, 3, 8 * kSteps}));

  prometheus::TextSerializer ser;
  const auto m = col::testing::parse_exposition(ser.Serialize(metrics.registry->Collect()));
  int pair_series = 0;
  for (const auto& [name, v] : m)
    if (name.rfind("inferscope_ep_traffic_top_pair_rows_per_second{", 0) == 0) ++pair_series;
  EXPECT_EQ(pair_series, 3);  // K, not 4 x 4
  EXPECT_DOUBLE_EQ(*col::testing::find_series(m, "inferscope_ep_traffic_top_pair_rows_per_second",
                                              {"src=\"1\"", "dst=\"3\""}),
                   8.0 * kSteps / 0.2);
  // Totals (windows 0 and 1: kSteps + 1 steps): out = row minus diagonal, in = column minus it.
  const auto totals = inferscope::analysis::traffic_totals(want, kRanks);
  for (uint32_t r = 0; r < kRanks; ++r) {
    const std::string rank = "rank=\"" + std::to_string(r) + "\"";
    EXPECT_EQ(
        col::testing::find_series(m, "inferscope_ep_traffic_rows_out_total", {rank}).value_or(0.0),
        static_cast<double>(totals.out[r] * (kSteps + 1)))
        << rank;
    EXPECT_EQ(
        col::testing::find_series(m, "inferscope_ep_traffic_rows_in_total", {rank}).value_or(0.0),
        static_cast<double>(totals.in[r] * (kSteps + 1)))
        << rank;
    EXPECT_EQ(
        col::testing::find_series(m, "inferscope_ep_traffic_bytes_in_total", {rank}).value_or(0.0),
        static_cast<double>(totals.in[r] * (kSteps + 1) * kD * sizeof(float)))
        << rank;
  }
  // The advisor ran on the window: its saving gauge exists and is not negative.
  const auto saving =
      col::testing::find_series(m, "inferscope_ep_eplb_saving_seconds_per_step", {});
  ASSERT_TRUE(saving.has_value());
  EXPECT_GE(*saving, 0.0);
  EXPECT_FALSE(ep->advice().layers.empty());
}

}  // namespace
