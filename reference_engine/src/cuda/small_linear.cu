// Linear layers for few rows (decode): y = beta * y + x · W^T, fp32 x, bf16
// weights, fp32 accumulate. A decode step is bound by reading the weights once,
// so the kernels are written for HBM bandwidth (issue 18 part 5):
//  - a warp owns C adjacent output columns and keeps C x U 16-byte weight loads
//    in flight per lane;
//  - 1-2 rows (few_rows_k: B=1 and B=2 decode, an expert's row at B<=8): x is
//    read straight from global memory (L1-cached: every warp of an SM reads the
//    same row) into registers, and the weights are prefetched in a rolling
//    window: the load of the next batch's slot u is issued as soon as slot u
//    has been multiplied, so C x U loads stay in flight for the whole K walk and
//    no barrier stands before the first FMA (x staged through shared memory by
//    cp.async + wait + __syncthreads made the dense 1-row case 2.4x slower on
//    the H100, 10:49 run: 4.57 -> 10.90 us for 2048x2048);
//  - 4-8 rows (small_linear_k): the block's x rows are staged once in shared
//    memory as fp32 (exact: the same products as the CPU oracle, only the
//    summation order differs), in K chunks that fit the default 48 KiB, and
//    every x value read from shared memory is reused for the warp's C columns
//    (at 8 rows x fp32 the x reads would otherwise outrun the weight bytes);
//  - weights are read with the streaming hint (read once per step, they should
//    not evict the activations from L2);
//  - grouped by expert, block row j serves the j-th expert that has rows (found
//    on the device from offsets): an 8-of-64 decode launches 8 block rows, not
//    64, and an empty expert reads none of its weights. No host sync, graph
//    capturable;
//  - two ops can ride along (kernels.hpp Fusion), each saving a launch of a
//    decode step: the RMSNorm before a layer (every block recomputes its rows'
//    sum of squares, then scales x as it loads it) and the SwiGLU after a
//    gate|up projection (a warp's columns pair gate and up rows of the same
//    outputs, so the activation is computed once, in the store).
// Small blocks (4 warps) so that 2048 columns already spread over 128+ SMs.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <type_traits>

#include "check.hpp"
#include "env_switch.hpp"
#include "kernels.hpp"
#include "pdl.cuh"

namespace inferscope::engine::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Dynamic shared memory for x: the default 48 KiB limit counts static shared memory too (the
// split-K partials, the block's expert), so 2 KiB stay free for it: no opt-in call needed.
constexpr int kSmemBytes = 46 * 1024;
constexpr int kWarpK = 32 * 8;  // elements of K one warp-wide 16-byte load covers

// Index of the j-th set bit of b (j < popc(b)).
__device__ __forceinline__ int nth_set_bit(unsigned b, int j) {
  for (int i = 0; i < j; ++i) b &= b - 1;
  return __ffs(b) - 1;
}

// The j-th expert with rows (offsets[e+1] > offsets[e]), or -1; run by one whole warp.
__device__ int active_expert(const int32_t* offsets, int experts, int j) {
  const int lane = threadIdx.x & 31;
  for (int base = 0; base < experts; base += 32) {
    const int e = base + lane;
    const bool has_rows = e < experts && offsets[e + 1] > offsets[e];
    const unsigned b = __ballot_sync(0xffffffffu, has_rows);
    const int c = __popc(b);
    if (j < c) return base + nth_set_bit(b, j);
    j -= c;
  }
  return -1;
}

__device__ __forceinline__ void bf16x8_to_float(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 v = __bfloat1622float2(h[j]);
    f[2 * j] = v.x;
    f[2 * j + 1] = v.y;
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// acc[r][c] += x[r][0..8) . the 8 weights of slot u of column c, for every row and column.
template <int R, int C, int U>
__device__ __forceinline__ void fma_slot(const float (&xv)[R][8], const uint4 (&wv)[C][U], int u,
                                         float (&acc)[R][C]) {
#pragma unroll
  for (int c = 0; c < C; ++c) {
    float wf[8];
    bf16x8_to_float(wv[c][u], wf);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[r][c] = fmaf(xv[r][j], wf[j], acc[r][c]);
  }
}

// C x U weight vectors of this lane from K offset c0 + kk, u steps STEP apart; past len zeros.
template <int C, int U, int STEP>
__device__ __forceinline__ void load_weights(const __nv_bfloat16* const (&wc)[C], int c0, int kk,
                                             int len, uint4 (&wv)[C][U]) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int c = 0; c < C; ++c)
      wv[c][u] = kk + u * STEP < len
                     ? __ldcs(reinterpret_cast<const uint4*>(wc[c] + c0 + kk + u * STEP))
                     : make_uint4(0, 0, 0, 0);
}

// The expert block row blockIdx.y serves (grouped calls): the blockIdx.y-th expert with rows, or
// -1 when there are fewer (uniform over the block). `shared`: a __shared__ int of the block.
__device__ __forceinline__ int block_expert_of(const int32_t* offsets, int experts, int* shared) {
  if (threadIdx.x < 32) {
    const int found = active_expert(offsets, experts, static_cast<int>(blockIdx.y));
    if (threadIdx.x == 0) *shared = found;
  }
  __syncthreads();
  return *shared;
}

// Output columns a warp writes: its C, or with kSwigluOut C / 2 SwiGLU pairs (its accumulator
// columns are then the gate rows n0 .. n0 + C/2 and the up rows n_out + n0 .. of a [2 n_out, k]
// weight, so each output element's gate and up sums meet in one warp).
template <int C, Fused M>
constexpr int out_cols() {
  return M == Fused::kSwigluOut ? C / 2 : C;
}

// Weight row (within an expert) of accumulator column c of the warp whose output columns start at
// n0. Columns past n_out load a valid row (the last) and store nothing: no branch in the loads.
template <int C, Fused M>
__device__ __forceinline__ int64_t weight_row(int n0, int c, int n_out) {
  if constexpr (M == Fused::kSwigluOut) {
    constexpr int P = C / 2;
    return c < P ? min(n0 + c, n_out - 1) : n_out + min(n0 + c - P, n_out - 1);
  } else {
    return min(n0 + c, n_out - 1);
  }
}

// A grouped call's block: its expert's rows [r0, r1) and the warp's weight rows of that expert
// (with kSwigluOut an expert has 2 n_out rows); false when the block row has no expert (uniform
// over the block, which then returns). Called by every thread (it synchronises the block).
template <int C, Fused M>
__device__ __forceinline__ bool expert_rows_and_weights(const __nv_bfloat16* w,
                                                        const int32_t* offsets, int experts, int n0,
                                                        int n_out, int k, int* shared, int& r0,
                                                        int& r1, const __nv_bfloat16* (&wc)[C]) {
  const int e = block_expert_of(offsets, experts, shared);
  if (e < 0) return false;
  r0 = offsets[e];
  r1 = offsets[e + 1];
  const int64_t expert_rows = M == Fused::kSwigluOut ? 2 * int64_t(n_out) : n_out;
#pragma unroll
  for (int c = 0; c < C; ++c)
    wc[c] = w + ((int64_t)e * expert_rows + weight_row<C, M>(n0, c, n_out)) * k;
  return true;
}

// Output column j of a row from its accumulator sums v: the sum itself, or (kSwigluOut) mul_silu's
// up * silu(gate), the formula of the launch the fusion replaces.
template <int C, Fused M>
__device__ __forceinline__ float out_value(const float (&v)[C], int j) {
  if constexpr (M == Fused::kSwigluOut) {
    const float g = v[j];
    return v[C / 2 + j] * (g / (1.f + expf(-g)));
  } else {
    return v[j];
  }
}

// Sums each (row, column) accumulator over the warp's lanes and writes y = v + beta * y for rows
// < rows and output columns < n_out (beta 0 never reads y: it may be garbage). With KS > 1 the KS
// warps that split a column group's K meet in `part` (kWarps * R * C floats of shared memory) and
// are added in warp order: no atomics, so beta and the summation order stay deterministic. Called
// by every thread of the block (KS > 1 synchronises it).
template <int R, int C, int KS, Fused M>
__device__ __forceinline__ void store_sums(float (&acc)[R][C], float* part, int rows, int m0,
                                           int n0, View y, int n_out, float beta) {
  constexpr int CO = out_cols<C, M>();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < C; ++c) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], o);
    }
  if (KS == 1) {
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int j = 0; j < CO; ++j)
        if (r < rows && n0 + j < n_out) {
          const float v = out_value<C, M>(acc[r], j);
          float* out = y.p + (int64_t)(m0 + r) * y.stride + n0 + j;
          *out = beta == 0.f ? v : v + beta * *out;
        }
    return;
  }
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < C; ++c) part[(warp * R + r) * C + c] = acc[r][c];
  __syncthreads();
  for (int i = threadIdx.x; i < (kWarps / KS) * R * CO; i += kThreads) {
    const int g = i / (R * CO), r = i / CO % R, j = i % CO;
    const int n = (blockIdx.x * (kWarps / KS) + g) * CO + j;
    if (r >= rows || n >= n_out) continue;
    float v[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      v[c] = 0.f;
#pragma unroll
      for (int q = 0; q < KS; ++q) v[c] += part[((g * KS + q) * R + r) * C + c];
    }
    const float o = out_value<C, M>(v, j);
    float* out = y.p + (int64_t)(m0 + r) * y.stride + n;
    *out = beta == 0.f ? o : o + beta * *out;
  }
  __syncthreads();  // part is written again by the next pass
}

// 8 floats at p (16-byte aligned when vec): plain loads, L1-cached and coherent after the PDL
// wait (which a non-coherent __ldg would not promise).
__device__ __forceinline__ void load8(const float* p, bool vec, float (&v)[8]) {
  if (vec) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = p[j];
  }
}

// Elements [off, off + 8) of the x the kernel multiplies, for the pass's R rows (kRmsNormIn:
// rms_norm's formula, so the fused op multiplies the numbers the two launches did).
template <Fused M, int R>
__device__ __forceinline__ void load_x8(const float* const (&xr)[R], int off, bool vec,
                                        const float (&inv)[R], const float* norm_w,
                                        float (&xv)[R][8]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    load8(xr[r] + off, vec, xv[r]);
    if constexpr (M == Fused::kRmsNormIn) {
      float g[8];
      load8(norm_w + off, vec, g);
#pragma unroll
      for (int j = 0; j < 8; ++j) xv[r][j] = xv[r][j] * inv[r] * g[j];
    }
  }
}

// One element i of the x the kernel multiplies, from its row (load_x8's formulas).
template <Fused M>
__device__ __forceinline__ float x_at(const float* row, int i, float inv, const float* norm_w) {
  if constexpr (M == Fused::kRmsNormIn) {
    return row[i] * inv * norm_w[i];
  } else {
    return row[i];
  }
}

// kRmsNorm: 1 / rms of each of the pass's R rows (rms_norm's rsqrtf(mean of squares + eps)),
// summed by the whole block; `red` is kWarps * R floats of shared memory. The first block of a
// dense call also writes the normalised rows to h (when set). Called by every thread.
template <int R>
__device__ __forceinline__ void rows_inv_rms(const float* const (&xr)[R], int rows, int m0, int k,
                                             bool vec, const Fusion& xf, float* red,
                                             float (&inv)[R]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // Every load of the row issued before the adds (a 2048 row: 4 float4 a thread): this sum is
    // on the way to the first FMA.
    float ss = 0.f;
    if (vec) {
#pragma unroll 4
      for (int i = threadIdx.x * 4; i < k; i += kThreads * 4) {
        const float4 v = *reinterpret_cast<const float4*>(xr[r] + i);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
#pragma unroll 4
      for (int i = threadIdx.x; i < k; i += kThreads) ss += xr[r][i] * xr[r][i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[warp * R + r] = ss;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float t = 0.f;
#pragma unroll
    for (int g = 0; g < kWarps; ++g) t += red[g * R + r];
    inv[r] = rsqrtf(t / k + xf.eps);
  }
  __syncthreads();  // red is written again by the next pass
  if (xf.h.p != nullptr && blockIdx.x == 0 && blockIdx.y == 0)
    for (int r = 0; r < rows; ++r)
      for (int i = threadIdx.x; i < k; i += kThreads)
        xf.h.p[(int64_t)(m0 + r) * xf.h.stride + i] = xr[r][i] * inv[r] * xf.norm_weight[i];
}

// 1-2 rows a pass (R), C columns a warp, U 16-byte weight loads a column in flight per lane, KS
// warps splitting a column group's K (see store_sums). No shared memory for x and no barrier
// before the first FMA: each lane reads the x values it multiplies from global memory into
// registers (all U slots of a batch at once, one latency), and the weights come through a
// rolling window: once slot u of a batch is multiplied, slot u of the next batch is requested,
// so C x U loads stay in flight over the whole K walk.
template <int R, int C, int U, int KS, Fused M>
__global__ void __launch_bounds__(kThreads, 4)
    few_rows_k(View x, const __nv_bfloat16* __restrict__ w, const int32_t* offsets, int experts,
               View y, int n_out, int k, float beta, bool x_vec, Fusion xf) {
  __shared__ int block_expert;
  __shared__ float red[M == Fused::kRmsNormIn ? kWarps * R : 1];
  __shared__ float part[KS > 1 ? kWarps * R * C : 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kStep = kWarpK * KS;  // K between one warp's consecutive loads of a column
  const int n0 = (blockIdx.x * (kWarps / KS) + warp / KS) * out_cols<C, M>();
  const int kk0 = (warp % KS) * kWarpK + lane * 8;
  const __nv_bfloat16* wc[C];  // (weight_row: columns past n_out read the last one)
  uint4 wv[C][U];
  if (offsets == nullptr) {  // dense: the first weights before the PDL wait (pdl.cuh)
#pragma unroll
    for (int c = 0; c < C; ++c) wc[c] = w + weight_row<C, M>(n0, c, n_out) * k;
    load_weights<C, U, kStep>(wc, 0, kk0, k, wv);
  }
  pdl_wait();
  pdl_allow_dependents();  // (their own wait still covers all of this grid)
  int r0 = 0, r1 = static_cast<int>(x.rows);
  if (offsets != nullptr) {
    if (!expert_rows_and_weights<C, M>(w, offsets, experts, n0, n_out, k, &block_expert, r0, r1,
                                       wc))
      return;  // fewer experts with rows than block rows (uniform over the block)
    load_weights<C, U, kStep>(wc, 0, kk0, k, wv);
  }
  for (int m0 = r0; m0 < r1; m0 += R) {
    const int rows = min(R, r1 - m0);
    // A further pass (an expert with more rows than R): its weights again, now mostly from L2.
    if (m0 > r0) load_weights<C, U, kStep>(wc, 0, kk0, k, wv);
    // Rows past `rows` read the last real row: no guard in the FMAs, their sums are not stored.
    const float* xr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) xr[r] = x.p + (int64_t)(m0 + min(r, rows - 1)) * x.stride;
    float inv[R] = {};
    if constexpr (M == Fused::kRmsNormIn) rows_inv_rms<R>(xr, rows, m0, k, x_vec, xf, red, inv);
    float acc[R][C];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < C; ++c) acc[r][c] = 0.f;
    for (int kk = kk0; kk < k; kk += kStep * U) {  // per lane: lanes differ only at a ragged end
      float xv[U][R][8];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (kk + u * kStep < k)
          load_x8<M, R>(xr, kk + u * kStep, x_vec, inv, xf.norm_weight, xv[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int off = kk + u * kStep;
        if (off < k) {
          fma_slot<R, C>(xv[u], wv, u, acc);
        }
        const int next = off + U * kStep;  // the same slot of the next batch
#pragma unroll
        for (int c = 0; c < C; ++c)
          wv[c][u] = next < k ? __ldcs(reinterpret_cast<const uint4*>(wc[c] + next))
                              : make_uint4(0, 0, 0, 0);
      }
    }
    store_sums<R, C, KS, M>(acc, part, rows, m0, n0, y, n_out, beta);
  }
}

// 4-8 rows: R rows per pass (x rows in shared memory), C: columns per warp, U: 16-byte
// loads per column in flight per lane, KS: warps that split one column group's K
// (split-K inside the block, for layers with too few columns to fill the SMs;
// partial sums meet in shared memory, no atomics, so beta and the summation
// order stay deterministic). kc: K chunk staged at once (multiple of 8).
// (Launch bounds: up to 4 rows, 4 blocks per SM, i.e. 128 registers: without it ptxas chose ~72
// and spilled; 8 rows need more than 128.)
template <int R, int C, int U, int KS, Fused M>
__global__ void __launch_bounds__(kThreads, R >= 8 ? 1 : 4)
    small_linear_k(View x, const __nv_bfloat16* __restrict__ w, const int32_t* offsets, int experts,
                   View y, int n_out, int k, float beta, int kc, bool x_vec, Fusion xf) {
  extern __shared__ float4 xs4[];  // [R][kc] fp32
  float* xs = reinterpret_cast<float*>(xs4);
  __shared__ int block_expert;
  __shared__ float red[M == Fused::kRmsNormIn ? kWarps * R : 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kStep = kWarpK * KS;  // K between one warp's consecutive loads of a column
  __shared__ float part[KS > 1 ? kWarps * R * C : 1];
  const int ks = warp % KS;
  const int n0 = (blockIdx.x * (kWarps / KS) + warp / KS) * out_cols<C, M>();
  // A dependent launch (PDL) may start this grid while the kernel before it still runs: the
  // weights (never written by a kernel that lets dependents start early) can be requested at
  // once, everything else waits for the previous grid (griddepcontrol.wait: complete and its
  // writes visible; a no-op when not launched as a dependent). Dense only: a grouped call must
  // read the offsets to know its expert.
  const __nv_bfloat16* wc[C];
  uint4 wv[C][U];
  const int kk0 = ks * kWarpK + lane * 8;
  bool preloaded = false;
  if (offsets == nullptr) {
#pragma unroll
    for (int c = 0; c < C; ++c) wc[c] = w + weight_row<C, M>(n0, c, n_out) * k;
    if (x.rows > 0) {
      load_weights<C, U, kStep>(wc, 0, kk0, min(kc, k), wv);
      preloaded = true;
    }
  }
  pdl_wait();
  pdl_allow_dependents();  // (their own wait still covers all of this grid)
  int r0 = 0, r1 = static_cast<int>(x.rows);
  if (offsets != nullptr &&
      !expert_rows_and_weights<C, M>(w, offsets, experts, n0, n_out, k, &block_expert, r0, r1, wc))
    return;  // fewer experts with rows than block rows (uniform over the block)

  for (int m0 = r0; m0 < r1; m0 += R) {
    const int rows = min(R, r1 - m0);
    float inv[R] = {};
    if constexpr (M == Fused::kRmsNormIn) {
      const float* xr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) xr[r] = x.p + (int64_t)(m0 + min(r, rows - 1)) * x.stride;
      rows_inv_rms<R>(xr, rows, m0, k, x_vec, xf, red, inv);
    }
    float acc[R][C];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < C; ++c) acc[r][c] = 0.f;

    for (int c0 = 0; c0 < k; c0 += kc) {
      const int len = min(kc, k - c0);
      // The chunk's first weight vectors go out before x is staged: their latency overlaps
      // the staging and its barriers (a small layer is little more than that first batch).
      int kk = kk0;
      if (!preloaded) load_weights<C, U, kStep>(wc, c0, kk, len, wv);
      preloaded = false;
      __syncthreads();  // the previous chunk's readers are done with xs
      // Stage x[m0 .. m0+R) [c0 .. c0+len) (rows past `rows` as zeros: the FMAs need no guard).
      // Aligned rows go by cp.async: every 16-byte piece of the block's x in flight at once
      // (a load-then-store loop made 8 rows x 1280 floats ~20 dependent round trips per thread
      // and the 8-row kernel slower than the old one, H100 round 2); rows past `rows` are
      // zero-filled by the copy's source size, without a read. A fused op (Fusion) is computed
      // while staging, by plain loads.
      for (int r = 0; r < R; ++r) {
        const float* row = x.p + (int64_t)(m0 + r) * x.stride;
        float* dst = xs + r * kc;
        if constexpr (M == Fused::kRmsNormIn) {
          for (int i = threadIdx.x; i < len; i += kThreads)
            dst[i] = r < rows ? x_at<M>(row, c0 + i, inv[r], xf.norm_weight) : 0.f;
        } else if (x_vec) {
          for (int i = threadIdx.x * 4; i < len; i += kThreads * 4)
            cp_async16(dst + i, r < rows ? row + c0 + i : x.p, r < rows);
        } else {
          for (int i = threadIdx.x; i < len; i += kThreads) dst[i] = r < rows ? row[c0 + i] : 0.f;
        }
      }
      if (M != Fused::kRmsNormIn && x_vec) cp_async_wait_all();
      __syncthreads();
      while (kk < len) {  // per lane (lanes differ only at a ragged end); no shuffles inside
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int off = kk + u * kStep;
          if (off >= len) break;  // the chunk's ragged tail
          float xv[R][8];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float4 a = xs4[(r * kc + off) / 4], b = xs4[(r * kc + off) / 4 + 1];
            xv[r][0] = a.x, xv[r][1] = a.y, xv[r][2] = a.z, xv[r][3] = a.w;
            xv[r][4] = b.x, xv[r][5] = b.y, xv[r][6] = b.z, xv[r][7] = b.w;
          }
          fma_slot<R, C>(xv, wv, u, acc);
        }
        kk += kStep * U;
        if (kk < len) load_weights<C, U, kStep>(wc, c0, kk, len, wv);
      }
    }
    store_sums<R, C, KS, M>(acc, part, rows, m0, n0, y, n_out, beta);
  }
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return v;
  }();
  return n;
}

template <int R, int C, int U, Fused M>
void launch(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y, int n_out,
            int k, float beta, cudaStream_t s, const Fusion& xf) {
  constexpr bool kFewRows = R <= 2;  // few_rows_k: x from global memory, no shared staging
  // K chunk: all of K (rounded to 8) when it fits, else the most multiples of a warp's K.
  const int cap = kSmemBytes / (R * 4) / kWarpK * kWarpK;
  const int kc = std::min((k + 7) / 8 * 8, cap);
  // Block rows: dense 1; grouped, at most one per expert that can have rows.
  const int block_rows =
      offsets == nullptr
          ? 1
          : static_cast<int>(std::min<int64_t>(experts, std::max<int64_t>(x.rows, 1)));
  constexpr int CO = out_cols<C, M>();  // output columns per warp
  // float4 loads of x (and of the norm weight) where aligned.
  const bool x_vec =
      reinterpret_cast<uintptr_t>(x.p) % 16 == 0 && x.stride % 4 == 0 &&
      (M != Fused::kRmsNormIn || reinterpret_cast<uintptr_t>(xf.norm_weight) % 16 == 0);
  const size_t smem = kFewRows ? 0 : static_cast<size_t>(R) * kc * sizeof(float);
  // Split K over 2 or 4 warps when whole-K warps would give fewer than 2 blocks per SM (a
  // 64-expert router, a 2048-column layer at 8 rows), as far as K has warp-sized pieces.
  const int64_t blocks1 = (int64_t(n_out) + kWarps * CO - 1) / (kWarps * CO) * block_rows;
  const int64_t want = 2 * int64_t(sm_count());
  int ks = 1;
  while (ks < 4 && blocks1 * ks < want && k >= 2 * ks * kWarpK) ks *= 2;
  auto go = [&](auto ksplit) {
    constexpr int KS = decltype(ksplit)::value;
    const dim3 grid((n_out + kWarps / KS * CO - 1) / (kWarps / KS * CO), block_rows);
    if constexpr (kFewRows)
      launch_pdl(few_rows_k<R, C, U, KS, M>, grid, dim3(kThreads), smem, s, x, w, offsets, experts,
                 y, n_out, k, beta, x_vec, xf);
    else
      launch_pdl(small_linear_k<R, C, U, KS, M>, grid, dim3(kThreads), smem, s, x, w, offsets,
                 experts, y, n_out, k, beta, kc, x_vec, xf);
  };
  if (ks == 1)
    go(std::integral_constant<int, 1>{});
  else if (ks == 2)
    go(std::integral_constant<int, 2>{});
  else
    go(std::integral_constant<int, 4>{});
  ISC_LAUNCH();
}

}  // namespace

// The process-wide switch of the programmatic dependent launches (kernels.hpp).
namespace {
std::atomic<int> g_pdl{-1};  // -1: not decided yet
}  // namespace

bool pdl_on() {
  int v = g_pdl.load(std::memory_order_relaxed);
  if (v < 0) {
    int dev = 0, major = 0;
    const bool hopper =
        cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9;
    v = hopper && env_switch_on("INFERSCOPE_CUDA_PDL") ? 1 : 0;
    g_pdl.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}
void set_pdl(bool on) {
  g_pdl.store(on ? 1 : 0, std::memory_order_relaxed);
}

namespace {
// INFERSCOPE_CUDA_FEW_ROWS=0: 1-2 rows go through the shared-memory kernel's 4-row passes
// instead of few_rows_k (a fallback should few_rows_k misbehave on some device).
bool few_rows_on() {
  static const bool on = env_switch_on("INFERSCOPE_CUDA_FEW_ROWS");
  return on;
}

// Columns per warp: 2 at one row (more warps for narrow layers), 4 from 2 rows on (each x value
// a lane holds serves the warp's C columns: at 2 rows, 4 columns x 2 loads in flight keep the
// registers of x and weights under the 128 the launch bounds allow).
template <Fused M>
void launch_rows(int64_t m, View x, const __nv_bfloat16* w, const int32_t* offsets, int experts,
                 View y, int n_out, int k, float beta, cudaStream_t s, const Fusion& xf) {
  if (m <= 2 && !few_rows_on())
    launch<4, 4, 2, M>(x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else if (m <= 1)
    launch<1, 2, 4, M>(x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else if (m <= 2)
    launch<2, 4, 2, M>(x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else if (m <= 4)
    launch<4, 4, 2, M>(x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else
    launch<8, 4, 2, M>(x, w, offsets, experts, y, n_out, k, beta, s, xf);
}
}  // namespace

void small_linear(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y,
                  int n_out, int k, float beta, cudaStream_t s, int max_rows, const Fusion& xf) {
  if (k % 8 != 0) throw std::invalid_argument("small_linear: K must be a multiple of 8");
  if (n_out <= 0 || experts <= 0 || x.rows <= 0) return;
  if (offsets == nullptr && experts != 1)
    throw std::invalid_argument("small_linear: a dense call (no offsets) has one expert");
  // Rows one pass covers: the fewest that hold a whole expert (a dense call: all rows), at most
  // 8 (more rows take more passes over the weights, which then come from L2).
  int64_t m = max_rows > 0 ? max_rows : offsets == nullptr ? x.rows : 8;
  if (offsets != nullptr) {
    // Grouped, the hint is a bound (a decode bucket of T tokens: T rows an expert) while most
    // experts have far fewer: 8-row passes for 1-2 rows would stage and multiply zeros. Passes
    // of twice the mean rows of the experts that can have rows; a bigger expert takes more
    // passes, its weights then mostly from L2.
    const int64_t can = std::max<int64_t>(1, std::min<int64_t>(experts, x.rows));
    m = std::min<int64_t>(m, 2 * ((x.rows + can - 1) / can));
  }
  if (xf.mode == Fused::kSwigluOut && beta != 0.f)
    throw std::invalid_argument("small_linear: a SwiGLU output takes beta 0");
  if (xf.mode == Fused::kSwigluOut)
    launch_rows<Fused::kSwigluOut>(m, x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else if (xf.mode == Fused::kRmsNormIn)
    launch_rows<Fused::kRmsNormIn>(m, x, w, offsets, experts, y, n_out, k, beta, s, xf);
  else
    launch_rows<Fused::kNone>(m, x, w, offsets, experts, y, n_out, k, beta, s, xf);
}

}  // namespace inferscope::engine::cuda
