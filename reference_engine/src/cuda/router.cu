// MoE router and permutation on the device.
//
// Gate + ranking: a warp per token. Capacity: one block walks the assignments
// in (token, choice) order — the CPU backend's order — in chunks of 1024; each
// assignment's position within its expert comes from __match_any_sync ranks
// plus per-warp counts, so the result equals the sequential one exactly and the
// per-expert histogram (routed / kept) is built on the device as a by-product.
// With re-routing every decision depends on all earlier ones, so one thread
// walks them (the engine's batches are at most a few thousand assignments).
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <stdexcept>

#include "check.hpp"
#include "inferscope/engine/capacity.hpp"
#include "kernels.hpp"
#include "pdl.cuh"

namespace inferscope::engine::cuda {
namespace {

constexpr int kRankWarps = 8;
constexpr int kBlock = 1024;
constexpr int kMaxExperts = 1024;

extern __shared__ __align__(16) unsigned char dyn_smem[];

__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

// Ranks the top R experts of each token by score + bias (ties to the lower
// index, as the CPU's stable sort does) and stores their normalised weights.
// One warp ranks token t; ks is the warp's [2E] floats of shared memory.
__device__ void rank_token(int t, float* ks, const View& logits, const float* bias,
                           const RouterParams& p, int R, int32_t* rank_expert, float* rank_weight) {
  const int lane = threadIdx.x & 31;
  const int E = p.experts;
  float* key = ks;
  float* score = key + E;
  const float* row = logits.p + (int64_t)t * logits.stride;
  if (p.sigmoid) {
    for (int e = lane; e < E; e += 32) score[e] = 1.f / (1.f + expf(-row[e]));
  } else {
    float mx = -FLT_MAX;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) {
      float v = expf(row[e] - mx);
      score[e] = v;
      sum += v;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int e = lane; e < E; e += 32) score[e] /= sum;
  }
  for (int e = lane; e < E; e += 32) key[e] = score[e] + (bias ? bias[e] : 0.f);
  __syncwarp();
  float denom = 0.f;
  int32_t* re = rank_expert + (int64_t)t * R;
  float* rw = rank_weight + (int64_t)t * R;
  for (int j = 0; j < R; ++j) {
    float best = -FLT_MAX;
    int bi = 0x7fffffff;
    for (int e = lane; e < E; e += 32)
      if (better(key[e], e, best, bi)) best = key[e], bi = e;
    for (int o = 16; o > 0; o >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ob, oi, best, bi)) best = ob, bi = oi;
    }
    if (bi >= E) {  // every remaining key is -inf/NaN: take the lowest unused index
      bi = 0;
      while (bi < E && key[bi] == -INFINITY) ++bi;
      if (bi >= E) bi = 0;
    }
    if (j < p.top_k) denom += score[bi];
    if (lane == 0) {
      re[j] = bi;
      rw[j] = score[bi];
      key[bi] = -INFINITY;  // taken
    }
    __syncwarp();
  }
  float norm = (p.renormalize && denom > 0.f) ? p.scaling / denom : p.scaling;
  for (int j = lane; j < R; j += 32) rw[j] *= norm;
}

// The parameters of the rows that count: with p.valid, the first *valid tokens
// and the capacity for that many (expert_capacity_for(), as on the host).
__device__ RouterParams effective(const RouterParams& p) {
  RouterParams q = p;
  if (p.valid != nullptr) {
    q.tokens = min(*p.valid, p.tokens);
    if (p.capacity_factor > 0.f)
      q.capacity = engine::expert_capacity_for(p.capacity_factor, q.tokens, p.top_k, p.experts);
  }
  return q;
}

// Padding rows (past the valid ones): no expert, no weight.
__device__ void clear_padding(const RouterParams& p, int valid_tokens, const RouterBuffers& b) {
  for (int a = valid_tokens * p.top_k + threadIdx.x; a < p.tokens * p.top_k; a += blockDim.x) {
    b.assign_expert[a] = -1;
    b.assign_weight[a] = 0.f;
  }
}

__global__ void rank_k(View logits, const float* bias, RouterParams p, int R, int32_t* rank_expert,
                       float* rank_weight) {
  float* smem = reinterpret_cast<float*>(dyn_smem);
  const int warp = threadIdx.x >> 5;
  const int t = blockIdx.x * kRankWarps + warp;
  if (t >= effective(p).tokens) return;
  rank_token(t, smem + warp * 2 * p.experts, logits, bias, p, R, rank_expert, rank_weight);
}

// Walks assignments first..total-1 in order with a 1024-thread block; for each
// one with expert e >= 0 calls visit(a, e, pos) where pos = number of earlier
// assignments with the same expert (those before `first` given per expert in
// `before`, else none). `cnt` [E] ends holding the totals.
// smem: warp_cnt [32][E] then cnt [E].
template <typename GetExpert, typename Visit>
__device__ void ordered_rank(int total, int E, int* smem, GetExpert get, Visit visit, int first = 0,
                             const int32_t* before = nullptr) {
  int* warp_cnt = smem;
  int* cnt = smem + 32 * E;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (first == 0 && before == nullptr && total <= 32) {
    // A decode step's few assignments (B=1 top-8: 8) fit one warp: lane a holds assignment a,
    // so its position is its rank among the lanes with the same expert, and warp 0 does it all
    // without the block's per-warp counts and their barriers. The same positions as below.
    if (warp == 0) {
      for (int x = lane; x < E; x += 32) cnt[x] = 0;
      __syncwarp();
      const int e = lane < total ? get(lane) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      const int rank = __popc(peers & ((1u << lane) - 1u));
      if (e >= 0 && rank == 0) cnt[e] = __popc(peers);
      __syncwarp();
      if (e >= 0) visit(lane, e, rank);
    }
    __syncthreads();
    return;
  }
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = before ? before[e] : 0;
  __syncthreads();
  for (int base = first; base < total; base += blockDim.x) {
    for (int e = lane; e < E; e += 32) warp_cnt[warp * E + e] = 0;
    __syncwarp();
    const int a = base + threadIdx.x;
    const int e = a < total ? get(a) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (e >= 0 && rank == 0) warp_cnt[warp * E + e] = __popc(peers);
    __syncthreads();
    int pos = 0;
    if (e >= 0) {
      pos = cnt[e] + rank;
      for (int w = 0; w < warp; ++w) pos += warp_cnt[w * E + e];
    }
    __syncthreads();
    for (int x = threadIdx.x; x < E; x += blockDim.x) {
      int sum = 0;
      for (int w = 0; w < 32; ++w) sum += warp_cnt[w * E + x];
      cnt[x] += sum;
    }
    if (e >= 0) visit(a, e, pos);
    __syncthreads();
  }
}

// offsets[0] = 0, offsets[e + 1] = offsets[e] + kept(e): warp 0 scans 32
// experts at a time. Callers have synchronised the block after kept is final.
template <typename Kept>
__device__ void write_offsets(int E, int32_t* offsets, Kept kept) {
  if (offsets == nullptr || threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  int carry = 0;
  for (int base = 0; base < E; base += 32) {
    const int e = base + lane;
    int v = e < E ? kept(e) : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += n;
    }
    if (e < E) offsets[e + 1] = carry + v;
    carry += __shfl_sync(0xffffffffu, v, 31);
  }
  if (lane == 0) offsets[0] = 0;
}

// [Long lists] A prefill's 65,536 assignments took the single block above 64
// steps of three barriers each, twice per MoE layer (capacity and permutation).
// Long lists are ranked in chunks of kBlock, a block each: chunk_counts_k
// counts each chunk's experts, scan_chunks() turns the counts into each chunk's
// ranks-before per expert, and the chunk's block runs ordered_rank from there:
// the same positions as one block walking every assignment in order.
struct RankedExpert {  // the router's ranked choices (no re-routing: R = k) of the valid tokens
  const int32_t* rank_expert;
  const int32_t* valid;  // RouterParams::valid: rows past it were not ranked
  int top_k;
  __device__ int operator()(int a) const {
    return valid && a >= *valid * top_k ? -1 : rank_expert[a];
  }
};
struct AssignedExpert {  // the capacity step's assignment, -1 when dropped
  IView ae;
  int experts;
  __device__ int operator()(int a) const {
    const int k = static_cast<int>(ae.cols);
    const int e = ae.p[(int64_t)(a / k) * ae.stride + a % k];
    return e < experts ? e : -1;
  }
};

// chunk_counts [chunks][E]: assignments of each expert in each chunk of kBlock.
template <typename GetExpert>
__global__ void chunk_counts_k(int total, int E, GetExpert get, int32_t* chunk_counts) {
  int* cnt = reinterpret_cast<int*>(dyn_smem);
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  const int a = blockIdx.x * kBlock + threadIdx.x;
  const int e = a < total ? get(a) : -1;
  if (e >= 0) atomicAdd(&cnt[e], 1);
  __syncthreads();
  for (int x = threadIdx.x; x < E; x += blockDim.x)
    chunk_counts[(int64_t)blockIdx.x * E + x] = cnt[x];
}

// In one block: each chunk's counts become the assignments of that expert in
// earlier chunks; the totals go to smem totals [E].
__device__ void scan_chunks(int chunks, int E, int32_t* chunk_counts, int* totals) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int run = 0;
    for (int c = 0; c < chunks; ++c) {
      const int v = chunk_counts[(int64_t)c * E + e];
      chunk_counts[(int64_t)c * E + e] = run;
      run += v;
    }
    totals[e] = run;
  }
  __syncthreads();
}

__global__ void scan_chunks_k(int chunks, int E, int32_t* chunk_counts) {
  scan_chunks(chunks, E, chunk_counts, reinterpret_cast<int*>(dyn_smem));
}

__device__ void assign_drop(const RouterParams& p, const RouterBuffers& b, int* smem) {
  __shared__ int dropped;
  const int E = p.experts, k = p.top_k;
  if (threadIdx.x == 0) dropped = 0;
  ordered_rank(
      p.tokens * k, E, smem, [&](int a) { return b.rank_expert[a]; },
      [&](int a, int e, int pos) {
        bool keep = p.capacity <= 0 || pos < p.capacity;
        b.assign_expert[a] = keep ? e : -1;
        b.assign_weight[a] = keep ? b.rank_weight[a] : 0.f;
        if (!keep) atomicAdd(&dropped, 1);
      });
  const int* cnt = smem + 32 * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    b.counts[e] = cnt[e];
    b.counts[E + e] = p.capacity > 0 ? min(cnt[e], p.capacity) : cnt[e];
  }
  write_offsets(E, b.offsets,
                [&](int e) { return p.capacity > 0 ? min(cnt[e], p.capacity) : cnt[e]; });
  if (threadIdx.x == 0) {
    b.counts[2 * E] = dropped;
    b.counts[2 * E + 1] = 0;
  }
}

__global__ void assign_drop_k(RouterParams p, RouterBuffers b) {
  const RouterParams q = effective(p);
  clear_padding(p, q.tokens, b);
  assign_drop(q, b, reinterpret_cast<int*>(dyn_smem));
}

// Long lists: the counts, offsets and drops come from the chunk totals (kept =
// min(routed, capacity)); the chunks' blocks then keep or drop each assignment.
__global__ void assign_totals_k(RouterParams p, RouterBuffers b, int chunks) {
  const RouterParams q = effective(p);
  int* totals = reinterpret_cast<int*>(dyn_smem);
  __shared__ int dropped;
  if (threadIdx.x == 0) dropped = 0;
  scan_chunks(chunks, q.experts, b.chunk_counts, totals);
  const int E = q.experts;
  auto kept = [&](int e) { return q.capacity > 0 ? min(totals[e], q.capacity) : totals[e]; };
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    b.counts[e] = totals[e];
    b.counts[E + e] = kept(e);
    if (totals[e] > kept(e)) atomicAdd(&dropped, totals[e] - kept(e));
  }
  __syncthreads();
  write_offsets(E, b.offsets, kept);
  if (threadIdx.x == 0) {
    b.counts[2 * E] = dropped;
    b.counts[2 * E + 1] = 0;
  }
}

__global__ void assign_chunks_k(RouterParams p, RouterBuffers b) {
  const RouterParams q = effective(p);
  if (blockIdx.x == 0) clear_padding(p, q.tokens, b);
  const int first = blockIdx.x * kBlock;
  ordered_rank(
      min(q.tokens * q.top_k, first + kBlock), q.experts, reinterpret_cast<int*>(dyn_smem),
      RankedExpert{b.rank_expert, p.valid, p.top_k},
      [&](int a, int e, int pos) {
        const bool keep = q.capacity <= 0 || pos < q.capacity;
        b.assign_expert[a] = keep ? e : -1;
        b.assign_weight[a] = keep ? b.rank_weight[a] : 0.f;
      },
      first, b.chunk_counts + (int64_t)blockIdx.x * q.experts);
}

__device__ void permute_index_block(IView ae, const int32_t* offsets, int E, IView perm,
                                    int32_t* slot_of, View x, View xp, int64_t rows, int* smem);

// Decode-sized batches: ranking and capacity in one block, one launch; with b.permute.perm.p
// set, the permutation too (permute_index's work on the assignments just made: the same block,
// so a barrier publishes them).
__global__ void route_small_k(View logits, const float* bias, RouterParams padded,
                              RouterBuffers b) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  const RouterParams p = effective(padded);
  clear_padding(padded, p.tokens, b);
  float* ks = reinterpret_cast<float*>(dyn_smem);
  int* rs = reinterpret_cast<int*>(dyn_smem + sizeof(float) * 32 * 2 * p.experts);
  const int warp = threadIdx.x >> 5;
  for (int t = warp; t < p.tokens; t += 32)
    rank_token(t, ks + warp * 2 * p.experts, logits, bias, p, p.top_k, b.rank_expert,
               b.rank_weight);
  __syncthreads();
  assign_drop(p, b, rs);
  const PermuteOut& po = b.permute;
  if (po.perm.p == nullptr) return;
  __syncthreads();  // the assignments and offsets (global, written by this block) are read next
  const IView ae{b.assign_expert, padded.tokens, padded.top_k, padded.top_k};
  permute_index_block(ae, b.offsets, p.experts, po.perm, po.slot_of, po.x, po.xp,
                      int64_t(padded.tokens) * padded.top_k, rs);
}

__global__ void assign_reroute_k(RouterParams padded, int R, RouterBuffers b) {
  const RouterParams p = effective(padded);
  clear_padding(padded, p.tokens, b);
  int* smem = reinterpret_cast<int*>(dyn_smem);
  const int E = p.experts, k = p.top_k;
  int* kept = smem;
  int* routed = smem + E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) kept[e] = 0, routed[e] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    int dropped = 0, rerouted = 0;
    for (int t = 0; t < p.tokens; ++t) {
      const int32_t* re = b.rank_expert + (int64_t)t * R;
      const float* rw = b.rank_weight + (int64_t)t * R;
      int next = k;
      for (int j = 0; j < k; ++j) {
        const int a = t * k + j, e = re[j];
        ++routed[e];
        if (p.capacity <= 0 || kept[e] < p.capacity) {
          ++kept[e];
          b.assign_expert[a] = e;
          b.assign_weight[a] = rw[j];
          continue;
        }
        b.assign_expert[a] = -1;
        b.assign_weight[a] = 0.f;
        while (next < R && kept[re[next]] >= p.capacity) ++next;
        if (next < R) {
          const int r = re[next];
          ++kept[r];
          b.assign_expert[a] = r;
          b.assign_weight[a] = rw[next];
          ++next;
          ++rerouted;
          continue;
        }
        ++dropped;
      }
    }
    b.counts[2 * E] = dropped;
    b.counts[2 * E + 1] = rerouted;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    b.counts[e] = routed[e];
    b.counts[E + e] = kept[e];
  }
  write_offsets(E, b.offsets, [&](int e) { return kept[e]; });
}

// permute_index's work by one block (smem: rank_smem(E) ints): perm and slot_of from the
// assignments and offsets, then (xp.p set) the gather of x's rows into xp.
__device__ void permute_index_block(IView ae, const int32_t* offsets, int E, IView perm,
                                    int32_t* slot_of, View x, View xp, int64_t rows, int* smem) {
  const int k = static_cast<int>(ae.cols);
  if (slot_of) {
    for (int a = threadIdx.x; a < ae.rows * k; a += blockDim.x) slot_of[a] = -1;
    __syncthreads();
  }
  ordered_rank(static_cast<int>(ae.rows) * k, E, smem, AssignedExpert{ae, E},
               [&](int a, int e, int pos) {
                 int row = offsets[e] + pos;
                 if (row < offsets[e + 1]) {
                   perm.p[(int64_t)row * perm.stride] = a;
                   if (slot_of) slot_of[a] = row;
                 }
               });
  if (xp.p == nullptr) return;
  __syncthreads();  // perm, written by this block, is read back below
  rows = min(rows, static_cast<int64_t>(offsets[E]));  // rows may be the bound T * k
  // One block gathers it all: float4 where the rows allow, and U elements per thread with their
  // loads issued before the stores (a decode gather is 8 rows x 2048: 16 dependent
  // perm -> x round trips per thread took ~10 us).
  constexpr int U = 4;
  const bool vec = xp.cols % 4 == 0 && x.stride % 4 == 0 && xp.stride % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(x.p) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(xp.p) % 16 == 0;
  const int64_t w = vec ? xp.cols / 4 : xp.cols;  // items per row
  const int64_t n = rows * w;
  for (int64_t i0 = threadIdx.x; i0 < n; i0 += (int64_t)blockDim.x * U) {
    float4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + (int64_t)u * blockDim.x;
      if (i >= n) continue;
      const int64_t r = i / w, c = i % w;
      const float* src = x.p + (int64_t)(perm.p[r * perm.stride] / k) * x.stride;
      v[u] = vec ? reinterpret_cast<const float4*>(src)[c] : make_float4(src[c], 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + (int64_t)u * blockDim.x;
      if (i >= n) continue;
      const int64_t r = i / w, c = i % w;
      float* dst = xp.p + r * xp.stride;
      if (vec)
        reinterpret_cast<float4*>(dst)[c] = v[u];
      else
        dst[c] = v[u].x;
    }
  }
}

__global__ void permute_index_k(IView ae, const int32_t* offsets, int E, IView perm,
                                int32_t* slot_of, View x, View xp, int64_t rows) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  permute_index_block(ae, offsets, E, perm, slot_of, x, xp, rows, reinterpret_cast<int*>(dyn_smem));
}

// Long lists: each chunk's block ranks its assignments from the chunk's
// ranks-before (chunk_counts after scan_chunks_k).
__global__ void permute_chunks_k(IView ae, const int32_t* offsets, int E, IView perm,
                                 int32_t* slot_of, const int32_t* chunk_counts) {
  const int k = static_cast<int>(ae.cols);
  const int total = static_cast<int>(ae.rows) * k;
  const int first = blockIdx.x * kBlock;
  const int end = min(total, first + kBlock);
  if (slot_of) {
    for (int a = first + threadIdx.x; a < end; a += blockDim.x) slot_of[a] = -1;
    __syncthreads();
  }
  ordered_rank(
      end, E, reinterpret_cast<int*>(dyn_smem), AssignedExpert{ae, E},
      [&](int a, int e, int pos) {
        int row = offsets[e] + pos;
        if (row < offsets[e + 1]) {
          perm.p[(int64_t)row * perm.stride] = a;
          if (slot_of) slot_of[a] = row;
        }
      },
      first, chunk_counts + (int64_t)blockIdx.x * E);
}

__global__ void permute_rows_k(View x, IView perm, int k, int64_t rows, View xp,
                               const int32_t* total) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  if (total) rows = min(rows, static_cast<int64_t>(*total));
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * xp.cols;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / xp.cols, c = i % xp.cols;
    int t = perm.p[r * perm.stride] / k;
    xp.p[r * xp.stride + c] = x.p[(int64_t)t * x.stride + c];
  }
}

// The same gather for long batches (a prefill's 65,536 rows): a block per row, 16-byte columns,
// so one perm load and no division per element (the kernel above divides per float).
__global__ void permute_rows_v4_k(View x, IView perm, int k, int64_t rows, View xp,
                                  const int32_t* total) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  if (total) rows = min(rows, static_cast<int64_t>(*total));
  const int64_t w = xp.cols / 4;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float4* src =
        reinterpret_cast<const float4*>(x.p + (int64_t)(perm.p[r * perm.stride] / k) * x.stride);
    float4* dst = reinterpret_cast<float4*>(xp.p + r * xp.stride);
    for (int64_t c = threadIdx.x; c < w; c += blockDim.x) dst[c] = src[c];
  }
}

__global__ void scatter_slots_k(IView perm, int64_t rows, const int32_t* total, int32_t* slot_of) {
  if (total) rows = min(rows, static_cast<int64_t>(*total));
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows;
       i += (int64_t)gridDim.x * blockDim.x)
    slot_of[perm.p[i * perm.stride]] = static_cast<int32_t>(i);
}

// A thread per output element (token t = blockIdx.y): its k expert rows are read with the
// loads issued before the adds (independent), the sum in j order (deterministic, as the CPU).
// The former block-per-token loop walked a 2048-wide row with 128 threads and a dependent
// slot -> row load per step: 17 us for one decode token (H100).
constexpr int kUnpermuteUnroll = 8;
__global__ void unpermute_k(View yp, View w, int k, const int32_t* slot_of, View y) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= y.cols) return;
  for (int64_t t = blockIdx.y; t < y.rows; t += gridDim.y) {
    float acc = y.p[t * y.stride + c];
    for (int j0 = 0; j0 < k; j0 += kUnpermuteUnroll) {
      float v[kUnpermuteUnroll], p[kUnpermuteUnroll];
      bool kept[kUnpermuteUnroll];
#pragma unroll
      for (int u = 0; u < kUnpermuteUnroll; ++u) {
        const int j = j0 + u;
        const int sl = j < k ? slot_of[t * k + j] : -1;
        kept[u] = sl >= 0;
        v[u] = kept[u] ? yp.p[(int64_t)sl * yp.stride + c] : 0.f;
        p[u] = kept[u] ? w.p[t * w.stride + j] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kUnpermuteUnroll; ++u)
        if (kept[u]) acc += p[u] * v[u];
    }
    y.p[t * y.stride + c] = acc;
  }
}

size_t rank_smem(int E) {
  return sizeof(int) * 33 * static_cast<size_t>(E);
}

template <typename K>
void allow(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    ISC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)));
}

int grid_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + 255) / 256, 1, 4224));
}

}  // namespace

bool router(View logits, const float* bias, const RouterParams& p, const RouterBuffers& b,
            cudaStream_t s) {
  if (p.experts <= 0 || p.experts > kMaxExperts || p.top_k <= 0 || p.top_k > p.experts)
    throw std::invalid_argument("cuda router: need 0 < top_k <= experts <= 1024");
  if (p.tokens <= 0) {
    ISC_CUDA(cudaMemsetAsync(b.counts, 0, sizeof(int32_t) * (2 * p.experts + 2), s));
    if (b.offsets) ISC_CUDA(cudaMemsetAsync(b.offsets, 0, sizeof(int32_t) * (p.experts + 1), s));
    return false;
  }
  const bool reroute = p.reroute && p.capacity > 0;
  const int R = reroute ? p.experts : p.top_k;
  if (!reroute && p.experts <= 64 && p.tokens <= 256) {
    const size_t smem = sizeof(float) * 32 * 2 * p.experts + rank_smem(p.experts);
    allow(route_small_k, smem);
    launch_pdl(route_small_k, 1, kBlock, smem, s, logits, bias, p, b);
    ISC_LAUNCH();
    return b.permute.perm.p != nullptr;
  }
  const size_t smem = sizeof(float) * kRankWarps * 2 * p.experts;
  allow(rank_k, smem);
  rank_k<<<(p.tokens + kRankWarps - 1) / kRankWarps, kRankWarps * 32, smem, s>>>(
      logits, bias, p, R, b.rank_expert, b.rank_weight);
  ISC_LAUNCH();
  const int64_t assignments = static_cast<int64_t>(p.tokens) * p.top_k;
  if (!reroute && rank_chunks(assignments) > 1) {
    if (b.chunk_counts == nullptr)
      throw std::invalid_argument("cuda router: a long list needs chunk_counts scratch");
    const int chunks = rank_chunks(assignments);
    const size_t counts_smem = sizeof(int) * static_cast<size_t>(p.experts);
    chunk_counts_k<<<chunks, kBlock, counts_smem, s>>>(
        static_cast<int>(assignments), p.experts, RankedExpert{b.rank_expert, p.valid, p.top_k},
        b.chunk_counts);
    ISC_LAUNCH();
    assign_totals_k<<<1, kBlock, counts_smem, s>>>(p, b, chunks);
    ISC_LAUNCH();
    allow(assign_chunks_k, rank_smem(p.experts));
    assign_chunks_k<<<chunks, kBlock, rank_smem(p.experts), s>>>(p, b);
    ISC_LAUNCH();
    return false;
  }
  if (reroute) {
    assign_reroute_k<<<1, 256, sizeof(int) * 2 * p.experts, s>>>(p, R, b);
  } else {
    allow(assign_drop_k, rank_smem(p.experts));
    assign_drop_k<<<1, kBlock, rank_smem(p.experts), s>>>(p, b);
  }
  ISC_LAUNCH();
  return false;
}

void permute_index(IView assign_expert, const int32_t* offsets, int experts, IView perm,
                   int32_t* slot_of, View x, View xp, int64_t rows, cudaStream_t s) {
  if (assign_expert.rows * assign_expert.cols <= 0) return;
  allow(permute_index_k, rank_smem(experts));
  launch_pdl(permute_index_k, 1, kBlock, rank_smem(experts), s, assign_expert, offsets, experts,
             perm, slot_of, x, xp, rows);
  ISC_LAUNCH();
}

int rank_chunks(int64_t assignments) {
  return static_cast<int>((assignments + kBlock - 1) / kBlock);
}

void permute_index_long(IView assign_expert, const int32_t* offsets, int experts, IView perm,
                        int32_t* slot_of, int32_t* chunk_counts, cudaStream_t s) {
  const int64_t total = assign_expert.rows * assign_expert.cols;
  if (total <= 0) return;
  const int chunks = rank_chunks(total);
  chunk_counts_k<<<chunks, kBlock, sizeof(int) * experts, s>>>(
      static_cast<int>(total), experts, AssignedExpert{assign_expert, experts}, chunk_counts);
  ISC_LAUNCH();
  scan_chunks_k<<<1, kBlock, sizeof(int) * experts, s>>>(chunks, experts, chunk_counts);
  ISC_LAUNCH();
  allow(permute_chunks_k, rank_smem(experts));
  permute_chunks_k<<<chunks, kBlock, rank_smem(experts), s>>>(assign_expert, offsets, experts, perm,
                                                              slot_of, chunk_counts);
  ISC_LAUNCH();
}

void permute_rows(View x, IView perm, int top_k, int64_t rows, View xp, cudaStream_t s,
                  const int32_t* total) {
  if (rows * xp.cols <= 0) return;
  const bool vec = xp.cols % 4 == 0 && x.stride % 4 == 0 && xp.stride % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(x.p) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(xp.p) % 16 == 0;
  if (vec && rows >= kRowKernelMinRows) {
    const int blocks = static_cast<int>(std::min<int64_t>(rows, 132 * 16));
    launch_pdl(permute_rows_v4_k, blocks, 256, 0, s, x, perm, top_k, rows, xp, total);
  } else {
    launch_pdl(permute_rows_k, grid_for(rows * xp.cols), 256, 0, s, x, perm, top_k, rows, xp,
               total);
  }
  ISC_LAUNCH();
}

void unpermute(View yp, IView perm, View w, int top_k, int64_t assignments, int32_t* slot_of,
               bool slot_of_ready, View y, cudaStream_t s, const int32_t* total) {
  if (y.rows <= 0) return;
  if (!slot_of_ready) ISC_CUDA(cudaMemsetAsync(slot_of, 0xff, sizeof(int32_t) * y.rows * top_k, s));
  if (assignments > 0 && !slot_of_ready) {
    scatter_slots_k<<<grid_for(assignments), 256, 0, s>>>(perm, assignments, total, slot_of);
    ISC_LAUNCH();
  }
  const dim3 grid(static_cast<unsigned>((y.cols + 127) / 128),
                  static_cast<unsigned>(std::min<int64_t>(y.rows, 65535)));
  launch_pdl(unpermute_k, grid, 128, 0, s, yp, w, top_k, slot_of, y);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
