// The decode linear as it was at c49da41 (a warp per output column, one 16-byte
// weight load in flight per lane, x read from global per row), kept ONLY so that
// linear_bw_bench can show old vs new GB/s in one binary. Not used by the engine.
#include <stdexcept>

#include "check.hpp"
#include "small_linear_v0.hpp"

namespace inferscope::bench {
namespace {
using inferscope::engine::cuda::View;
constexpr int kWarps = 8;
constexpr int kRowTile = 8;

template <bool VEC>
__global__ void __launch_bounds__(kWarps * 32)
    small_linear_k(View x, const __nv_bfloat16* __restrict__ w, const int32_t* offsets, View y,
                   int n_out, int k, float beta) {
  const int e = blockIdx.y;
  const int r0 = offsets ? offsets[e] : 0;
  const int r1 = offsets ? offsets[e + 1] : static_cast<int>(x.rows);
  if (r0 >= r1) return;  // an expert without tokens reads none of its weights
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarps + warp;
  if (n >= n_out) return;
  const __nv_bfloat16* wr = w + ((int64_t)e * n_out + n) * k;
  for (int m0 = r0; m0 < r1; m0 += kRowTile) {
    float acc[kRowTile];
#pragma unroll
    for (int i = 0; i < kRowTile; ++i) acc[i] = 0.f;
    for (int kk = lane * 8; kk < k; kk += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(wr + kk);
      const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
      float wf[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float2 f = __bfloat1622float2(w2[j]);
        wf[2 * j] = f.x;
        wf[2 * j + 1] = f.y;
      }
#pragma unroll
      for (int i = 0; i < kRowTile; ++i) {
        if (m0 + i >= r1) break;  // uniform across the warp
        const float* xr = x.p + (int64_t)(m0 + i) * x.stride + kk;
        if (VEC) {
          const float4 a = *reinterpret_cast<const float4*>(xr);
          const float4 b = *reinterpret_cast<const float4*>(xr + 4);
          acc[i] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + b.x * wf[4] +
                    b.y * wf[5] + b.z * wf[6] + b.w * wf[7];
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i] += xr[j] * wf[j];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRowTile; ++i) {
      if (m0 + i >= r1) break;
      float v = acc[i];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) {
        float* out = y.p + (int64_t)(m0 + i) * y.stride + n;
        *out = beta == 0.f ? v : v + beta * *out;  // beta 0 never reads y (may be garbage)
      }
    }
  }
}

}  // namespace

void small_linear_v0(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y,
                     int n_out, int k, float beta, cudaStream_t s) {
  if (k % 8 != 0) throw std::invalid_argument("small_linear_v0: K must be a multiple of 8");
  if (n_out <= 0 || experts <= 0 || (offsets == nullptr && x.rows <= 0)) return;
  const dim3 grid((n_out + kWarps - 1) / kWarps, experts);
  const bool vec = reinterpret_cast<uintptr_t>(x.p) % 16 == 0 && x.stride % 4 == 0;
  if (vec)
    small_linear_k<true><<<grid, kWarps * 32, 0, s>>>(x, w, offsets, y, n_out, k, beta);
  else
    small_linear_k<false><<<grid, kWarps * 32, 0, s>>>(x, w, offsets, y, n_out, k, beta);
  ISC_LAUNCH();
}

}  // namespace inferscope::bench
