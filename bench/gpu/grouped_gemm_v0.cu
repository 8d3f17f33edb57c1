// The prefill expert GEMM as it was at c49da41 (32x64x32 wmma tiles, no
// pipelining), kept ONLY so that linear_bw_bench can show old vs new TFLOP/s in
// one binary. Not used by the engine.
#include <mma.h>

#include <stdexcept>

#include "check.hpp"
#include "small_linear_v0.hpp"

namespace inferscope::bench {
namespace {

using namespace nvcuda;
constexpr int BM = 32, BN = 64, BK = 32, LDS = BK + 8, LDC = BN + 4;

__global__ void __launch_bounds__(128)
    grouped_gemm_k(const __nv_bfloat16* __restrict__ xp, const __nv_bfloat16* __restrict__ w,
                   const int32_t* __restrict__ offsets, float* __restrict__ y, int64_t ldy, int n,
                   int k) {
  const int e = blockIdx.z;
  const int row_begin = offsets[e];
  const int rows = offsets[e + 1] - row_begin;
  const int r0 = blockIdx.y * BM;
  if (r0 >= rows) return;  // most blocks of empty experts end here
  const int c0 = blockIdx.x * BN;

  __shared__ __align__(128) __nv_bfloat16 As[BM * LDS];
  __shared__ __align__(128) __nv_bfloat16 Bs[BN * LDS];
  __shared__ __align__(128) float Cs[BM * LDC];

  const __nv_bfloat16* we = w + (int64_t)e * n * k;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.f);
  wmma::fill_fragment(acc[1], 0.f);

  for (int k0 = 0; k0 < k; k0 += BK) {
    {  // A: 32 rows x 32 cols, one 16-byte vector per thread
      int r = tid >> 2, c = (tid & 3) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r0 + r < rows && k0 + c < k)
        v = *reinterpret_cast<const uint4*>(xp + (int64_t)(row_begin + r0 + r) * k + k0 + c);
      *reinterpret_cast<uint4*>(&As[r * LDS + c]) = v;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // B: 64 weight rows x 32 cols
      int idx = tid + i * 128;
      int r = idx >> 2, c = (idx & 3) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (c0 + r < n && k0 + c < k)
        v = *reinterpret_cast<const uint4*>(we + (int64_t)(c0 + r) * k + k0 + c);
      *reinterpret_cast<uint4*>(&Bs[r * LDS + c]) = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::load_matrix_sync(a, &As[wm * 16 * LDS + kk], LDS);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, &Bs[(wn * 32 + f * 16) * LDS + kk], LDS);
        wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < 2; ++f)
    wmma::store_matrix_sync(&Cs[wm * 16 * LDC + wn * 32 + f * 16], acc[f], LDC,
                            wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < BM * BN; i += 128) {
    int r = i / BN, c = i % BN;
    if (r0 + r >= rows || c0 + c >= n) continue;
    y[(int64_t)(row_begin + r0 + r) * ldy + c0 + c] = Cs[r * LDC + c];
  }
}

void check_shapes(int experts, int n, int k, int max_rows) {
  if (experts <= 0 || experts > 65535 || n <= 0 || k <= 0 || max_rows < 0)
    throw std::invalid_argument("grouped_gemm_v0: bad shape");
  if (k % 8 != 0) throw std::invalid_argument("grouped_gemm_v0: K must be a multiple of 8");
}

}  // namespace

void grouped_gemm_v0(const __nv_bfloat16* x, const __nv_bfloat16* w, const int32_t* offsets,
                     float* y, int64_t ldy, int experts, int n, int k, int max_rows_per_expert,
                     cudaStream_t s) {
  check_shapes(experts, n, k, max_rows_per_expert);
  if (max_rows_per_expert == 0) return;
  dim3 grid((n + BN - 1) / BN, (max_rows_per_expert + BM - 1) / BM, experts);
  grouped_gemm_k<<<grid, 128, 0, s>>>(x, w, offsets, y, ldy, n, k);
  ISC_LAUNCH();
}

}  // namespace inferscope::bench
