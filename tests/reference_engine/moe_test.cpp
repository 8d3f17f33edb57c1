// MoE block semantics: k = N with unlimited capacity is the dense softmax
// mixture of all experts; capacity drops exactly the predicted assignments.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "inferscope/engine/layers.hpp"

namespace ie = inferscope::engine;

namespace {

struct Fixture {
  static constexpr int T = 8, D = 6, E = 4, F = 5;
  std::unique_ptr<ie::Backend> be = ie::create_cpu_backend();
  ie::ModelConfig c;
  std::vector<float> router, gu, down, h;
  ie::Buffer br, bgu, bdown, bh, bout;
  std::mt19937 rng{3};

  Fixture(int top_k, float capacity_factor) {
    c.d_model = D;
    c.moe.experts = E;
    c.moe.top_k = top_k;
    c.moe.expert_hidden = F;
    c.moe.capacity_factor = capacity_factor;
    std::normal_distribution<float> n(0.0f, 0.5f);
    auto fill = [&](std::vector<float>& v, size_t count) {
      v.resize(count);
      for (auto& x : v) x = n(rng);
    };
    fill(router, E * D);
    fill(gu, E * 2 * F * D);
    fill(down, E * D * F);
    fill(h, T * D);
    br = ie::Buffer(*be, E, D);
    bgu = ie::Buffer(*be, E * 2 * F, D);
    bdown = ie::Buffer(*be, E * D, F);
    bh = ie::Buffer(*be, T, D);
    bout = ie::Buffer(*be, T, D);
  }
  std::vector<float> run(ie::RouteCounts& counts) {
    be->upload(br, router.data());
    be->upload(bgu, gu.data());
    be->upload(bdown, down.data());
    be->upload(bh, h.data());
    ie::MoeWeights w{br.tensor(), {}, bgu.tensor(), bdown.tensor(), {}, {}};
    ie::MoeScratch s(*be, c, T);
    ie::moe_ffn(*be, c.moe, w, s, bh, bout, counts);
    std::vector<float> out(T * D);
    be->download(bout, out.data());
    return out;
  }
  // Expert e applied to token t, in double.
  std::vector<double> expert(int e, int t) const {
    std::vector<double> act(F), y(D, 0.0);
    for (int f = 0; f < F; ++f) {
      double g = 0, u = 0;
      for (int d = 0; d < D; ++d) {
        g += double(gu[(e * 2 * F + f) * D + d]) * h[t * D + d];
        u += double(gu[(e * 2 * F + F + f) * D + d]) * h[t * D + d];
      }
      act[f] = g / (1 + std::exp(-g)) * u;
    }
    for (int d = 0; d < D; ++d)
      for (int f = 0; f < F; ++f) y[d] += double(down[(e * D + d) * F + f]) * act[f];
    return y;
  }
};

TEST(Moe, TopKEqualsExpertsWithUnlimitedCapacityIsTheDenseMixture) {
  Fixture fx(Fixture::E, 0.0f);
  ie::RouteCounts counts;
  auto out = fx.run(counts);
  EXPECT_EQ(counts.dropped, 0u);
  for (int t = 0; t < Fixture::T; ++t) {
    std::vector<double> logit(Fixture::E);
    double mx = -1e30, sum = 0;
    for (int e = 0; e < Fixture::E; ++e) {
      for (int d = 0; d < Fixture::D; ++d)
        logit[e] += double(fx.router[e * Fixture::D + d]) * fx.h[t * Fixture::D + d];
      mx = std::max(mx, logit[e]);
    }
    for (auto& l : logit) sum += (l = std::exp(l - mx));
    std::vector<double> ref(Fixture::D, 0.0);
    for (int e = 0; e < Fixture::E; ++e) {
      auto y = fx.expert(e, t);
      for (int d = 0; d < Fixture::D; ++d) ref[d] += logit[e] / sum * y[d];
    }
    for (int d = 0; d < Fixture::D; ++d)
      EXPECT_NEAR(out[t * Fixture::D + d], ref[d], 1e-5) << "t " << t << " d " << d;
  }
  for (uint32_t r : counts.routed) EXPECT_EQ(r, uint32_t(Fixture::T));
}

TEST(Moe, CapacityDropsExactlyThePredictedAssignments) {
  // Router rows make every token pick experts 0 and 1 (top-2). Capacity =
  // ceil(1.0 * 8 * 2 / 4) = 4, so tokens 4..7 lose both assignments and, with
  // no shared expert, their output is exactly zero.
  Fixture fx(2, 1.0f);
  for (int t = 0; t < Fixture::T; ++t) fx.h[t * Fixture::D + 0] = 3.0f + 0.1f * float(t);
  for (int e = 0; e < Fixture::E; ++e)
    for (int d = 0; d < Fixture::D; ++d)
      fx.router[e * Fixture::D + d] = d == 0 ? (e == 0 ? 4.0f : e == 1 ? 3.0f : -4.0f) : 0.0f;
  ie::RouteCounts counts;
  auto out = fx.run(counts);
  EXPECT_EQ(ie::expert_capacity(fx.c.moe, Fixture::T), 4);
  EXPECT_EQ(counts.routed, (std::vector<uint32_t>{8, 8, 0, 0}));
  EXPECT_EQ(counts.kept, (std::vector<int32_t>{4, 4, 0, 0}));
  EXPECT_EQ(counts.dropped, 8u);
  for (int t = 0; t < Fixture::T; ++t) {
    double norm = 0;
    for (int d = 0; d < Fixture::D; ++d) norm += std::abs(out[t * Fixture::D + d]);
    if (t < 4)
      EXPECT_GT(norm, 1e-4) << "token " << t << " kept its experts";
    else
      EXPECT_EQ(norm, 0.0) << "token " << t << " was dropped";
  }
}

}  // namespace
