// The linear kernels against the CPU backend: the decode linear (small_linear.cu:
// <= 64 rows, dense and grouped by expert) on the shapes its tiling makes
// special: every row count 1..9 (rows per pass 1/2/4/8 and their ragged ends),
// K not a multiple of a warp's 256 elements, K split over warps, K long enough
// to be staged in several shared-memory chunks, column counts that end
// mid-block, unaligned (strided) x, beta != 0, empty experts with host and with
// device offsets, and rows past the kept total that must stay untouched; and the
// prefill expert GEMM (grouped_gemm.cu, > 64 rows per expert) on partial row,
// column and K tiles; and the fused decode ops built on the decode linear
// (Backend "fused ops": rms_norm_linear, gate_up_swiglu and its grouped form)
// against the CPU backend's compositions, in and past the rows they fuse.
//
// The weights are bf16 values held in fp32, so the CUDA backend's bf16 operand
// is exact and both sides multiply the same numbers: only the summation order
// differs. That allows a tolerance of 1e-5 instead of the bf16 GEMM one: an x
// rounded to bf16 in the decode kernel (~3e-3) or a wrong element would fail it.
// The prefill GEMM casts x to bf16 (tensor cores): there x is bf16-exact too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "gpu_test_util.hpp"
#include "inferscope/engine/backend.hpp"

namespace ie = inferscope::engine;
using inferscope::engine::gpu_test::randn;
using inferscope::engine::gpu_test::randn_bf16;
using inferscope::engine::gpu_test::rel_l2;
using Side = inferscope::engine::gpu_test::BackendSide;

namespace {

constexpr double kTol = inferscope::engine::gpu_test::kExactWeightsTol;
using inferscope::engine::gpu_test::kSentinel;

// Rows per expert of the grouped tests (12 experts): decode (one row each), every rows-per-pass
// and ragged ends, nothing routed, every expert active; the row bound the engine passes lies
// kBoundExtra rows past the kept total.
constexpr int kGroupExperts = 12, kBoundExtra = 5;
const std::vector<std::vector<int32_t>> kGroupCounts = {{0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0},
                                                        {0, 2, 9, 0, 3, 0, 1, 8, 5, 0, 4, 0},
                                                        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
                                                        {6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 9}};
// A count set's offsets (exclusive prefix sums), its largest expert, its kept total and the bound.
struct Groups {
  explicit Groups(const std::vector<int32_t>& counts) : offsets(counts.size() + 1, 0) {
    for (size_t e = 0; e < counts.size(); ++e) {
      offsets[e + 1] = offsets[e] + counts[e];
      max_rows = std::max(max_rows, counts[e]);
    }
    kept = offsets.back();
    rows = kept + kBoundExtra;
  }
  std::vector<int32_t> offsets;
  int32_t max_rows = 0;
  int kept = 0, rows = 0;
};

class LinearKernels : public inferscope::engine::gpu_test::CudaVsCpuTest {
 protected:
  LinearKernels() : CudaVsCpuTest(4321) {}
};

// Dense y = beta*y + x W^T for M = 1..9 and 64 rows, aligned and unaligned x.
TEST_F(LinearKernels, DenseRowsKAndBetaMatchCpu) {
  const int N = 1003;  // not a multiple of a block's columns
  // K 392: whole-K warps; 768: K split over 2 warps at few rows; 2056: over 4 (in-block split-K
  // when the columns alone would not give 2 blocks per SM).
  for (int K : {392, 768, 2056}) {
    const auto w = randn_bf16(size_t(N) * K, rng, 0.05f);
    for (int M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 64}) {
      for (int x_off : {8, 3}) {  // 8: 16-byte aligned rows (float4 staging); 3: scalar staging
        const float beta = (M + x_off) % 2 ? 0.5f : 0.f;
        const auto x = randn(size_t(M) * (K + 16), rng), y0 = randn(size_t(M) * N, rng);
        std::vector<float> out[2];
        int i = 0;
        for (Side* s : {&cpu, &gpu}) {
          auto tx = s->make(M, K + 16, x).cols_view(x_off, K);
          auto tw = s->make(N, K, w);
          auto ty = s->make(M, N, y0);
          s->be->linear(tx, tw, ty, beta);
          out[i++] = s->get(ty);
        }
        EXPECT_LT(rel_l2(out[1], out[0]), kTol)
            << "M=" << M << " K=" << K << " x_off=" << x_off << " beta=" << beta;
      }
    }
  }
}

// K longer than one shared-memory chunk at every rows-per-pass (8 rows: 1536, 1 row: 12288).
TEST_F(LinearKernels, LongKInSeveralChunksMatchesCpu) {
  const int N = 40, K = 12304;
  const auto w = randn_bf16(size_t(N) * K, rng, 0.02f);
  for (int M : {1, 2, 4, 8}) {
    const auto x = randn(size_t(M) * K, rng);
    std::vector<float> out[2];
    int i = 0;
    for (Side* s : {&cpu, &gpu}) {
      auto tx = s->make(M, K, x), tw = s->make(N, K, w), ty = s->make(M, N);
      s->be->linear(tx, tw, ty, 0.f);
      out[i++] = s->get(ty);
    }
    EXPECT_LT(rel_l2(out[1], out[0]), kTol) << "M=" << M;
  }
}

// Grouped by expert, host and device offsets: 1..9 rows per expert, empty experts (first and
// last among them), a row bound past the kept total whose rows must stay as they were.
TEST_F(LinearKernels, GroupedEmptyExpertsAndBoundRows) {
  for (const auto& [N, K] : {std::pair{515, 392}, std::pair{72, 1032}}) {  // 72 x 1032: split K
    const int E = kGroupExperts;
    const auto w = randn_bf16(size_t(E) * N * K, rng, 0.05f);
    for (size_t set = 0; set < kGroupCounts.size(); ++set) {
      const Groups g(kGroupCounts[set]);
      const std::vector<int32_t>& offsets = g.offsets;
      const int32_t max_rows = g.max_rows;
      const int A = g.kept, rows = g.rows;
      const auto x = randn(size_t(rows) * K, rng);
      const std::vector<float> y0(size_t(rows) * N, kSentinel);
      for (bool device : {false, true}) {
        std::vector<float> out[2];
        int i = 0;
        for (Side* s : {&cpu, &gpu}) {
          auto tw = s->make(int64_t(E) * N, K, w), ty = s->make(rows, N, y0);
          if (device) {
            auto tx = s->make(rows, K, x);
            ie::Tensor to = s->make_i32(1, E + 1);
            s->be->upload(to, offsets.data());
            // The bound (rows) is what the engine passes; max_rows a loose bound (the worst case).
            s->be->grouped_linear(tx, tw, to, std::max(max_rows, 9), ty);
          } else {
            if (A == 0) continue;  // host offsets with no rows: nothing to call
            auto tx = s->make(A, K, std::vector<float>(x.begin(), x.begin() + size_t(A) * K));
            s->be->grouped_linear(tx, tw, offsets, ty.rows_view(0, A));
          }
          out[i++] = s->get(ty);
        }
        if (i < 2) continue;
        std::vector<float> kept[2], past[2];
        for (int j = 0; j < 2; ++j) {
          kept[j].assign(out[j].begin(), out[j].begin() + size_t(A) * N);
          past[j].assign(out[j].begin() + size_t(A) * N, out[j].end());
        }
        if (A > 0) {
          EXPECT_LT(rel_l2(kept[1], kept[0]), kTol)
              << "N=" << N << " set " << set << " dev " << device;
        }
        for (float v : past[1]) ASSERT_EQ(v, kSentinel) << "set " << set << ": row past A written";
      }
    }
  }
}

// Prefill-sized experts: grouped_gemm (128 x 128 tiles, 3-stage cp.async ring) on rows that end
// mid-tile (65, 128, 129, 300), an empty expert between them, N = 200 (a partial column tile),
// K = 392 (a partial 32-wide K step); and groups of >= 256 rows an active expert on average,
// which the host-offsets path sends to one cuBLAS GEMM per expert (the device path keeps
// grouped_gemm).
TEST_F(LinearKernels, GroupedGemmPartialTilesMatchCpu) {
  const int N = 200, K = 392;
  for (const std::vector<int32_t>& counts :
       {std::vector<int32_t>{65, 0, 128, 129, 300, 1}, std::vector<int32_t>{300, 0, 260, 512}}) {
    const int E = static_cast<int>(counts.size());
    std::vector<int32_t> offsets(E + 1, 0);
    for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
    const int A = offsets.back();
    const auto w = randn_bf16(size_t(E) * N * K, rng, 0.05f);
    const auto x = randn_bf16(size_t(A) * K, rng, 1.0f);
    for (bool device : {false, true}) {
      std::vector<float> out[2];
      int i = 0;
      for (Side* s : {&cpu, &gpu}) {
        auto tx = s->make(A, K, x), tw = s->make(int64_t(E) * N, K, w), ty = s->make(A, N);
        if (device) {
          ie::Tensor to = s->make_i32(1, E + 1);
          s->be->upload(to, offsets.data());
          s->be->grouped_linear(tx, tw, to, 512, ty);
        } else {
          s->be->grouped_linear(tx, tw, offsets, ty);
        }
        out[i++] = s->get(ty);
      }
      // Tensor-core fp32 accumulation of exact bf16 products: a few ulps per sum.
      EXPECT_LT(rel_l2(out[1], out[0]), 1e-4) << "A=" << A << " device offsets " << device;
    }
  }
}

// h = rms_norm(x) and y = h W^T in one op: y and h both match the composition.
TEST_F(LinearKernels, RmsNormLinearMatchesCpu) {
  // N 1003: ends mid-block; 64: a router (K split over 4 warps); K 392: a ragged warp step.
  for (const auto& [N, K] : {std::pair{1003, 2048}, std::pair{64, 2048}, std::pair{515, 392}}) {
    const auto w = randn_bf16(size_t(N) * K, rng, 0.05f);
    const auto g = randn(size_t(K), rng);
    for (int M : {1, 2, 3, 8}) {  // 1-2: one launch; beyond: the composition
      for (int x_off : {8, 3}) {  // 8: float4 loads; 3: scalar loads
        const auto x = randn(size_t(M) * (K + 16), rng, 3.0f);
        std::vector<float> y[2], h[2];
        int i = 0;
        for (Side* s : {&cpu, &gpu}) {
          auto tx = s->make(M, K + 16, x).cols_view(x_off, K);
          auto tg = s->make(1, K, g), tw = s->make(N, K, w);
          auto ty = s->make(M, N), th = s->make(M, K);
          s->be->rms_norm_linear(tx, tg, 1e-6f, tw, ty, th);
          y[i] = s->get(ty);
          h[i++] = s->get(th);
        }
        EXPECT_LT(rel_l2(y[1], y[0]), kTol) << "N=" << N << " K=" << K << " M=" << M;
        EXPECT_LT(rel_l2(h[1], h[0]), kTol) << "h: N=" << N << " K=" << K << " M=" << M;
      }
    }
  }
}

// act = up * silu(gate) of a fused gate|up projection, dense, 1..64 rows: one launch (gate and
// up columns of one output in one warp; 1-2 rows few_rows_k, more the shared-memory kernel).
// (Past 64 rows the composition runs cuBLAS on a bf16 x: the GEMM tolerance, not this test's.)
TEST_F(LinearKernels, GateUpSwigluDenseMatchesCpu) {
  for (const auto& [F, K] : {std::pair{1024, 2048}, std::pair{36, 1032}, std::pair{515, 392}}) {
    const auto w = randn_bf16(size_t(2 * F) * K, rng, 0.05f);
    for (int M : {1, 2, 3, 5, 8, 64}) {
      const auto x = randn(size_t(M) * K, rng);
      std::vector<float> out[2];
      int i = 0;
      for (Side* s : {&cpu, &gpu}) {
        auto tx = s->make(M, K, x), tw = s->make(2 * F, K, w);
        auto tgu = s->make(M, 2 * F), tact = s->make(M, F);
        s->be->gate_up_swiglu(tx, tw, tgu, tact);
        out[i++] = s->get(tact);
      }
      EXPECT_LT(rel_l2(out[1], out[0]), kTol) << "F=" << F << " K=" << K << " M=" << M;
    }
  }
}

// The same per expert with device offsets: decode (one row an expert), mixed counts, nothing
// routed, every expert busy; act rows past the kept total stay as they were on the fused path.
TEST_F(LinearKernels, GroupedGateUpSwigluMatchesCpu) {
  for (const auto& [F, K] : {std::pair{515, 392}, std::pair{36, 1032}}) {
    const int E = kGroupExperts;
    const auto w = randn_bf16(size_t(E) * 2 * F * K, rng, 0.05f);
    for (size_t set = 0; set < kGroupCounts.size(); ++set) {
      const Groups g(kGroupCounts[set]);
      const int A = g.kept;
      const auto x = randn(size_t(g.rows) * K, rng);
      std::vector<float> out[2];
      int i = 0;
      for (Side* s : {&cpu, &gpu}) {
        auto tx = s->make(g.rows, K, x), tw = s->make(int64_t(E) * 2 * F, K, w);
        auto tgu = s->make(g.rows, 2 * F);
        auto tact = s->make(g.rows, F, std::vector<float>(size_t(g.rows) * F, kSentinel));
        ie::Tensor to = s->make_i32(1, E + 1, g.offsets);
        s->be->grouped_gate_up_swiglu(tx, tw, to, std::max(g.max_rows, 9), tgu, tact);
        out[i++] = s->get(tact);
      }
      if (A > 0) {
        const std::vector<float> kept_cpu(out[0].begin(), out[0].begin() + size_t(A) * F);
        const std::vector<float> kept_gpu(out[1].begin(), out[1].begin() + size_t(A) * F);
        EXPECT_LT(rel_l2(kept_gpu, kept_cpu), kTol) << "F=" << F << " set " << set;
      }
      for (size_t j = size_t(A) * F; j < out[1].size(); ++j)
        ASSERT_EQ(out[1][j], kSentinel) << "F=" << F << " set " << set << ": row past A written";
    }
  }
}

}  // namespace
