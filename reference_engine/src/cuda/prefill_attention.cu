// Paged attention for prefill: a block per (tile of up to 32 consecutive query rows of one
// sequence, head), keys and values of the tile's context brought into shared memory 64 at a
// time and shared by all its rows, with an online (running max) softmax per row.
//
// Why: the row kernel (attention.cu, built for decode) gives every (query row, head) its own
// block, which reads that row's whole context from L2: a B=64 x 128-token prefill re-reads
// ~8.6 GB of K and V per layer through 131,072 blocks of mostly idle threads. Here a tile's
// rows share each K/V load (32x less traffic) and every thread computes.
//
// fp32 throughout, as the cache and the CPU oracle: scores are dot * scale, rows mask keys past
// their own position (key j <= token_pos), the output is sum(p * v) / sum(p). The running-max
// rescaling differs from the CPU's two passes only by rounding.
#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "check.hpp"
#include "kernels.hpp"
#include "warp_reduce.cuh"

namespace inferscope::engine::cuda {
namespace {

constexpr int kTileRows = kPrefillTileRows;  // query rows per block
constexpr int kKeys = 64;                    // keys per shared-memory chunk
constexpr int kWarps = 8;
constexpr int kRowsPerWarp = kTileRows / kWarps;
static_assert(kTileRows % kWarps == 0, "each warp owns the same number of rows");

template <int HD>
constexpr size_t prefill_smem_bytes() {
  // Q [rows][HD] | K [keys][HD + 1] (padded: lanes read one key each, column-wise) |
  // V [keys][HD] (lanes read one row's dims) | P [rows][keys]
  return sizeof(float) * (kTileRows * HD + kKeys * (HD + 1) + kKeys * HD + kTileRows * kKeys);
}

template <int HD>
__global__ void __launch_bounds__(kWarps * 32)
    prefill_attention_k(PagedArgs a, const int32_t* __restrict__ tile_first) {
  constexpr int kDims = HD / 32;  // output dims per lane
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + kTileRows * HD;
  float* vs = ks + kKeys * (HD + 1);
  float* ps = vs + kKeys * HD;

  const int first = tile_first[blockIdx.x];
  const int n = tile_first[blockIdx.x + 1] - first;
  const int h = blockIdx.y;
  const int kvh = h / (a.heads / a.kv_heads);
  const int seq = a.token_seq[first];
  const int32_t* table = a.block_table + a.block_table_start[seq];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // The tile's context: up to its last position (every row masks past its own).
  int ctx = 0;
  for (int r = 0; r < n; ++r) ctx = max(ctx, a.token_pos[first + r] + 1);

  for (int i = tid; i < kTileRows * HD / 4; i += blockDim.x) {
    const int r = i / (HD / 4), d4 = i % (HD / 4);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < n)
      v = *reinterpret_cast<const float4*>(a.q.p + (int64_t)(first + r) * a.q.stride +
                                           (int64_t)h * HD + d4 * 4);
    *reinterpret_cast<float4*>(qs + r * HD + d4 * 4) = v;
  }

  // Per row of this warp: its position (-1: no row), running max and sum, output dims.
  int pos[kRowsPerWarp];
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp * kRowsPerWarp + i;
    pos[i] = r < n ? a.token_pos[first + r] : -1;
    m[i] = -FLT_MAX;
    l[i] = 0.f;
#pragma unroll
    for (int d = 0; d < kDims; ++d) acc[i][d] = 0.f;
  }

  for (int c0 = 0; c0 < ctx; c0 += kKeys) {
    const int keys = min(kKeys, ctx - c0);
    __syncthreads();  // the previous chunk's K and V are no longer read (and Q is stored)
    for (int i = tid; i < kKeys * HD / 4; i += blockDim.x) {
      const int j = i / (HD / 4), d4 = i % (HD / 4);
      float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
      if (j < keys) {
        const int p = c0 + j;
        const int64_t slot = (int64_t)table[p / a.block_size] * a.block_size + p % a.block_size;
        kv = *reinterpret_cast<const float4*>(a.k_cache.p + slot * a.k_cache.stride +
                                              (int64_t)kvh * HD + d4 * 4);
        vv = *reinterpret_cast<const float4*>(a.v_cache.p + slot * a.v_cache.stride +
                                              (int64_t)kvh * HD + d4 * 4);
      }
      float* kr = ks + j * (HD + 1) + d4 * 4;
      kr[0] = kv.x, kr[1] = kv.y, kr[2] = kv.z, kr[3] = kv.w;
      *reinterpret_cast<float4*>(vs + j * HD + d4 * 4) = vv;
    }
    __syncthreads();

    // Scores: lane owns keys lane and lane + 32 of the chunk for each of the warp's rows.
    float s[kRowsPerWarp][2];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i][0] = s[i][1] = 0.f;
    const float* k0 = ks + lane * (HD + 1);
    const float* k1 = ks + (lane + 32) * (HD + 1);
    const float* q0 = qs + warp * kRowsPerWarp * HD;
#pragma unroll 4
    for (int d = 0; d < HD; ++d) {
      const float x0 = k0[d], x1 = k1[d];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const float qv = q0[i * HD + d];
        s[i][0] += qv * x0;
        s[i][1] += qv * x1;
      }
    }
    float* pw = ps + warp * kRowsPerWarp * kKeys;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (pos[i] < 0) continue;  // warp-uniform: pos is the same in every lane
      const bool ok0 = c0 + lane <= pos[i] && lane < keys;
      const bool ok1 = c0 + lane + 32 <= pos[i] && lane + 32 < keys;
      const float v0 = ok0 ? s[i][0] * a.scale : -FLT_MAX;
      const float v1 = ok1 ? s[i][1] * a.scale : -FLT_MAX;
      const float mc = warp_max(fmaxf(v0, v1));
      // A chunk past this row's position has no key for it: nothing to add.
      if (mc == -FLT_MAX) {
        pw[i * kKeys + lane] = 0.f;
        pw[i * kKeys + lane + 32] = 0.f;
        continue;
      }
      const float mn = fmaxf(m[i], mc);
      const float alpha = expf(m[i] - mn);  // 0 on the first chunk (m = -FLT_MAX)
      const float p0 = ok0 ? expf(v0 - mn) : 0.f;
      const float p1 = ok1 ? expf(v1 - mn) : 0.f;
      l[i] = l[i] * alpha + warp_sum(p0 + p1);
      m[i] = mn;
#pragma unroll
      for (int d = 0; d < kDims; ++d) acc[i][d] *= alpha;
      pw[i * kKeys + lane] = p0;
      pw[i * kKeys + lane + 32] = p1;
    }
    __syncwarp();
    // p.V: lane owns dims lane, lane + 32, ... of each of the warp's rows.
    for (int j = 0; j < keys; ++j) {
      float v[kDims];
#pragma unroll
      for (int d = 0; d < kDims; ++d) v[d] = vs[j * HD + lane + 32 * d];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const float p = pw[i * kKeys + j];
#pragma unroll
        for (int d = 0; d < kDims; ++d) acc[i][d] += p * v[d];
      }
    }
    __syncwarp();
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (pos[i] < 0) continue;
    const int r = warp * kRowsPerWarp + i;
    float* out = a.out.p + (int64_t)(first + r) * a.out.stride + (int64_t)h * HD;
    const float inv = 1.f / l[i];
#pragma unroll
    for (int d = 0; d < kDims; ++d) out[lane + 32 * d] = acc[i][d] * inv;
  }
}

template <int HD>
void launch(const PagedArgs& a, const int32_t* tile_first, int tiles, cudaStream_t s) {
  constexpr size_t smem = prefill_smem_bytes<HD>();
  static_assert(smem <= 227 * 1024, "fits an SM's shared memory");
  // The attribute is per device; setting it on every launch is a cheap host call.
  if (smem > 48 * 1024)
    ISC_CUDA(cudaFuncSetAttribute(prefill_attention_k<HD>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.heads));
  prefill_attention_k<HD><<<grid, kWarps * 32, smem, s>>>(a, tile_first);
  ISC_LAUNCH();
}

bool aligned16(const View& v) {
  return reinterpret_cast<uintptr_t>(v.p) % 16 == 0 && v.stride % 4 == 0;
}

}  // namespace

bool prefill_attention(const PagedArgs& a, const int32_t* tile_first, int tiles, cudaStream_t s) {
  if (tiles <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return false;
  if (!aligned16(a.q) || !aligned16(a.k_cache) || !aligned16(a.v_cache)) return false;
  switch (a.head_dim) {
    case 128:
      launch<128>(a, tile_first, tiles, s);
      return true;
    case 64:
      launch<64>(a, tile_first, tiles, s);
      return true;
    case 32:
      launch<32>(a, tile_first, tiles, s);
      return true;
    default:
      return false;
  }
}

}  // namespace inferscope::engine::cuda
