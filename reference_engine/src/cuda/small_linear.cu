// Linear layers for few rows (decode): y = beta * y + x · W^T, fp32 x, bf16
// weights, fp32 accumulate. A decode step is bound by reading the weights once,
// so the kernel is written for HBM bandwidth (issue 18 part 5):
//  - a warp owns C adjacent output columns and keeps C x U 16-byte weight loads
//    in flight per lane (all issued before the FMAs; the previous kernel had one);
//  - the block's x rows (up to R at a time) are staged once in shared memory as
//    fp32 (exact: the same products as the CPU oracle, only the summation order
//    differs), in K chunks that fit the default 48 KiB, and every x value read
//    from shared memory is reused for the warp's C columns (at 8 rows x fp32 the
//    x reads would otherwise outrun the weight bytes and bound the kernel);
//  - weights are read with the streaming hint (read once per step, they should
//    not evict the activations from L2);
//  - grouped by expert, block row j serves the j-th expert that has rows (found
//    on the device from offsets): an 8-of-64 decode launches 8 block rows, not
//    64, and an empty expert reads none of its weights. No host sync, graph
//    capturable.
// Small blocks (4 warps) so that 2048 columns already spread over 128+ SMs.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "check.hpp"
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

// R: rows per pass (x rows in shared memory), C: columns per warp, U: 16-byte
// loads per column in flight per lane, KS: warps that split one column group's K
// (split-K inside the block, for layers with too few columns to fill the SMs;
// partial sums meet in shared memory, no atomics, so beta and the summation
// order stay deterministic). kc: K chunk staged at once (multiple of 8).
// (Launch bounds: up to 4 rows, 4 blocks per SM, i.e. 128 registers: without it ptxas chose ~72
// and spilled; 8 rows need more than 128.)
template <int R, int C, int U, int KS>
__global__ void __launch_bounds__(kThreads, R >= 8 ? 1 : 4)
    small_linear_k(View x, const __nv_bfloat16* __restrict__ w, const int32_t* offsets, int experts,
                   View y, int n_out, int k, float beta, int kc, bool x_vec) {
  extern __shared__ float4 xs4[];  // [R][kc] fp32
  float* xs = reinterpret_cast<float*>(xs4);
  __shared__ int block_expert;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kStep = kWarpK * KS;  // K between one warp's consecutive loads of a column
  __shared__ float part[KS > 1 ? kWarps * R * C : 1];
  const int ks = warp % KS;
  const int n0 = (blockIdx.x * (kWarps / KS) + warp / KS) * C;
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
    for (int c = 0; c < C; ++c) wc[c] = w + (int64_t)min(n0 + c, n_out - 1) * k;
    if (x.rows > 0) {
      load_weights<C, U, kStep>(wc, 0, kk0, min(kc, k), wv);
      preloaded = true;
    }
  }
  pdl_wait();
  pdl_allow_dependents();  // (their own wait still covers all of this grid)
  int e = 0, r0 = 0, r1 = static_cast<int>(x.rows);
  if (offsets != nullptr) {
    if (threadIdx.x < 32) {
      const int found = active_expert(offsets, experts, static_cast<int>(blockIdx.y));
      if (threadIdx.x == 0) block_expert = found;
    }
    __syncthreads();
    e = block_expert;
    if (e < 0) return;  // fewer experts with rows than block rows (uniform over the block)
    r0 = offsets[e];
    r1 = offsets[e + 1];
    // Columns past n_out load a valid column (the last) and store nothing: no branch in loads.
#pragma unroll
    for (int c = 0; c < C; ++c) wc[c] = w + ((int64_t)e * n_out + min(n0 + c, n_out - 1)) * k;
  }

  for (int m0 = r0; m0 < r1; m0 += R) {
    const int rows = min(R, r1 - m0);
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
      // zero-filled by the copy's source size, without a read.
      for (int r = 0; r < R; ++r) {
        const float* src = x.p + (int64_t)(m0 + r) * x.stride + c0;
        float* dst = xs + r * kc;
        if (x_vec) {
          for (int i = threadIdx.x * 4; i < len; i += kThreads * 4)
            cp_async16(dst + i, r < rows ? src + i : x.p, r < rows);
        } else {
          for (int i = threadIdx.x; i < len; i += kThreads) dst[i] = r < rows ? src[i] : 0.f;
        }
      }
      if (x_vec) cp_async_wait_all();
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
        kk += kStep * U;
        if (kk < len) load_weights<C, U, kStep>(wc, c0, kk, len, wv);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        float v = acc[r][c];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (KS == 1) {
          if (lane == 0 && r < rows && n0 + c < n_out) {
            float* out = y.p + (int64_t)(m0 + r) * y.stride + n0 + c;
            *out = beta == 0.f ? v : v + beta * *out;  // beta 0 never reads y (may be garbage)
          }
        } else if (lane == 0) {
          part[(warp * R + r) * C + c] = v;
        }
      }
    if (KS > 1) {  // the KS partial sums of each (row, column), in warp order
      __syncthreads();
      for (int i = threadIdx.x; i < (kWarps / KS) * R * C; i += kThreads) {
        const int g = i / (R * C), r = i / C % R, c = i % C;
        const int n = (blockIdx.x * (kWarps / KS) + g) * C + c;
        if (r >= rows || n >= n_out) continue;
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < KS; ++j) v += part[((g * KS + j) * R + r) * C + c];
        float* out = y.p + (int64_t)(m0 + r) * y.stride + n;
        *out = beta == 0.f ? v : v + beta * *out;
      }
      __syncthreads();  // part is written again by the next pass
    }
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

template <int R, int C, int U>
void launch(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y, int n_out,
            int k, float beta, cudaStream_t s) {
  // K chunk: all of K (rounded to 8) when it fits, else the most multiples of a warp's K.
  const int cap = kSmemBytes / (R * 4) / kWarpK * kWarpK;
  const int kc = std::min((k + 7) / 8 * 8, cap);
  // Block rows: dense 1; grouped, at most one per expert that can have rows.
  const int block_rows =
      offsets == nullptr
          ? 1
          : static_cast<int>(std::min<int64_t>(experts, std::max<int64_t>(x.rows, 1)));
  const bool x_vec = reinterpret_cast<uintptr_t>(x.p) % 16 == 0 && x.stride % 4 == 0;
  const size_t smem = static_cast<size_t>(R) * kc * sizeof(float);
  // Split K over 2 or 4 warps when whole-K warps would give fewer than 2 blocks per SM (a
  // 64-expert router, a 2048-column layer at 8 rows), as far as K has warp-sized pieces.
  const int64_t blocks1 = (int64_t(n_out) + kWarps * C - 1) / (kWarps * C) * block_rows;
  const int64_t want = 2 * int64_t(sm_count());
  int ks = 1;
  while (ks < 4 && blocks1 * ks < want && k >= 2 * ks * kWarpK) ks *= 2;
  auto go = [&](auto kernel, int ksplit) {
    const int cols_per_block = kWarps / ksplit * C;
    launch_pdl(kernel, dim3((n_out + cols_per_block - 1) / cols_per_block, block_rows),
               dim3(kThreads), smem, s, x, w, offsets, experts, y, n_out, k, beta, kc, x_vec);
  };
  if (ks == 1)
    go(small_linear_k<R, C, U, 1>, 1);
  else if (ks == 2)
    go(small_linear_k<R, C, U, 2>, 2);
  else
    go(small_linear_k<R, C, U, 4>, 4);
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
    const char* env = std::getenv("INFERSCOPE_CUDA_PDL");
    int dev = 0, major = 0;
    const bool hopper =
        cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9;
    v = hopper && !(env && env[0] == '0') ? 1 : 0;
    g_pdl.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}
void set_pdl(bool on) {
  g_pdl.store(on ? 1 : 0, std::memory_order_relaxed);
}

void small_linear(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y,
                  int n_out, int k, float beta, cudaStream_t s, int max_rows) {
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
  // Columns per warp: 2 at few rows (more warps for narrow layers), 4 from 4 rows on (x reads from
  // shared memory per weight byte grow with the rows; 4 columns share each).
  if (m <= 1)
    launch<1, 2, 4>(x, w, offsets, experts, y, n_out, k, beta, s);
  else if (m <= 2)
    launch<2, 2, 4>(x, w, offsets, experts, y, n_out, k, beta, s);
  else if (m <= 4)
    launch<4, 4, 2>(x, w, offsets, experts, y, n_out, k, beta, s);
  else
    launch<8, 4, 2>(x, w, offsets, experts, y, n_out, k, beta, s);
}

}  // namespace inferscope::engine::cuda
