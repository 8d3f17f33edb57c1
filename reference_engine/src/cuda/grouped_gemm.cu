// Grouped expert GEMM with bf16 tensor cores (wmma, fp32 accumulate).
//
// Why not cuBLAS here: cuBLAS' grouped/batched calls take the per-expert row
// counts on the host, which would cost a device->host copy and a sync per MoE
// layer and rule out CUDA-graph capture of a decode step; padding every expert
// to its capacity instead would read all experts' weights even at batch 1. This
// kernel reads the counts (offsets) on the device and only touches the weights
// of experts that received tokens. Dense GEMMs do go through cuBLAS (blas.cpp).
//
// Tiles of 128 rows x 128 columns x 32 K, 8 warps (2 x 4, each 64 x 32 of the
// tile: 4 x 2 wmma accumulators), operands brought in by cp.async into a
// 3-stage shared-memory ring, so the loads of K step t+2 are in flight while
// step t runs on the tensor cores (the previous 32 x 64 kernel loaded, waited
// and computed in turn, and its small tiles re-read each weight tile for every
// 32 rows). Rows past an expert's count and K past k are zero-filled by
// cp.async's source size, so no tile needs a guard in the MMA loop.
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>

#include "check.hpp"
#include "kernels.hpp"

namespace inferscope::engine::cuda {
namespace {

using namespace nvcuda;

constexpr int BM = 128, BN = 128, BK = 32, kStages = 3, kThreads = 256;
constexpr int LDS = BK + 8;  // bf16 row pitch of a stage (80 bytes: ldmatrix rows spread banks)
constexpr int kStageElems = (BM + BN) * LDS;
constexpr int kSmemBytes = kStages * kStageElems * 2;  // 61440: above 48 KiB, opted in
constexpr int kScratch = 16 * 16;                      // floats per warp for the epilogue

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__global__ void __launch_bounds__(kThreads)
    grouped_gemm_k(const __nv_bfloat16* __restrict__ xp, const __nv_bfloat16* __restrict__ w,
                   const int32_t* __restrict__ offsets, float* __restrict__ y, int64_t ldy, int n,
                   int k) {
  const int e = blockIdx.z;
  const int row_begin = offsets[e];
  const int rows = offsets[e + 1] - row_begin;
  const int r0 = blockIdx.y * BM;
  if (r0 >= rows) return;  // most blocks of empty experts end here
  const int c0 = blockIdx.x * BN;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);

  const __nv_bfloat16* we = w + (int64_t)e * n * k;
  const __nv_bfloat16* xe = xp + (int64_t)(row_begin + r0) * k;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows wm*64.., columns wn*32..

  // Each thread moves 2 A and 2 B 16-byte vectors per stage (128 rows x 4 vectors each).
  auto load_stage = [&](int stage, int k0) {
    __nv_bfloat16* As = smem + stage * kStageElems;
    __nv_bfloat16* Bs = As + BM * LDS;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx >> 2, c = (idx & 3) * 8;
      const bool kin = k0 + c < k;
      const bool a_ok = r0 + r < rows && kin;
      cp_async16(&As[r * LDS + c], a_ok ? xe + (int64_t)r * k + k0 + c : xe, a_ok);
      const bool b_ok = c0 + r < n && kin;
      cp_async16(&Bs[r * LDS + c], b_ok ? we + (int64_t)(c0 + r) * k + k0 + c : we, b_ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int ktiles = (k + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s * BK);
    cp_async_commit();  // (an empty group past the end keeps the wait count uniform)
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();  // stage kt has landed (for this thread's copies)
    __syncthreads();               // ... and everyone's; the stage about to be refilled is free
    const int next = kt + kStages - 1;
    if (next < ktiles) load_stage(next % kStages, next * BK);
    cp_async_commit();
    const __nv_bfloat16* As = smem + (kt % kStages) * kStageElems;
    const __nv_bfloat16* Bs = As + BM * LDS;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(b[j], &Bs[(wn * 32 + j * 16) * LDS + kk], LDS);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::load_matrix_sync(a, &As[(wm * 64 + i * 16) * LDS + kk], LDS);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the ring is reused as the epilogue's scratch

  // Epilogue: each accumulator through a per-warp 16 x 16 scratch, written with bounds.
  float* scratch = reinterpret_cast<float*>(smem_raw) + warp * kScratch;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int rb = r0 + wm * 64 + i * 16, cb = c0 + wn * 32 + j * 16;
#pragma unroll
      for (int q = 0; q < 8; ++q) {  // 256 values, 8 per lane: lanes 0..15 one row's columns
        const int idx = q * 32 + lane, rr = idx >> 4, cc = idx & 15;
        if (rb + rr < rows && cb + cc < n)
          y[(int64_t)(row_begin + rb + rr) * ldy + cb + cc] = scratch[rr * 16 + cc];
      }
      __syncwarp();
    }
}

void check_shapes(int experts, int n, int k, int max_rows) {
  if (experts <= 0 || experts > 65535 || n <= 0 || k <= 0 || max_rows < 0)
    throw std::invalid_argument("grouped_gemm: bad shape");
  if (k % 8 != 0) throw std::invalid_argument("grouped_gemm: K must be a multiple of 8");
}

}  // namespace

void grouped_gemm(const __nv_bfloat16* x, const __nv_bfloat16* w, const int32_t* offsets, float* y,
                  int64_t ldy, int experts, int n, int k, int max_rows_per_expert, cudaStream_t s) {
  check_shapes(experts, n, k, max_rows_per_expert);
  if (max_rows_per_expert == 0) return;
  // > 48 KiB of dynamic shared memory is opted into once per device (ranks as threads of one
  // process use several).
  static std::atomic<uint64_t> opted_in{0};
  int dev = 0;
  ISC_CUDA(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(opted_in.load(std::memory_order_relaxed) & bit)) {
    ISC_CUDA(cudaFuncSetAttribute(grouped_gemm_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kSmemBytes));
    opted_in.fetch_or(bit, std::memory_order_relaxed);
  }
  dim3 grid((n + BN - 1) / BN, (max_rows_per_expert + BM - 1) / BM, experts);
  grouped_gemm_k<<<grid, kThreads, kSmemBytes, s>>>(x, w, offsets, y, ldy, n, k);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
