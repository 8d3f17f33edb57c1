// Expert-parallel MoE over the host communicator: ranks are threads, each
// with its own CPU backend and only its shard of the experts. Every rank's
// output must equal the single-rank moe_ffn on the same tokens with all the
// experts, including skewed routing that sends most rows to one rank, capacity
// drops decided by the routing rank, and a rank with no rows at all.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <thread>

#include "ep_test_util.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/layers.hpp"

namespace ie = inferscope::engine;
using inferscope::engine::test::run_ranks;
using inferscope::engine::test::TempDir;
namespace fs = std::filesystem;

namespace {

struct MoeCase {
  static constexpr int D = 12, F = 7;
  int E = 8, top_k = 2;
  float capacity_factor = 0.0f;
  int shared = 1;
  float hot_bias = 0.0f;  // added to router rows of experts 0 and 1 along a common direction
  std::vector<int> tokens_per_rank;
  uint64_t seed = 5;

  ie::ModelConfig config() const {
    ie::ModelConfig c;
    c.d_model = D;
    c.moe.experts = E;
    c.moe.top_k = top_k;
    c.moe.expert_hidden = F;
    c.moe.shared_experts = shared;
    c.moe.capacity_factor = capacity_factor;
    return c;
  }
};

struct HostWeights {
  std::vector<float> router, gu, down, sgu, sdown;
  std::vector<std::vector<float>> h;  // per rank
};

HostWeights make_weights(const MoeCase& mc) {
  std::mt19937 rng(static_cast<unsigned>(mc.seed));
  std::normal_distribution<float> n(0.0f, 0.5f);
  auto fill = [&](std::vector<float>& v, size_t count) {
    v.resize(count);
    for (auto& x : v) x = n(rng);
  };
  const int D = MoeCase::D, F = MoeCase::F, E = mc.E;
  HostWeights w;
  fill(w.router, static_cast<size_t>(E * D));
  fill(w.gu, static_cast<size_t>(E * 2 * F * D));
  fill(w.down, static_cast<size_t>(E * D * F));
  fill(w.sgu, static_cast<size_t>(2 * F * mc.shared * D));
  fill(w.sdown, static_cast<size_t>(D * F * mc.shared));
  // Skew: every token has a positive component along dim 0; experts 0 and 1
  // (rank 0's shard) get a large router weight there.
  for (size_t r = 0; r < mc.tokens_per_rank.size(); ++r) {
    std::vector<float> h;
    fill(h, static_cast<size_t>(mc.tokens_per_rank[r] * D));
    for (int t = 0; t < mc.tokens_per_rank[r]; ++t)
      h[static_cast<size_t>(t * D)] = std::abs(h[static_cast<size_t>(t * D)]) + 1.0f;
    w.h.push_back(std::move(h));
  }
  for (int e = 0; e < 2; ++e) w.router[static_cast<size_t>(e * D)] += mc.hot_bias;
  return w;
}

struct RankOutput {
  std::vector<float> out;
  ie::RouteCounts counts;
  ie::EpLayerStats stats;
};

// moe_ffn with every expert on one backend.
RankOutput run_single(const MoeCase& mc, const HostWeights& hw, int rank) {
  auto be = ie::create_cpu_backend({1, 0});
  const ie::ModelConfig c = mc.config();
  const int D = MoeCase::D, F = MoeCase::F, E = mc.E,
            T = mc.tokens_per_rank[static_cast<size_t>(rank)];
  ie::Buffer br(*be, E, D), bgu(*be, E * 2 * F, D), bdown(*be, E * D, F),
      bsgu(*be, 2 * F * mc.shared, D), bsdown(*be, D, F * mc.shared), bh(*be, std::max(T, 1), D),
      bout(*be, std::max(T, 1), D);
  be->upload(br, hw.router.data());
  be->upload(bgu, hw.gu.data());
  be->upload(bdown, hw.down.data());
  be->upload(bsgu, hw.sgu.data());
  be->upload(bsdown, hw.sdown.data());
  RankOutput o;
  if (T == 0) return o;
  be->upload(bh, hw.h[static_cast<size_t>(rank)].data());
  ie::MoeWeights w{br.tensor(), {}, bgu.tensor(), bdown.tensor(), bsgu.tensor(), bsdown.tensor()};
  ie::MoeScratch s(*be, c, T);
  ie::moe_ffn(*be, c.moe, w, s, bh, bout, o.counts);
  o.out.resize(static_cast<size_t>(T * D));
  be->download(bout, o.out.data());
  return o;
}

// moe_ffn_ep on rank `rank` of `ranks`, holding only its experts.
RankOutput run_ep(const MoeCase& mc, const HostWeights& hw, int rank, int ranks,
                  const std::string& dir) {
  auto be = ie::create_cpu_backend({1, 0});
  const ie::ModelConfig c = mc.config();
  const int D = MoeCase::D, F = MoeCase::F, E = mc.E,
            T = mc.tokens_per_rank[static_cast<size_t>(rank)];
  const ie::ExpertPlacement pl = ie::ExpertPlacement::make(E, ranks, rank);
  const int El = pl.per_rank(), first = pl.first_local();
  ie::CommOptions co;
  co.rank = rank;
  co.size = ranks;
  co.rendezvous_dir = dir;
  co.timeout = std::chrono::milliseconds(20000);
  auto comm = ie::create_host_communicator(co);
  ie::Buffer br(*be, E, D), bgu(*be, El * 2 * F, D), bdown(*be, El * D, F),
      bsgu(*be, 2 * F * mc.shared, D), bsdown(*be, D, F * mc.shared), bh(*be, std::max(T, 1), D),
      bout(*be, std::max(T, 1), D);
  be->upload(br, hw.router.data());
  be->upload(bgu, hw.gu.data() + static_cast<size_t>(first) * 2 * F * D);
  be->upload(bdown, hw.down.data() + static_cast<size_t>(first) * D * F);
  be->upload(bsgu, hw.sgu.data());
  be->upload(bsdown, hw.sdown.data());
  if (T > 0) be->upload(bh, hw.h[static_cast<size_t>(rank)].data());
  ie::ExpertParallel ep;
  ep.comm = comm.get();
  ep.placement = pl;
  const int max_t = *std::max_element(mc.tokens_per_rank.begin(), mc.tokens_per_rank.end());
  ep.scratch = ie::EpScratch(*be, c, pl, max_t);
  ie::MoeWeights w{br.tensor(), {}, bgu.tensor(), bdown.tensor(), bsgu.tensor(), bsdown.tensor()};
  ie::MoeScratch s(*be, c, std::max(max_t, 1));
  RankOutput o;
  o.stats.layer = 3;
  const ie::Tensor h = bh.tensor().rows_view(0, T), out = bout.tensor().rows_view(0, T);
  ie::moe_ffn_ep(*be, c.moe, w, s, ep, h, out, o.counts, 0, o.stats);
  be->synchronize();
  ie::ep_read_timing(ep, 0, o.stats);
  o.out.resize(static_cast<size_t>(T * D));
  if (T > 0) be->download(out, o.out.data());
  return o;
}

void expect_ep_matches_single(const MoeCase& mc, int ranks) {
  const HostWeights hw = make_weights(mc);
  TempDir dir{"ep-test"};
  std::vector<RankOutput> ep(static_cast<size_t>(ranks));
  run_ranks(ranks, [&](int r) {
    ep[static_cast<size_t>(r)] = run_ep(mc, hw, r, ranks, dir.path.string());
  });
  uint64_t computed = 0, assigned = 0;
  for (int r = 0; r < ranks; ++r) {
    const RankOutput single = run_single(mc, hw, r);
    const RankOutput& got = ep[static_cast<size_t>(r)];
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(got.counts.kept, single.counts.kept.empty()
                                   ? std::vector<int32_t>(static_cast<size_t>(mc.E), 0)
                                   : single.counts.kept);
    EXPECT_EQ(got.counts.dropped, single.counts.dropped);
    ASSERT_EQ(got.out.size(), single.out.size());
    for (size_t i = 0; i < got.out.size(); ++i)
      EXPECT_NEAR(got.out[i], single.out[i], 1e-4f * (1.0f + std::abs(single.out[i]))) << i;
    computed += got.stats.rows_computed;
    for (int32_t k : got.counts.kept) assigned += static_cast<uint64_t>(k);
    EXPECT_EQ(got.stats.layer, 3);
    EXPECT_GE(got.stats.dispatch_ns, 0);
    EXPECT_GE(got.stats.compute_ns, 0);
    EXPECT_GE(got.stats.combine_ns, 0);
  }
  // Every kept assignment is computed exactly once, somewhere.
  EXPECT_EQ(computed, assigned);
}

}  // namespace

TEST(ExpertParallelMoe, TwoRanksMatchSingleRank) {
  MoeCase mc;
  mc.tokens_per_rank = {9, 6};
  expect_ep_matches_single(mc, 2);
}

TEST(ExpertParallelMoe, SkewedRoutingWithDropsMatchesSingleRank) {
  MoeCase mc;
  mc.tokens_per_rank = {16, 11};
  mc.hot_bias = 6.0f;         // experts 0 and 1 (rank 0) win almost every token
  mc.capacity_factor = 1.0f;  // ... and overflow: the routing rank drops
  const HostWeights hw = make_weights(mc);
  const RankOutput single = run_single(mc, hw, 0);
  ASSERT_GT(single.counts.dropped, 0u) << "the crafted skew must overflow capacity";
  ASSERT_GT(single.counts.routed[0] + single.counts.routed[1],
            single.counts.routed[2] + single.counts.routed[5]);
  expect_ep_matches_single(mc, 2);
}

TEST(ExpertParallelMoe, IdleRankStillServesItsExperts) {
  MoeCase mc;
  mc.tokens_per_rank = {0, 10, 4, 0};
  mc.shared = 1;
  expect_ep_matches_single(mc, 4);
}

TEST(ExpertParallelMoe, RowsSentCountsOnlyOtherRanks) {
  MoeCase mc;
  mc.tokens_per_rank = {12, 12};
  mc.hot_bias = 6.0f;  // rank 0's tokens stay home, rank 1's travel to rank 0
  const HostWeights hw = make_weights(mc);
  TempDir dir{"ep-test"};
  std::vector<RankOutput> ep(2);
  run_ranks(2,
            [&](int r) { ep[static_cast<size_t>(r)] = run_ep(mc, hw, r, 2, dir.path.string()); });
  auto kept_on = [&](const RankOutput& o, int owner) {
    uint32_t n = 0;
    for (int e = owner * 4; e < owner * 4 + 4; ++e)
      n += static_cast<uint32_t>(o.counts.kept[static_cast<size_t>(e)]);
    return n;
  };
  EXPECT_EQ(ep[0].stats.rows_sent, kept_on(ep[0], 1));
  EXPECT_EQ(ep[1].stats.rows_sent, kept_on(ep[1], 0));
  EXPECT_EQ(ep[0].stats.rows_computed, kept_on(ep[0], 0) + kept_on(ep[1], 0));
  EXPECT_GT(ep[0].stats.rows_computed, ep[1].stats.rows_computed);  // the skew made rank 0 hot
}

TEST(ExpertParallelMoe, PlacementRejectsUnevenShards) {
  EXPECT_THROW(ie::ExpertPlacement::make(6, 4, 0), std::invalid_argument);
  EXPECT_THROW(ie::ExpertPlacement::make(8, 2, 2), std::invalid_argument);
  const auto p = ie::ExpertPlacement::make(8, 4, 2);
  EXPECT_EQ(p.first_local(), 4);
  EXPECT_EQ(p.expert_to_rank(), (std::vector<uint32_t>{0, 0, 1, 1, 2, 2, 3, 3}));
}

TEST(HostCommunicator, PeerThatLeavesMakesTheOtherFailClearly) {
  TempDir dir{"ep-test"};
  std::string error;
  std::atomic<bool> left{false};
  run_ranks(2, [&](int r) {
    ie::CommOptions co;
    co.rank = r;
    co.size = 2;
    co.rendezvous_dir = dir.path.string();
    co.timeout = std::chrono::milliseconds(10000);
    auto comm = ie::create_host_communicator(co);
    EXPECT_EQ(comm->all_reduce_max(r * 10), 10);
    if (r == 1) {  // rank 1 "dies": its sockets close
      comm.reset();
      left = true;
      return;
    }
    // Rank 0's next collective starts after rank 1 has gone (a condition, not a
    // fixed sleep); the deadline only keeps a broken run from hanging.
    for (int i = 0; i < 6000 && !left.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(left.load()) << "rank 1 never left";
    try {
      comm->all_reduce_max(0);
    } catch (const ie::CommError& e) {
      error = e.what();
    }
  });
  EXPECT_NE(error.find("rank 1"), std::string::npos) << error;
}

TEST(HostCommunicator, StalledPeerTimesOut) {
  TempDir dir{"ep-test"};
  std::string error;
  std::atomic<bool> gave_up{false};
  run_ranks(2, [&](int r) {
    ie::CommOptions co;
    co.rank = r;
    co.size = 2;
    co.rendezvous_dir = dir.path.string();
    co.timeout = std::chrono::milliseconds(300);
    auto comm = ie::create_host_communicator(co);
    if (r == 1) {
      // Alive but silent until rank 0 has given up (not for a fixed time: on a
      // busy machine rank 0 may not even run within it).
      for (int i = 0; i < 6000 && !gave_up.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return;
    }
    try {
      comm->any(true);
    } catch (const ie::CommError& e) {
      error = e.what();
    }
    gave_up = true;
  });
  EXPECT_NE(error.find("no progress"), std::string::npos) << error;
}

TEST(HostCommunicator, MissingRendezvousDirIsAClearError) {
  ie::CommOptions co;
  co.rank = 0;
  co.size = 2;
  co.rendezvous_dir = "/nonexistent/inferscope-ep";
  EXPECT_THROW(ie::create_host_communicator(co), std::invalid_argument);
}
