// MoE router on the device: gate + top-k (a warp per token), then one block that
// builds the per-expert histogram, enforces capacity in (token, choice) order,
// scans the kept counts into offsets and writes the permutation. Keeping it all
// on the device means the decode step needs no host round trip per MoE layer;
// the host reads `routed`/`kept`/`stats` (the expert-load signal) once per step.
#include <cfloat>

#include "check.hpp"
#include "kernels.hpp"

namespace inferscope::engine::cuda {
namespace {

constexpr int kTopkWarps = 8;
constexpr int kAssignThreads = 1024;
constexpr int kMaxExperts = 1024;

__device__ __forceinline__ float gate_of(float logit, float mx, float inv_sum, bool sigmoid) {
  return sigmoid ? 1.f / (1.f + expf(-logit)) : expf(logit - mx) * inv_sum;
}

// Better = larger score, ties to the lower expert index (std::partial_sort with
// the CPU backend's comparator does the same).
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

__global__ void topk_k(const float* logits, const float* bias, RouterParams p, int cand,
                       int32_t* cand_expert, float* cand_weight) {
  extern __shared__ float sel_all[];
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int t = blockIdx.x * kTopkWarps + warp;
  if (t >= p.tokens) return;
  float* sel = sel_all + warp * p.experts;
  const float* row = logits + (int64_t)t * p.experts;
  float mx = -FLT_MAX;
  for (int e = lane; e < p.experts; e += 32) mx = fmaxf(mx, row[e]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
  if (!p.sigmoid)
    for (int e = lane; e < p.experts; e += 32) sum += expf(row[e] - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  float inv_sum = p.sigmoid ? 1.f : 1.f / sum;
  for (int e = lane; e < p.experts; e += 32)
    sel[e] = gate_of(row[e], mx, inv_sum, p.sigmoid) + (bias ? bias[e] : 0.f);
  __syncwarp();
  float chosen_sum = 0.f;
  for (int j = 0; j < cand; ++j) {
    float best = -FLT_MAX;
    int bi = 0x7fffffff;
    for (int e = lane; e < p.experts; e += 32)
      if (better(sel[e], e, best, bi)) best = sel[e], bi = e;
    for (int o = 16; o > 0; o >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ob, oi, best, bi)) best = ob, bi = oi;
    }
    if (bi >= p.experts) bi = 0;  // only with NaN logits; keeps indices in range
    float g = gate_of(row[bi], mx, inv_sum, p.sigmoid);
    if (j < p.top_k) chosen_sum += g;
    if (lane == 0) {
      cand_expert[(int64_t)t * cand + j] = bi;
      cand_weight[(int64_t)t * cand + j] = g;
      sel[bi] = -FLT_MAX;
    }
    __syncwarp();
  }
  // Renormalise over the k first choices; reroute candidates share the scale.
  float scale = p.route_scale;
  if (p.renormalize && chosen_sum > 0.f) scale /= chosen_sum;
  for (int j = lane; j < cand; j += 32) cand_weight[(int64_t)t * cand + j] *= scale;
}

__device__ void scan_offsets(const int* kept, int32_t* offsets, int experts) {
  if (threadIdx.x == 0) {
    int run = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = run;
      run += kept[e];
    }
    offsets[experts] = run;
  }
}

// Capacity in (token, choice) order without re-routing: ranks within each
// 1024-assignment chunk come from warp match + per-warp counts, so the result is
// the sequential order's, deterministically.
__global__ void assign_drop_k(RouterParams p, int cand, RouterBuffers b) {
  extern __shared__ int smem[];
  int* warp_cnt = smem;                       // [32][E]
  int* cnt = smem + 32 * p.experts;           // [E] assignments seen so far
  int* kept = cnt + p.experts;                // [E]
  __shared__ int dropped;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) cnt[e] = 0;
  if (threadIdx.x == 0) dropped = 0;
  __syncthreads();
  const int total = p.tokens * p.top_k;
  for (int base = 0; base < total; base += blockDim.x) {
    for (int e = lane; e < p.experts; e += 32) warp_cnt[warp * p.experts + e] = 0;
    __syncwarp();
    int a = base + threadIdx.x;
    int e = -1;
    if (a < total) e = b.cand_expert[(int64_t)(a / p.top_k) * cand + a % p.top_k];
    unsigned peers = __match_any_sync(0xffffffffu, e);
    int rank = __popc(peers & ((1u << lane) - 1u));
    if (e >= 0 && rank == 0) warp_cnt[warp * p.experts + e] = __popc(peers);
    __syncthreads();
    int pos = 0;
    if (e >= 0) {
      pos = cnt[e] + rank;
      for (int w = 0; w < warp; ++w) pos += warp_cnt[w * p.experts + e];
    }
    __syncthreads();
    for (int x = threadIdx.x; x < p.experts; x += blockDim.x) {
      int s = 0;
      for (int w = 0; w < 32; ++w) s += warp_cnt[w * p.experts + x];
      cnt[x] += s;
    }
    if (a < total) {
      bool keep = p.capacity <= 0 || pos < p.capacity;
      b.topk_expert[a] = keep ? e : -1;
      b.topk_slot[a] = keep ? pos : -1;  // position within e for now
      b.topk_weight[a] = b.cand_weight[(int64_t)(a / p.top_k) * cand + a % p.top_k];
      if (!keep) atomicAdd(&dropped, 1);
    }
    __syncthreads();
  }
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    kept[e] = p.capacity > 0 ? min(cnt[e], p.capacity) : cnt[e];
    b.routed[e] = cnt[e];
    b.kept[e] = kept[e];
  }
  __syncthreads();
  scan_offsets(kept, b.offsets, p.experts);
  if (threadIdx.x == 0) {
    b.stats[0] = dropped;
    b.stats[1] = 0;
  }
  __syncthreads();
  for (int a = threadIdx.x; a < total; a += blockDim.x) {
    int e = b.topk_expert[a];
    if (e < 0) continue;
    int slot = b.offsets[e] + b.topk_slot[a];
    b.topk_slot[a] = slot;
    b.perm_token[slot] = a / p.top_k;
  }
}

// With re-routing the outcome of each assignment depends on every earlier one,
// so one thread walks them in (token, choice) order, as the CPU backend does: an
// assignment over capacity moves to the token's next candidate (ranks k, k+1, ..)
// that still has room and is not already one of its experts, else it is dropped.
__global__ void assign_reroute_k(RouterParams p, int cand, RouterBuffers b) {
  extern __shared__ int smem[];
  int* cnt = smem;               // [E] accepted so far
  int* want = smem + p.experts;  // [E] first-choice demand (the histogram)
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) cnt[e] = 0, want[e] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    int dropped = 0, rerouted = 0;
    for (int t = 0; t < p.tokens; ++t) {
      const int32_t* ce = b.cand_expert + (int64_t)t * cand;
      const float* cw = b.cand_weight + (int64_t)t * cand;
      int next = p.top_k;
      for (int j = 0; j < p.top_k; ++j) {
        int a = t * p.top_k + j;
        int e = ce[j];
        ++want[e];
        b.topk_weight[a] = cw[j];
        if (p.capacity <= 0 || cnt[e] < p.capacity) {
          b.topk_expert[a] = e;
          b.topk_slot[a] = cnt[e]++;
          continue;
        }
        int moved = -1;
        while (next < cand && moved < 0) {
          int e2 = ce[next++];
          if (cnt[e2] < p.capacity) moved = e2;
        }
        if (moved >= 0) {
          ++rerouted;
          b.topk_expert[a] = moved;
          b.topk_slot[a] = cnt[moved]++;
        } else {
          ++dropped;
          b.topk_expert[a] = -1;
          b.topk_slot[a] = -1;
        }
      }
    }
    b.stats[0] = dropped;
    b.stats[1] = rerouted;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    b.routed[e] = want[e];
    b.kept[e] = cnt[e];
  }
  __syncthreads();
  scan_offsets(cnt, b.offsets, p.experts);
  __syncthreads();
  const int total = p.tokens * p.top_k;
  for (int a = threadIdx.x; a < total; a += blockDim.x) {
    int e = b.topk_expert[a];
    if (e < 0) continue;
    int slot = b.offsets[e] + b.topk_slot[a];
    b.topk_slot[a] = slot;
    b.perm_token[slot] = a / p.top_k;
  }
}

__global__ void permute_k(const __nv_bfloat16* x, const int32_t* perm, const int32_t* offsets,
                          int experts, __nv_bfloat16* xp, int dim) {
  int rows = offsets[experts];
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const __nv_bfloat16* src = x + (int64_t)perm[r] * dim;
    __nv_bfloat16* dst = xp + (int64_t)r * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
  }
}

// A fixed loop order over the choices keeps the sum deterministic (no atomics).
__global__ void unpermute_k(const float* yp, const int32_t* slot, const float* weight, float* out,
                            int top_k, int dim, bool accumulate) {
  int t = blockIdx.x;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float acc = accumulate ? out[(int64_t)t * dim + i] : 0.f;
    for (int j = 0; j < top_k; ++j) {
      int sl = slot[t * top_k + j];
      if (sl >= 0) acc += weight[t * top_k + j] * yp[(int64_t)sl * dim + i];
    }
    out[(int64_t)t * dim + i] = acc;
  }
}

}  // namespace

void router(const float* logits, const float* bias, const RouterParams& p, const RouterBuffers& b,
            cudaStream_t s) {
  if (p.experts <= 0 || p.experts > kMaxExperts || p.top_k <= 0 || p.top_k > p.experts)
    throw std::invalid_argument("router: need 0 < top_k <= experts <= 1024");
  if (p.tokens <= 0) {
    ISC_CUDA(cudaMemsetAsync(b.routed, 0, sizeof(int32_t) * p.experts, s));
    ISC_CUDA(cudaMemsetAsync(b.kept, 0, sizeof(int32_t) * p.experts, s));
    ISC_CUDA(cudaMemsetAsync(b.offsets, 0, sizeof(int32_t) * (p.experts + 1), s));
    ISC_CUDA(cudaMemsetAsync(b.stats, 0, sizeof(int32_t) * 2, s));
    return;
  }
  int cand = p.top_k;
  if (p.reroute && p.capacity > 0) {
    cand = p.candidates > 0 ? p.candidates : p.top_k + 2;
    cand = std::min(std::max(cand, p.top_k), p.experts);
  }
  size_t topk_smem = sizeof(float) * kTopkWarps * p.experts;
  if (topk_smem > 48 * 1024)
    ISC_CUDA(cudaFuncSetAttribute(topk_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(topk_smem)));
  topk_k<<<(p.tokens + kTopkWarps - 1) / kTopkWarps, kTopkWarps * 32, topk_smem, s>>>(
      logits, bias, p, cand, b.cand_expert, b.cand_weight);
  ISC_LAUNCH();
  if (p.reroute && p.capacity > 0) {
    assign_reroute_k<<<1, kAssignThreads, sizeof(int) * 2 * p.experts, s>>>(p, cand, b);
  } else {
    size_t smem = sizeof(int) * (32 + 2) * p.experts;
    if (smem > 48 * 1024)
      ISC_CUDA(cudaFuncSetAttribute(assign_drop_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
    assign_drop_k<<<1, kAssignThreads, smem, s>>>(p, cand, b);
  }
  ISC_LAUNCH();
}

void permute_rows(const __nv_bfloat16* x, const int32_t* perm_token, const int32_t* offsets,
                  int experts, __nv_bfloat16* xp, int max_rows, int dim, cudaStream_t s) {
  if (max_rows <= 0) return;
  permute_k<<<std::min(max_rows, 4096), 128, 0, s>>>(x, perm_token, offsets, experts, xp, dim);
  ISC_LAUNCH();
}

void unpermute_combine(const float* yp, const int32_t* topk_slot, const float* topk_weight,
                       float* out, int tokens, int top_k, int dim, bool accumulate,
                       cudaStream_t s) {
  if (tokens <= 0) return;
  unpermute_k<<<tokens, 128, 0, s>>>(yp, topk_slot, topk_weight, out, top_k, dim, accumulate);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
