// Backend ops against naive double-precision references written here, for
// every backend that is built (the CPU backend always; CUDA when a GPU exists).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"

namespace ie = inferscope::engine;

namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Dev {
  std::unique_ptr<ie::Backend> be;
  std::vector<ie::Buffer> bufs;
  ie::Tensor make(int64_t r, int64_t c, const std::vector<float>& host) {
    bufs.emplace_back(*be, r, c);
    if (!host.empty()) be->upload(bufs.back(), host.data());
    return bufs.back();
  }
  ie::Tensor make_i32(int64_t r, int64_t c) {
    bufs.emplace_back(*be, r, c, ie::DType::kI32);
    return bufs.back();
  }
  std::vector<float> get(const ie::Tensor& t) {
    std::vector<float> v(static_cast<size_t>(t.elements()));
    be->download(t, v.data());
    return v;
  }
  std::vector<int32_t> get_i(const ie::Tensor& t) {
    std::vector<int32_t> v(static_cast<size_t>(t.elements()));
    be->download(t, v.data());
    return v;
  }
};

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  // The CUDA backend multiplies an uploaded fp32 weight in bf16 by default (its bf16 shadow;
  // INFERSCOPE_CUDA_MATH=fp32 turns that off): then a dot product is off by up to two bf16
  // roundings per term (2 x 2^-9 of |x w|), so the bound scales with sum |x_k w_k|. In fp32
  // math (the CPU backend, or CUDA with INFERSCOPE_CUDA_MATH=fp32) the fp32 bound holds.
  double dot_tolerance(double sum_abs) const {
    const char* math = std::getenv("INFERSCOPE_CUDA_MATH");
    const bool bf16 = GetParam() == "cuda" && !(math && std::string(math) == "fp32");
    return bf16 ? 1e-2 * sum_abs + 1e-6 : 1e-4;
  }
  void SetUp() override {
    try {
      dev.be = ie::create_backend(GetParam(), {});
    } catch (const std::exception& e) {
      GTEST_SKIP() << "backend " << GetParam() << " unavailable: " << e.what();
    }
  }
  Dev dev;
  std::mt19937 rng{42};
};

TEST_P(BackendOps, LinearMatchesNaive) {
  const int M = 5, K = 7, N = 3;
  auto x = random_vec(M * K, rng), w = random_vec(N * K, rng);
  auto tx = dev.make(M, K, x), tw = dev.make(N, K, w), ty = dev.make(M, N, {});
  dev.be->linear(tx, tw, ty);
  auto y = dev.get(ty);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0, sum_abs = 0;
      for (int k = 0; k < K; ++k) {
        ref += double(x[m * K + k]) * w[n * K + k];
        sum_abs += std::abs(double(x[m * K + k]) * w[n * K + k]);
      }
      EXPECT_NEAR(y[m * N + n], ref, dot_tolerance(sum_abs));
    }
}

TEST_P(BackendOps, PagedAttentionEqualsNaive) {
  // Two sequences with scattered blocks; GQA 4 query heads over 2 kv heads.
  const int H = 4, KVH = 2, HD = 8, BS = 4, slots = 12 * BS;
  ie::AttentionParams p{H, KVH, HD, 1.0f / std::sqrt(float(HD))};
  std::vector<int> lens = {9, 6};
  std::vector<std::vector<int>> tables = {{5, 2, 9}, {7, 0}};
  std::vector<std::vector<float>> K(2), V(2), Q(2);
  auto kc = dev.make(slots, KVH * HD, {}), vc = dev.make(slots, KVH * HD, {});
  for (int s = 0; s < 2; ++s) {
    K[s] = random_vec(lens[s] * KVH * HD, rng);
    V[s] = random_vec(lens[s] * KVH * HD, rng);
    Q[s] = random_vec(lens[s] * H * HD, rng);
    std::vector<int32_t> slot;
    for (int t = 0; t < lens[s]; ++t) slot.push_back(tables[s][t / BS] * BS + t % BS);
    auto tk = dev.make(lens[s], KVH * HD, K[s]), tv = dev.make(lens[s], KVH * HD, V[s]);
    dev.be->kv_store(tk, tv, kc, vc, slot);
  }
  // Query: the last 3 tokens of seq 0 and the last token of seq 1 (chunk + decode).
  std::vector<int32_t> tseq = {0, 0, 0, 1}, tpos = {6, 7, 8, 5};
  std::vector<float> q;
  for (size_t i = 0; i < tseq.size(); ++i)
    q.insert(q.end(), Q[tseq[i]].begin() + tpos[i] * H * HD,
             Q[tseq[i]].begin() + (tpos[i] + 1) * H * HD);
  std::vector<int32_t> bt = {5, 2, 9, 7, 0}, bts = {0, 3, 5};
  ie::PagedBatch b{tseq, tpos, bt, bts, BS};
  auto tq = dev.make(4, H * HD, q), to = dev.make(4, H * HD, {});
  dev.be->paged_attention(tq, kc, vc, b, p, to);
  auto out = dev.get(to);
  for (size_t i = 0; i < tseq.size(); ++i) {
    int s = tseq[i];
    for (int h = 0; h < H; ++h) {
      int kvh = h / (H / KVH);
      std::vector<double> sc(tpos[i] + 1);
      double mx = -1e30;
      for (int j = 0; j <= tpos[i]; ++j) {
        double d = 0;
        for (int e = 0; e < HD; ++e)
          d += double(q[i * H * HD + h * HD + e]) * K[s][j * KVH * HD + kvh * HD + e];
        sc[j] = d * p.scale;
        mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      for (auto& v : sc) sum += (v = std::exp(v - mx));
      for (int e = 0; e < HD; ++e) {
        double ref = 0;
        for (int j = 0; j <= tpos[i]; ++j) ref += sc[j] / sum * V[s][j * KVH * HD + kvh * HD + e];
        EXPECT_NEAR(out[i * H * HD + h * HD + e], ref, 1e-4) << "token " << i << " head " << h;
      }
    }
  }
}

TEST_P(BackendOps, SsmScanEqualsNaiveRecurrenceAcrossChunks) {
  const int T = 11, D = 6, N = 4;
  auto x = random_vec(T * D, rng), dt = random_vec(T * D, rng), Bm = random_vec(T * N, rng),
       Cm = random_vec(T * N, rng), dtb = random_vec(D, rng, 0.5f), Ds = random_vec(D, rng);
  std::vector<float> A(D * N);
  for (int i = 0; i < D * N; ++i) A[i] = -std::exp(0.3f * float(i % 5) - 0.5f);
  auto tx = dev.make(T, D, x), tdt = dev.make(T, D, dt), tB = dev.make(T, N, Bm),
       tC = dev.make(T, N, Cm), tA = dev.make(D, N, A), tdtb = dev.make(1, D, dtb),
       tD = dev.make(1, D, Ds), ty = dev.make(T, D, {}), st = dev.make(3, D * N, {});
  // One sequence in state slot 2, fed as a 7-token chunk then 4 single steps.
  std::vector<int32_t> slot = {2};
  std::vector<int32_t> first = {0, 7};
  dev.be->ssm_scan(tx.rows_view(0, 7), tdt.rows_view(0, 7), tdtb, tA, tB.rows_view(0, 7),
                   tC.rows_view(0, 7), tD, first, slot, st, ty.rows_view(0, 7));
  for (int t = 7; t < T; ++t) {
    std::vector<int32_t> one = {0, 1};
    dev.be->ssm_scan(tx.rows_view(t, 1), tdt.rows_view(t, 1), tdtb, tA, tB.rows_view(t, 1),
                     tC.rows_view(t, 1), tD, one, slot, st, ty.rows_view(t, 1));
  }
  auto y = dev.get(ty);
  std::vector<double> h(D * N, 0.0);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < D; ++i) {
      double v = dt[t * D + i] + dtb[i];
      double delta = std::log1p(std::exp(v));
      double acc = 0;
      for (int n = 0; n < N; ++n) {
        h[i * N + n] =
            std::exp(delta * A[i * N + n]) * h[i * N + n] + delta * Bm[t * N + n] * x[t * D + i];
        acc += Cm[t * N + n] * h[i * N + n];
      }
      EXPECT_NEAR(y[t * D + i], acc + Ds[i] * x[t * D + i], 1e-4) << "t " << t << " i " << i;
    }
  auto states = dev.get(st);
  for (int i = 0; i < D * N; ++i) {
    EXPECT_EQ(states[i], 0.0f) << "slot 0 untouched";
    EXPECT_NEAR(states[2 * D * N + i], h[i], 1e-4);
  }
}

TEST_P(BackendOps, RouteDropsExactlyThePredictedAssignments) {
  // 4 experts, top-2, capacity 2. Logits make the ranking explicit per token.
  const int T = 4, E = 4, k = 2;
  std::vector<float> logits = {
      5, 4, 0, 0,  // t0 -> e0, e1
      5, 0, 4, 0,  // t1 -> e0, e2
      5, 4, 0, 3,  // t2 -> e0 (full: dropped), e1
      0, 5, 0, 4,  // t3 -> e1 (full: dropped), e3
  };
  auto tl = dev.make(T, E, logits);
  auto ae = dev.make_i32(T, k), aw = dev.make(T, k, {});
  ie::RouteParams p{k, ie::GateFn::kSoftmax, true, 1.0f, 2, ie::OverflowPolicy::kDrop};
  ie::RouteCounts c;
  dev.be->moe_route(tl, ie::Tensor{}, p, ae, aw, c);
  EXPECT_EQ(dev.get_i(ae), (std::vector<int32_t>{0, 1, 0, 2, -1, 1, -1, 3}));
  EXPECT_EQ(c.routed, (std::vector<uint32_t>{3, 3, 1, 1}));
  EXPECT_EQ(c.kept, (std::vector<int32_t>{2, 2, 1, 1}));
  EXPECT_EQ(c.dropped, 2u);
  EXPECT_EQ(c.rerouted, 0u);
  auto w = dev.get(aw);
  EXPECT_NEAR(w[0] + w[1], 1.0f, 1e-5);  // renormalised over the two choices
  EXPECT_EQ(w[4], 0.0f);

  // Reroute: t2's e0 moves to its 3rd-ranked e3; t3's e1 skips the full e0
  // (3rd-ranked, tie with e2 broken by index) and lands on e2.
  p.overflow = ie::OverflowPolicy::kReroute;
  dev.be->moe_route(tl, ie::Tensor{}, p, ae, aw, c);
  EXPECT_EQ(dev.get_i(ae), (std::vector<int32_t>{0, 1, 0, 2, 3, 1, 2, 3}));
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(c.rerouted, 2u);
  EXPECT_EQ(c.kept, (std::vector<int32_t>{2, 2, 2, 2}));
}

TEST_P(BackendOps, RouteBiasSteersSelectionNotWeights) {
  const int E = 4;
  std::vector<float> logits = {1.0f, 0.9f, 0.0f, -1.0f}, bias = {0.0f, 0.0f, 2.0f, 0.0f};
  auto tl = dev.make(1, E, logits), tb = dev.make(1, E, bias);
  auto ae = dev.make_i32(1, 1), aw = dev.make(1, 1, {});
  ie::RouteParams p{1, ie::GateFn::kSigmoid, false, 1.0f, 0, ie::OverflowPolicy::kDrop};
  ie::RouteCounts c;
  dev.be->moe_route(tl, tb, p, ae, aw, c);
  EXPECT_EQ(dev.get_i(ae)[0], 2);
  EXPECT_NEAR(dev.get(aw)[0], 0.5f, 1e-6);  // sigmoid(0), unbiased
}

TEST_P(BackendOps, PermuteGroupedLinearUnpermute) {
  const int T = 3, E = 3, k = 2, D = 4, N = 5;
  std::vector<int32_t> assign = {2, 0, 0, -1, 2, 1};
  std::vector<float> weights = {0.7f, 0.3f, 1.0f, 0.0f, 0.6f, 0.4f};
  auto x = random_vec(T * D, rng), w = random_vec(E * N * D, rng);
  auto tx = dev.make(T, D, x), tw = dev.make(E * N, D, w), taw = dev.make(T, k, weights);
  auto tae = dev.make_i32(T, k);
  dev.be->upload(tae, assign.data());
  std::vector<int32_t> offsets = {0, 2, 3, 5};
  auto xp = dev.make(T * k, D, {}), yp = dev.make(T * k, N, {}), y = dev.make(T, N, {});
  auto perm = dev.make_i32(T * k, 1);
  dev.be->moe_permute(tx, tae, offsets, xp, perm);
  auto pv = dev.get_i(perm);
  EXPECT_EQ(std::vector<int32_t>(pv.begin(), pv.begin() + 5),
            (std::vector<int32_t>{1, 2, 5, 0, 4}));
  dev.be->grouped_linear(xp, tw, offsets, yp);
  dev.be->fill(y, 0.0f);
  dev.be->moe_unpermute(yp, perm, taw, k, 5, y);
  auto out = dev.get(y);
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n) {
      double ref = 0, sum_abs = 0;
      for (int j = 0; j < k; ++j) {
        int e = assign[t * k + j];
        if (e < 0) continue;
        double dot = 0;
        for (int d = 0; d < D; ++d) {
          dot += double(x[t * D + d]) * w[(e * N + n) * D + d];
          sum_abs += std::abs(weights[t * k + j] * double(x[t * D + d]) * w[(e * N + n) * D + d]);
        }
        ref += weights[t * k + j] * dot;
      }
      EXPECT_NEAR(out[t * N + n], ref, dot_tolerance(sum_abs));
    }
}

TEST_P(BackendOps, PatchifyAndPool) {
  const int H = 4, W = 4, C = 2, P = 2;
  std::vector<float> img(H * W * C);
  for (size_t i = 0; i < img.size(); ++i) img[i] = float(i);
  auto ti = dev.make(H, W * C, img), tp = dev.make(4, P * P * C, {}),
       tpool = dev.make(2, P * P * C, {});
  dev.be->patchify(ti, H, W, C, P, tp);
  auto p = dev.get(tp);
  // Patch 1 (top right): pixel (0,2) channel 0 is element 0*W*C + 2*C = 4.
  EXPECT_EQ(p[8 + 0], 4.0f);
  EXPECT_EQ(p[8 + 2 * C], float(1 * W * C + 2 * C));  // pixel (1,2)
  dev.be->mean_pool_rows(tp, 2, tpool);
  auto pooled = dev.get(tpool);
  EXPECT_EQ(pooled[0], (p[0] + p[8]) / 2);
}

std::vector<std::string> built_backends() {
  return ie::backend_names();
}

// The Backend base checks every op's inputs before the backend sees them: the
// same clear error from every backend, naming it and the op, and nothing run.
TEST_P(BackendOps, BadInputIsTheSameClearErrorFromEveryBackend) {
  const std::string prefix = GetParam() + " backend: ";
  auto expect_error = [&](const std::function<void()>& op, const std::string& what) {
    try {
      op();
      ADD_FAILURE() << "no error for " << what;
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), prefix + what);
    }
  };
  auto x = dev.make(4, 8, {}), w = dev.make(3, 7, {}), y = dev.make(4, 3, {});
  expect_error([&] { dev.be->linear(x, w, y); }, "linear shape");
  auto table = dev.make(5, 8, std::vector<float>(40, 1.0f)), rows = dev.make(2, 8, {});
  const std::vector<int32_t> ids = {1, 5};
  expect_error([&] { dev.be->get_rows(table, ids, rows); }, "get_rows id out of range");
  auto wg = dev.make(2 * 3, 8, {}), yg = dev.make(4, 3, {});
  const std::vector<int32_t> offsets = {0, 3, 2};
  expect_error([&] { dev.be->grouped_linear(x, wg, offsets, yg); },
               "grouped_linear: offsets must not decrease");
  auto kc = dev.make(4, 8, {}), vc = dev.make(4, 8, {});
  const std::vector<int32_t> slots = {0, 1, 2, 4};
  expect_error([&] { dev.be->kv_store(x, x, kc, vc, slots); }, "kv_store slot out of range");
  auto strided = x.cols_view(0, 4);
  std::vector<float> host(16);
  expect_error([&] { dev.be->download(strided, host.data()); },
               "download needs a contiguous tensor");
  // Nothing above reached the backend: get_rows copied no row (row 1 is valid
  // and all ones) before finding id 5 out of range.
  for (float v : dev.get(rows)) EXPECT_EQ(v, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOps, ::testing::ValuesIn(built_backends()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
