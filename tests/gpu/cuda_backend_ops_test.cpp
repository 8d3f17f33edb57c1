// Every op of the CUDA backend against the CPU backend (the oracle), in the
// spirit of ggml's test-backend-ops: the same random inputs go to both, the
// outputs are compared by relative L2 error (bf16 tolerance for the GEMMs,
// fp32 rounding for the rest) and integer outputs must match exactly.
// Shapes are the demo model's and include strided views, empty experts,
// multi-block paged contexts and SSM runs long enough for the chunked scan.
// Without a CUDA device every test is skipped with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_util.hpp"
#include "inferscope/engine/backend.hpp"

namespace ie = inferscope::engine;
using inferscope::engine::gpu_test::randn;
using inferscope::engine::gpu_test::rel_l2;
using Side = inferscope::engine::gpu_test::BackendSide;

namespace {

// bf16 operands (8 mantissa bits) with fp32 accumulation over K ~ 256..1024
// land near 3e-3 relative L2; fp32-only ops differ by rounding order.
constexpr double kGemmTol = 1.5e-2;
constexpr double kF32Tol = 2e-5;

class CudaVsCpu : public inferscope::engine::gpu_test::CudaVsCpuTest {
 protected:
  CudaVsCpu() : CudaVsCpuTest(1234) {}
};

TEST_F(CudaVsCpu, AllocIsZeroedAndBadShapesThrow) {
  auto t = gpu.make(3, 70);
  for (float v : gpu.get(t)) ASSERT_EQ(v, 0.0f);
  auto a = gpu.make(2, 3), b = gpu.make(3, 2);
  EXPECT_THROW(gpu.be->add(a, b, a), std::invalid_argument);
}

TEST_F(CudaVsCpu, ElementwiseNormsAndGathers) {
  const int R = 37, C = 384;
  auto x = randn(R * C, rng), g = randn(R * 2 * C, rng), w = randn(C, rng);
  for (Side* s : {&cpu, &gpu}) {
    auto tx = s->make(R, C, x), tg = s->make(R, 2 * C, g), tw = s->make(1, C, w);
    auto o1 = s->make(R, C), o2 = s->make(R, C), o3 = s->make(R, C), o4 = s->make(R, C);
    s->be->add(tx, tg.cols_view(0, C), o1);
    s->be->mul_silu(tg.cols_view(C, C), tg.cols_view(0, C), o2);  // SwiGLU on a fused gate|up
    s->be->gelu(tx, o3);
    s->be->rms_norm(tx, tw, 1e-5f, o4);
    auto table = s->make(50, C, g);  // first 50 rows of g as a table
    std::vector<int32_t> ids = {3, 0, 49, 3, 17};
    auto o5 = s->make(5, C);
    s->be->get_rows(table, ids, o5);
    auto o6 = s->make(R, C);
    s->be->copy(tg.cols_view(C, C), o6);
    s->be->fill(tg.cols_view(0, 5), 2.5f);
  }
  for (size_t i = 3; i <= 6; ++i) {  // add, mul_silu, gelu, rms_norm
    auto ref = cpu.get(*cpu.bufs[i]), got = gpu.get(*gpu.bufs[i]);
    EXPECT_LT(rel_l2(got, ref), kF32Tol) << "output " << i;
  }
  EXPECT_EQ(gpu.get(*gpu.bufs[8]), cpu.get(*cpu.bufs[8]));  // get_rows is a copy
  EXPECT_EQ(gpu.get(*gpu.bufs[9]), cpu.get(*cpu.bufs[9]));  // strided copy
  EXPECT_EQ(gpu.get(*gpu.bufs[1]), cpu.get(*cpu.bufs[1]));  // fill of a strided view
}

// From kRowKernelMinRows (64) rows SwiGLU runs a block per row with 16-byte columns (the
// prefill kernel); the rows above take the element-per-thread one.
TEST_F(CudaVsCpu, MulSiluLongBatch) {
  const int R = 130, C = 256;
  auto g = randn(R * 2 * C, rng);
  std::vector<float> out[2];
  int i = 0;
  for (Side* s : {&cpu, &gpu}) {
    auto tg = s->make(R, 2 * C, g), o = s->make(R, C);
    s->be->mul_silu(tg.cols_view(C, C), tg.cols_view(0, C), o);
    out[i++] = s->get(o);
  }
  EXPECT_LT(rel_l2(out[1], out[0]), kF32Tol);
}

TEST_F(CudaVsCpu, LinearBf16WithinTolerance) {
  for (int M : {1, 7, 64, 300}) {
    const int K = 384, N = 1000;
    auto x = randn(M * (K + 16), rng), w = randn(N * K, rng, 0.05f), y0 = randn(M * N, rng);
    std::vector<float> out[2];
    int i = 0;
    for (Side* s : {&cpu, &gpu}) {
      auto tx = s->make(M, K + 16, x).cols_view(8, K);  // strided input
      auto tw = s->make(N, K, w);
      auto ty = s->make(M, N, y0);
      s->be->linear(tx, tw, ty, 1.0f);  // accumulate into y
      out[i++] = s->get(ty);
    }
    EXPECT_LT(rel_l2(out[1], out[0]), kGemmTol) << "M=" << M;
  }
}

// Both device paths: few rows per expert (the warp-per-column small_linear)
// and many (the wmma grouped GEMM).
TEST_F(CudaVsCpu, GroupedLinearSkipsEmptyExperts) {
  for (int scale : {1, 4}) {
    const int E = 16, K = 256, N = 192;
    std::vector<int32_t> counts = {0, 5, 1, 0, 0, 40, 3, 0, 2, 0, 0, 33, 1, 0, 7, 0};
    for (auto& c : counts) c *= scale;
    std::vector<int32_t> offsets(E + 1, 0);
    for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
    const int A = offsets.back();
    auto x = randn(A * K, rng), w = randn(E * N * K, rng, 0.05f);
    std::vector<float> out[2];
    int i = 0;
    for (Side* s : {&cpu, &gpu}) {
      auto tx = s->make(A, K, x), tw = s->make(E * N, K, w), ty = s->make(A + 3, N);
      s->be->grouped_linear(tx, tw, offsets, ty);
      out[i++] = s->get(ty);
    }
    EXPECT_LT(rel_l2(out[1], out[0]), kGemmTol) << "scale " << scale;
    for (int c = 0; c < 3 * N; ++c) ASSERT_EQ(out[1][A * N + c], 0.0f) << "rows past A untouched";
  }
}

TEST_F(CudaVsCpu, RopeMatches) {
  const int T = 33, H = 6, HD = 64;
  auto x = randn(T * H * HD, rng);
  std::vector<int32_t> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = (t * 37) % 900;
  std::vector<float> out[2];
  int i = 0;
  for (Side* s : {&cpu, &gpu}) {
    auto tx = s->make(T, H * HD, x);
    s->be->rope(tx, pos, H, HD, 10000.0f);
    out[i++] = s->get(tx);
  }
  // powf/sincosf vs std::pow/std::cos differ by an ulp or two; at angles of
  // ~900 rad that is ~1e-4 of the rotated value.
  EXPECT_LT(rel_l2(out[1], out[0]), 3e-4);
}

// q and k of a fused qkv row (strided views, as the model passes them): OLMoE's norms over the
// whole projections then RoPE, and RoPE alone (no norm weights); then k and v into their cache
// slots (out of order, other slots untouched).
TEST_F(CudaVsCpu, QkNormRopeStoreMatchesCpu) {
  const int H = 16, KVH = 4, HD = 128, qd = H * HD, kd = KVH * HD, row = qd + 2 * kd, slots = 20;
  for (int T : {1, 5}) {
    for (bool norms : {true, false}) {
      const auto qkv = randn(size_t(T) * row, rng);
      const auto qn = randn(size_t(qd), rng), kn = randn(size_t(kd), rng);
      std::vector<int32_t> pos(T), slot(T);
      for (int t = 0; t < T; ++t) {
        pos[t] = (t * 37 + 11) % 900;
        slot[t] = (7 * t + 3) % slots;
      }
      std::vector<float> out[2], kc[2], vc[2];
      int i = 0;
      for (Side* s : {&cpu, &gpu}) {
        auto t = s->make(T, row, qkv);
        auto tkc = s->make(slots, kd), tvc = s->make(slots, kd);
        ie::Tensor tqn, tkn;
        if (norms) {
          tqn = s->make(1, qd, qn);
          tkn = s->make(1, kd, kn);
        }
        s->be->qk_norm_rope_store(t.cols_view(0, qd), t.cols_view(qd, kd), t.cols_view(qd + kd, kd),
                                  tqn, tkn, 1e-6f, pos, H, KVH, HD, 10000.0f, tkc, tvc, slot);
        out[i] = s->get(t);
        kc[i] = s->get(tkc);
        vc[i++] = s->get(tvc);
      }
      // As RopeMatches: powf/sincosf vs std::pow/std::cos at angles of ~900 rad differ by ~1e-4
      // of the rotated value. v (not rotated) is untouched and stored as it is.
      EXPECT_LT(rel_l2(out[1], out[0]), 3e-4) << "T=" << T << " norms " << norms;
      EXPECT_LT(rel_l2(kc[1], kc[0]), 3e-4) << "k cache: T=" << T << " norms " << norms;
      EXPECT_EQ(vc[1], vc[0]) << "v cache: T=" << T;
      for (int r = 0; r < T; ++r)
        for (int c = qd + kd; c < row; ++c)
          ASSERT_EQ(out[1][size_t(r) * row + c], qkv[size_t(r) * row + c]);
    }
  }
}

// Paged attention of query rows (sequence, position) over sequences of the given lengths, every
// position's K / V written with one kv_store into shuffled cache blocks of 16; GPU against CPU.
double paged_attention_error(Side& cpu, Side& gpu, std::mt19937& rng, int H, int KVH, int HD,
                             const std::vector<int32_t>& lens,
                             const std::vector<std::pair<int32_t, int32_t>>& rows) {
  const int BS = 16;
  int blocks = 0;
  for (int l : lens) blocks += (l + BS - 1) / BS;
  ie::AttentionParams p{H, KVH, HD, 1.0f / std::sqrt(float(HD))};
  std::vector<int32_t> perm(blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table, table_start = {0};
  int next = 0;
  for (int l : lens) {
    for (int b = 0; b < (l + BS - 1) / BS; ++b) table.push_back(perm[next++]);
    table_start.push_back(static_cast<int32_t>(table.size()));
  }
  std::vector<int32_t> slots, tseq, tpos;
  for (size_t s = 0; s < lens.size(); ++s)
    for (int p2 = 0; p2 < lens[s]; ++p2)
      slots.push_back(table[table_start[s] + p2 / BS] * BS + p2 % BS);
  const int nk = static_cast<int>(slots.size());
  auto k = randn(nk * KVH * HD, rng), v = randn(nk * KVH * HD, rng);
  for (auto [s, pos] : rows) tseq.push_back(s), tpos.push_back(pos);
  const int T = static_cast<int>(tseq.size());
  auto q = randn(T * H * HD, rng);
  ie::PagedBatch batch{tseq, tpos, table, table_start, BS};
  std::vector<float> out[2];
  int i = 0;
  for (Side* s : {&cpu, &gpu}) {
    auto kc = s->make(blocks * BS, KVH * HD), vc = s->make(blocks * BS, KVH * HD);
    auto tk = s->make(nk, KVH * HD, k), tv = s->make(nk, KVH * HD, v);
    s->be->kv_store(tk, tv, kc, vc, slots);
    auto tq = s->make(T, H * HD, q), to = s->make(T, H * HD);
    s->be->paged_attention(tq, kc, vc, batch, p, to);
    out[i++] = s->get(to);
  }
  return rel_l2(out[1], out[0]);
}

// Head dims 64 / 128 / 32 take the decode kernel's lane layouts (16, 32, 8 lanes per key),
// 48 the generic kernel (12 lanes would not tile a warp). 12 rows in 3 runs of one sequence
// average 4 rows a run: the tiled prefill kernel, with a 300-position context (5 key chunks)
// and 2 one-row tiles.
TEST_F(CudaVsCpu, PagedAttentionPrefillAndDecode) {
  for (const int HD : {64, 128, 32, 48}) {
    // seq 0: 300 positions (prefill rows 290..299), seq 1: decode at 40, seq 2: decode at 0
    std::vector<std::pair<int32_t, int32_t>> rows;
    for (int p2 = 290; p2 < 300; ++p2) rows.push_back({0, p2});
    rows.push_back({1, 40});
    rows.push_back({2, 0});
    EXPECT_LT(paged_attention_error(cpu, gpu, rng, 8, 2, HD, {300, 41, 1}, rows), 1e-5)
        << "head_dim " << HD;
    // The same decode rows alone: one row a sequence, the row kernel.
    EXPECT_LT(
        paged_attention_error(cpu, gpu, rng, 8, 2, HD, {300, 41, 1}, {{0, 299}, {1, 40}, {2, 0}}),
        1e-5)
        << "head_dim " << HD << ", decode rows";
  }
}

// A prefill as the engine runs one: sequences from position 0 (100 rows: tiles of 32, 32, 32 and
// 4) and a later chunk (rows at positions 20..60 of a 61-position sequence), so rows of a tile
// stop at different keys, tiles span one and two key chunks, and one group of 8 heads shares a
// KV head.
TEST_F(CudaVsCpu, PagedAttentionPrefillTiles) {
  for (const int HD : {128, 64}) {
    std::vector<std::pair<int32_t, int32_t>> rows;
    for (int p2 = 0; p2 < 100; ++p2) rows.push_back({0, p2});
    for (int p2 = 20; p2 < 61; ++p2) rows.push_back({1, p2});
    EXPECT_LT(paged_attention_error(cpu, gpu, rng, 8, 1, HD, {100, 61}, rows), 1e-5)
        << "head_dim " << HD;
  }
}

TEST_F(CudaVsCpu, SequenceAttentionCausalAndBidirectional) {
  const int H = 4, HD = 32;
  std::vector<int32_t> seqs = {0, 64, 113};
  const int T = seqs.back();
  ie::AttentionParams p{H, H, HD, 1.0f / std::sqrt(float(HD))};
  auto q = randn(T * H * HD, rng), k = randn(T * H * HD, rng), v = randn(T * H * HD, rng);
  for (bool causal : {false, true}) {
    std::vector<float> out[2];
    int i = 0;
    for (Side* s : {&cpu, &gpu}) {
      auto tq = s->make(T, H * HD, q), tk = s->make(T, H * HD, k), tv = s->make(T, H * HD, v);
      auto to = s->make(T, H * HD);
      s->be->attention(tq, tk, tv, seqs, p, causal, to);
      out[i++] = s->get(to);
    }
    EXPECT_LT(rel_l2(out[1], out[0]), 1e-5) << "causal=" << causal;
  }
}

TEST_F(CudaVsCpu, SsmScanDirectAndChunked) {
  const int D = 96, N = 16, slots_n = 6;
  std::vector<int32_t> seqs = {0, 1, 38, 238, 239};  // 1, 37, 200 (chunked), 1 rows
  std::vector<int32_t> slot = {4, 0, 2, 5};
  const int T = seqs.back();
  auto x = randn(T * D, rng), dt = randn(T * D, rng, 0.5f), bc = randn(T * 2 * N, rng);
  auto dtb = randn(D, rng, 0.3f), dsk = randn(D, rng), st = randn(slots_n * D * N, rng, 0.1f);
  std::vector<float> a(D * N);
  for (auto& e : a) e = -std::exp(std::uniform_real_distribution<float>(-1.f, 1.5f)(rng));
  std::vector<float> y[2], states[2];
  int i = 0;
  for (Side* s : {&cpu, &gpu}) {
    auto tx = s->make(T, D, x), tdt = s->make(T, D, dt), tbc = s->make(T, 2 * N, bc);
    auto tdb = s->make(1, D, dtb), ta = s->make(D, N, a), tds = s->make(1, D, dsk);
    auto tst = s->make(slots_n, D * N, st), ty = s->make(T, D);
    s->be->ssm_scan(tx, tdt, tdb, ta, tbc.cols_view(0, N), tbc.cols_view(N, N), tds, seqs, slot,
                    tst, ty);
    y[i] = s->get(ty);
    states[i++] = s->get(tst);
  }
  EXPECT_LT(rel_l2(y[1], y[0]), 1e-4);
  EXPECT_LT(rel_l2(states[1], states[0]), 1e-4);
}

// Same logits on both sides: the device router must make the same decisions
// (ties aside), the same histogram, and the same drops / reroutes.
struct RouteCase {
  ie::GateFn gate;
  bool bias;
  int capacity;
  ie::OverflowPolicy overflow;
};

// T = 700 runs the two-kernel router, T = 60 the single-block decode router.
// T = 700: 1,400 assignments, the capacity step ranked by 2 blocks (rank_chunks).
TEST_F(CudaVsCpu, RouterMatchesIncludingCapacity) {
  for (int T : {700, 60}) {
    const int E = 32, K = 2;
    for (RouteCase rc :
         {RouteCase{ie::GateFn::kSoftmax, false, 0, ie::OverflowPolicy::kDrop},
          RouteCase{ie::GateFn::kSoftmax, true, 50, ie::OverflowPolicy::kDrop},
          RouteCase{ie::GateFn::kSigmoid, true, 50, ie::OverflowPolicy::kReroute},
          RouteCase{ie::GateFn::kSoftmax, false, 44, ie::OverflowPolicy::kReroute}}) {
      auto logits = randn(T * E, rng, 2.0f);
      for (int t = 0; t < T; ++t) logits[t * E + 3] += 2.0f;  // a hot expert so capacity binds
      auto bias = randn(E, rng, 0.05f);
      ie::RouteParams p;
      p.top_k = K;
      p.gate = rc.gate;
      p.capacity = (T == 700 || rc.capacity == 0) ? rc.capacity : rc.capacity * 60 / 700 + 1;
      p.overflow = rc.overflow;
      p.scaling = 1.5f;
      std::vector<int32_t> ae[2];
      std::vector<float> aw[2];
      ie::RouteCounts counts[2];
      int i = 0;
      for (Side* s : {&cpu, &gpu}) {
        auto tl = s->make(T, E, logits);
        ie::Tensor tb = rc.bias ? s->make(1, E, bias) : ie::Tensor{};
        auto te = s->make_i32(T, K), tw = s->make(T, K);
        s->be->moe_route(tl, tb, p, te, tw, counts[i]);
        ae[i] = s->get_i(te);
        aw[i++] = s->get(tw);
      }
      EXPECT_EQ(ae[1], ae[0]);
      EXPECT_LT(rel_l2(aw[1], aw[0]), 1e-5);
      EXPECT_EQ(counts[1].routed, counts[0].routed);
      EXPECT_EQ(counts[1].kept, counts[0].kept);
      EXPECT_EQ(counts[1].dropped, counts[0].dropped);
      EXPECT_EQ(counts[1].rerouted, counts[0].rerouted);
      if (rc.capacity > 0) {
        EXPECT_GT(counts[0].dropped + counts[0].rerouted, 0u) << "capacity binds";
      }
    }
  }
}

// D = 64: the index kernel also gathers the rows; D = 512: a separate gather. T = 1100: 2,200
// assignments, ranked by 3 blocks (rank_chunks), gathered a block per row.
TEST_F(CudaVsCpu, PermuteAndUnpermuteExact) {
  for (auto [D, T] : {std::pair{64, 257}, std::pair{512, 257}, std::pair{512, 1100}}) {
    const int E = 8, K = 2;
    std::vector<int32_t> ae(T * K);
    std::uniform_int_distribution<int> pick(-1, E - 1);  // -1: dropped
    for (auto& e : ae) e = pick(rng);
    std::vector<int32_t> offsets(E + 1, 0);
    for (int e : ae)
      if (e >= 0) offsets[e + 1]++;
    for (int e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
    const int A = offsets.back();
    auto x = randn(T * D, rng), w = randn(T * K, rng), yp = randn(A * D, rng),
         y0 = randn(T * D, rng);
    std::vector<float> xp[2], y[2], y2[2];
    std::vector<int32_t> perm[2];
    int i = 0;
    for (Side* s : {&cpu, &gpu}) {
      auto tx = s->make(T, D, x), te = s->make_i32(T, K, ae), txp = s->make(A, D);
      auto tperm = s->make_i32(A, 1);
      s->be->moe_permute(tx, te, offsets, txp, tperm);
      auto tyrows = s->make(A, D, yp), tw = s->make(T, K, w), ty = s->make(T, D, y0);
      s->be->moe_unpermute(tyrows, tperm, tw, K, A, ty);
      // the same through a perm that moe_permute did not write (no cached slots)
      auto tperm2 = s->make_i32(A, 1), ty2 = s->make(T, D, y0);
      s->be->copy(tperm, tperm2);
      s->be->moe_unpermute(tyrows, tperm2, tw, K, A, ty2);
      xp[i] = s->get(txp);
      perm[i] = s->get_i(tperm);
      y[i] = s->get(ty);
      y2[i++] = s->get(ty2);
    }
    EXPECT_EQ(perm[1], perm[0]);
    EXPECT_EQ(xp[1], xp[0]);
    EXPECT_LT(rel_l2(y[1], y[0]), kF32Tol);
    EXPECT_EQ(y2[1], y[1]);
  }
}

TEST_F(CudaVsCpu, PatchifyAndMeanPool) {
  const int Hh = 32, W = 48, C = 3, P = 8;
  auto img = randn(Hh * W * C, rng);
  const int patches = (Hh / P) * (W / P);
  std::vector<float> pt[2], pooled[2];
  int i = 0;
  for (Side* s : {&cpu, &gpu}) {
    auto ti = s->make(Hh, W * C, img), tp = s->make(patches, P * P * C);
    s->be->patchify(ti, Hh, W, C, P, tp);
    auto to = s->make(patches / 4, P * P * C);
    s->be->mean_pool_rows(tp, 4, to);
    pt[i] = s->get(tp);
    pooled[i++] = s->get(to);
  }
  EXPECT_EQ(pt[1], pt[0]);
  EXPECT_LT(rel_l2(pooled[1], pooled[0]), kF32Tol);
}

}  // namespace
