// Attention over the paged KV cache (prefill and decode share one kernel: each
// query row attends to its own sequence's positions through the block table),
// and dense attention for the vision encoder.
//
// A block per (query row, head): scores for the whole context sit in shared
// memory (two passes: q.k and max, then exp and p.V). Contexts of this engine
// are short (a few thousand tokens), so one block per row keeps it simple and
// exact; longer contexts would want a split-K (flash-decoding) variant.
//
// Paged rows with head_dim in {4..128, a power of two} take paged_rows_k: the
// cache slots of the context are resolved once into shared memory (the generic
// kernel did a block-table load and an integer division per key, twice, each a
// dependent load in front of the K or V load), and keys are read by hd/4 lanes
// with one 16-byte load each, U keys in flight per lane group, 16 warps: a B=1
// decode step has only heads-many blocks, so each must keep many loads going.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <stdexcept>

#include "check.hpp"
#include "kernels.hpp"
#include "pdl.cuh"
#include "warp_reduce.cuh"

namespace inferscope::engine::cuda {
namespace {

constexpr int kThreads = 128;

__device__ float block_reduce(float v, bool is_max, float* red) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  int warps = blockDim.x >> 5;
  float r = is_max ? -FLT_MAX : 0.f;
  for (int w = 0; w < warps; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

struct PagedLocator {
  const float* kc;
  const float* vc;
  int64_t ks, vs;        // cache row strides
  const int32_t* table;  // this sequence's block table
  int block_size, col;   // col = kv head * head_dim
  __device__ int64_t slot(int j) const {
    return (int64_t)table[j / block_size] * block_size + j % block_size;
  }
  __device__ const float* k(int j) const { return kc + slot(j) * ks + col; }
  __device__ const float* v(int j) const { return vc + slot(j) * vs + col; }
};

struct SeqLocator {
  const float* kb;  // first key row of the sequence, kv head column applied
  const float* vb;
  int64_t ks, vs;
  __device__ const float* k(int j) const { return kb + (int64_t)j * ks; }
  __device__ const float* v(int j) const { return vb + (int64_t)j * vs; }
};

// smem: q[hd] | scores[ctx] | partial acc [groups][hd]
template <bool VEC, typename Loc>
__device__ void attend(const float* q, const Loc& loc, int ctx, int hd, float scale, float* out) {
  extern __shared__ float smem[];
  __shared__ float red[32];
  float* qs = smem;
  float* sc = smem + hd;
  float* part = sc + ctx;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[d];
  __syncthreads();
  float mx = -FLT_MAX;
  for (int j = threadIdx.x; j < ctx; j += blockDim.x) {
    const float* kr = loc.k(j);
    float dot = 0.f;
    if (VEC) {
      for (int d = 0; d < hd; d += 4) {
        float4 k4 = *reinterpret_cast<const float4*>(kr + d);
        dot += qs[d] * k4.x + qs[d + 1] * k4.y + qs[d + 2] * k4.z + qs[d + 3] * k4.w;
      }
    } else {
      for (int d = 0; d < hd; ++d) dot += qs[d] * kr[d];
    }
    dot *= scale;
    sc[j] = dot;
    mx = fmaxf(mx, dot);
  }
  mx = block_reduce(mx, true, red);
  float sum = 0.f;
  for (int j = threadIdx.x; j < ctx; j += blockDim.x) {
    float p = expf(sc[j] - mx);
    sc[j] = p;
    sum += p;
  }
  sum = block_reduce(sum, false, red);  // its barriers also order the sc writes before the reads
  const int groups = blockDim.x / hd > 0 ? blockDim.x / hd : 1;
  const int g = threadIdx.x / hd;
  const int step = blockDim.x < hd ? blockDim.x : hd;
  if (g < groups) {
    for (int d0 = threadIdx.x % hd; d0 < hd; d0 += step) {
      float acc = 0.f;
      for (int j = g; j < ctx; j += groups) acc += sc[j] * loc.v(j)[d0];
      part[g * hd + d0] = acc;
    }
  }
  __syncthreads();
  const float inv = 1.f / sum;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int gg = 0; gg < groups; ++gg) acc += part[gg * hd + d];
    out[d] = acc * inv;
  }
}

template <bool VEC>
__global__ void paged_attention_k(PagedArgs a) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  const int t = blockIdx.x, h = blockIdx.y;
  const int seq = a.token_seq[t];
  const int ctx = a.token_pos[t] + 1;
  const int kvh = h / (a.heads / a.kv_heads);
  PagedLocator loc{a.k_cache.p,
                   a.v_cache.p,
                   a.k_cache.stride,
                   a.v_cache.stride,
                   a.block_table + a.block_table_start[seq],
                   a.block_size,
                   kvh * a.head_dim};
  attend<VEC>(a.q.p + (int64_t)t * a.q.stride + (int64_t)h * a.head_dim, loc, ctx, a.head_dim,
              a.scale, a.out.p + (int64_t)t * a.out.stride + (int64_t)h * a.head_dim);
}

// 16 warps x 8 keys in flight per lane group: a 160-position decode context is two rounds of
// loads per pass (256 threads x 4 keys took 15.8 us a call at B=1, H100 round 2: five rounds).
constexpr int kRowThreads = 512;
constexpr int kRowUnroll = 8;

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// LPK = head_dim / 4 lanes per key (a power of two <= 32); 32 / LPK keys per warp step.
// smem: scores[ctx] | slot[ctx] (int) | part[warps][hd].
template <int LPK>
__global__ void __launch_bounds__(kRowThreads) paged_rows_k(PagedArgs a) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  extern __shared__ float smem[];
  __shared__ float red[32];
  constexpr int kKeysPerWarp = 32 / LPK;
  constexpr int kWarps = kRowThreads / 32;
  constexpr int kStride = kWarps * kKeysPerWarp;  // keys per block step
  const int hd = LPK * 4;
  const int t = blockIdx.x, h = blockIdx.y;
  const int seq = a.token_seq[t];
  const int ctx = a.token_pos[t] + 1;
  const int kvh = h / (a.heads / a.kv_heads);
  const int32_t* table = a.block_table + a.block_table_start[seq];
  float* sc = smem;
  int* slot = reinterpret_cast<int*>(sc + ctx);
  float* part = sc + (2 * ctx + 3) / 4 * 4;  // 16-byte aligned for the float4 stores
  for (int j = threadIdx.x; j < ctx; j += kRowThreads)
    slot[j] = table[j / a.block_size] * a.block_size + j % a.block_size;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int sub = lane / LPK, dl = lane % LPK;
  const float4 q4 =
      *reinterpret_cast<const float4*>(a.q.p + (int64_t)t * a.q.stride + (int64_t)h * hd + dl * 4);
  const float* kbase = a.k_cache.p + (int64_t)kvh * hd + dl * 4;
  const float* vbase = a.v_cache.p + (int64_t)kvh * hd + dl * 4;
  __syncthreads();
  // q.k: U keys per lane group in flight, hd/4 lanes per key, reduced within the group. The
  // first step's V rows are requested with its K rows: they do not depend on the scores, and a
  // decode row's context is mostly that one step (128 keys at head_dim 128), so p.V then waits
  // on no load of its own.
  float mx = -FLT_MAX;
  const int jw_first = warp * kKeysPerWarp;
  float4 v_first[kRowUnroll];
  // The loop runs on the warp's first key (uniform: every lane takes part in the shuffles).
  for (int jw = jw_first; jw < ctx; jw += kStride * kRowUnroll) {
    const int j0 = jw + sub;
    float4 k4[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int j = j0 + u * kStride;
      k4[u] = j < ctx
                  ? *reinterpret_cast<const float4*>(kbase + (int64_t)slot[j] * a.k_cache.stride)
                  : make_float4(0, 0, 0, 0);
    }
    if (jw == jw_first) {
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int j = j0 + u * kStride;
        v_first[u] =
            j < ctx ? *reinterpret_cast<const float4*>(vbase + (int64_t)slot[j] * a.v_cache.stride)
                    : make_float4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      float d = dot4(q4, k4[u]);
#pragma unroll
      for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      d *= a.scale;
      const int j = j0 + u * kStride;
      if (j < ctx) {
        if (dl == 0) sc[j] = d;
        mx = fmaxf(mx, d);
      }
    }
  }
  mx = block_reduce(mx, true, red);  // its barriers also publish sc
  float sum = 0.f;
  for (int j = threadIdx.x; j < ctx; j += kRowThreads) {
    const float p = expf(sc[j] - mx);
    sc[j] = p;
    sum += p;
  }
  sum = block_reduce(sum, false, red);
  // p.V: each lane group accumulates its keys' weighted rows, then the groups and warps add up.
  float4 acc = make_float4(0, 0, 0, 0);
  // The loop runs on the warp's first key (uniform: every lane takes part in the shuffles).
  for (int jw = jw_first; jw < ctx; jw += kStride * kRowUnroll) {
    const int j0 = jw + sub;
    float4 v4[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int j = j0 + u * kStride;
      v4[u] = jw == jw_first ? v_first[u]
              : j < ctx
                  ? *reinterpret_cast<const float4*>(vbase + (int64_t)slot[j] * a.v_cache.stride)
                  : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int j = j0 + u * kStride;
      const float p = j < ctx ? sc[j] : 0.f;
      acc.x += p * v4[u].x, acc.y += p * v4[u].y, acc.z += p * v4[u].z, acc.w += p * v4[u].w;
    }
  }
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, o);
    acc.y += __shfl_xor_sync(0xffffffffu, acc.y, o);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, o);
    acc.w += __shfl_xor_sync(0xffffffffu, acc.w, o);
  }
  if (sub == 0) *reinterpret_cast<float4*>(part + warp * hd + dl * 4) = acc;
  __syncthreads();
  const float inv = 1.f / sum;
  float* out = a.out.p + (int64_t)t * a.out.stride + (int64_t)h * hd;
  for (int d = threadIdx.x; d < hd; d += kRowThreads) {
    float r = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) r += part[w * hd + d];
    out[d] = r * inv;
  }
}

template <bool VEC>
__global__ void seq_attention_k(SeqAttnArgs a) {
  const int t = blockIdx.x, h = blockIdx.y;
  const int seq = a.token_seq[t];
  const int first = a.seq_start[seq];
  const int last = a.causal ? t : a.seq_start[seq + 1] - 1;
  const int kvh = h / (a.heads / a.kv_heads);
  SeqLocator loc{a.k.p + (int64_t)first * a.k.stride + (int64_t)kvh * a.head_dim,
                 a.v.p + (int64_t)first * a.v.stride + (int64_t)kvh * a.head_dim, a.k.stride,
                 a.v.stride};
  attend<VEC>(a.q.p + (int64_t)t * a.q.stride + (int64_t)h * a.head_dim, loc, last - first + 1,
              a.head_dim, a.scale, a.out.p + (int64_t)t * a.out.stride + (int64_t)h * a.head_dim);
}

__global__ void kv_store_k(View k, View v, View kc, View vc, const int32_t* slots) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < k.rows * k.cols;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / k.cols, c = i % k.cols;
    int64_t sl = slots[t];
    kc.p[sl * kc.stride + c] = k.p[t * k.stride + c];
    vc.p[sl * vc.stride + c] = v.p[t * v.stride + c];
  }
}

size_t attend_smem(int ctx, int hd) {
  int groups = kThreads / hd > 0 ? kThreads / hd : 1;
  return sizeof(float) * (hd + ctx + groups * hd);
}

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 227 * 1024)
    throw std::invalid_argument("cuda attention: context too long for one block");
  if (bytes > 48 * 1024)
    ISC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

bool aligned4(const View& v) {
  return reinterpret_cast<uintptr_t>(v.p) % 16 == 0 && v.stride % 4 == 0;
}

}  // namespace

void kv_store(View k, View v, View k_cache, View v_cache, const int32_t* slots, cudaStream_t s) {
  int64_t n = k.rows * k.cols;
  if (n <= 0) return;
  int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4224));
  launch_pdl(kv_store_k, blocks, 256, 0, s, k, v, k_cache, v_cache, slots);
  ISC_LAUNCH();
}

template <int LPK>
void launch_rows(const PagedArgs& a, cudaStream_t s) {
  const size_t smem = sizeof(float) * ((2 * static_cast<size_t>(a.max_context) + 3) / 4 * 4 +
                                       (kRowThreads / 32) * static_cast<size_t>(a.head_dim));
  allow_smem(paged_rows_k<LPK>, smem);
  const dim3 grid(static_cast<unsigned>(a.q.rows), a.heads);
  launch_pdl(paged_rows_k<LPK>, grid, kRowThreads, smem, s, a);
  ISC_LAUNCH();
}

void paged_attention(const PagedArgs& a, cudaStream_t s) {
  if (a.q.rows <= 0) return;
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0)
    throw std::invalid_argument("cuda paged_attention: heads % kv_heads must be 0");
  // The row kernel: 16-byte loads of q, K, V and out at head offsets (all views 16-byte aligned).
  if (aligned4(a.k_cache) && aligned4(a.v_cache) && aligned4(a.q) && a.head_dim % 4 == 0) {
    switch (a.head_dim) {
      case 128:
        return launch_rows<32>(a, s);
      case 64:
        return launch_rows<16>(a, s);
      case 32:
        return launch_rows<8>(a, s);
      case 16:
        return launch_rows<4>(a, s);
      default:
        break;
    }
  }
  const size_t smem = attend_smem(a.max_context, a.head_dim);
  const dim3 grid(static_cast<unsigned>(a.q.rows), a.heads);
  if (a.head_dim % 4 == 0 && aligned4(a.k_cache)) {
    allow_smem(paged_attention_k<true>, smem);
    launch_pdl(paged_attention_k<true>, grid, kThreads, smem, s, a);
  } else {
    allow_smem(paged_attention_k<false>, smem);
    launch_pdl(paged_attention_k<false>, grid, kThreads, smem, s, a);
  }
  ISC_LAUNCH();
}

void seq_attention(const SeqAttnArgs& a, cudaStream_t s) {
  if (a.q.rows <= 0) return;
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0)
    throw std::invalid_argument("cuda attention: heads % kv_heads must be 0");
  const size_t smem = attend_smem(a.max_context, a.head_dim);
  const dim3 grid(static_cast<unsigned>(a.q.rows), a.heads);
  if (a.head_dim % 4 == 0 && aligned4(a.k)) {
    allow_smem(seq_attention_k<true>, smem);
    seq_attention_k<true><<<grid, kThreads, smem, s>>>(a);
  } else {
    allow_smem(seq_attention_k<false>, smem);
    seq_attention_k<false><<<grid, kThreads, smem, s>>>(a);
  }
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
