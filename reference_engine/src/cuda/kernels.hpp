// CUDA kernels of the reference engine's GPU backend, as plain host launchers.
//
// Everything here takes raw device pointers and a stream, knows nothing about
// the engine's model code, and never synchronises: the backend (cuda_backend.cpp)
// strings them together and the op tests (tests/gpu/) call them one by one
// against the CPU backend. Conventions:
//   - activations are fp32 row-major [tokens, features]; weights are bf16;
//     matrix products accumulate in fp32 (bf16 operands, fp32 out).
//   - a linear layer's weight is W[out, in] row-major, y = x W^T (as on the CPU).
//   - "T" is the number of token rows in a batch step; sequences own contiguous
//     runs of rows.
//
// [SECTION] Elementwise and norms
// [SECTION] Router: top-k, histogram, capacity, permutation
// [SECTION] Expert GEMM (grouped by expert, sizes on the device)
// [SECTION] Attention over the paged KV cache
// [SECTION] Selective SSM
// [SECTION] Vision front end
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace inferscope::engine::cuda {

// [SECTION] Elementwise and norms
void cast_f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t s);
void cast_bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t s);
// out = x * rsqrt(mean(x^2) + eps) * w, per row; either output may be null.
void rmsnorm(const float* x, const float* w, float* out_f32, __nv_bfloat16* out_bf16, int rows,
             int dim, float eps, cudaStream_t s);
// LayerNorm with weight and bias (vision encoder).
void layernorm(const float* x, const float* w, const float* b, float* out_f32,
               __nv_bfloat16* out_bf16, int rows, int dim, float eps, cudaStream_t s);
// Rotary embedding in place on x[rows, heads, head_dim] (row stride `row_stride`
// floats), rotating pairs (i, i + rot_dim/2) of the first rot_dim dims ("neox"
// halves) or adjacent pairs (2i, 2i+1) when interleaved.
void rope(float* x, const int32_t* positions, int rows, int heads, int head_dim, int row_stride,
          int rot_dim, float theta, bool interleaved, cudaStream_t s);
// gate_up[rows, 2F] = [g | u] -> out[rows, F] = silu(g) * u
void swiglu(const float* gate_up, float* out_f32, __nv_bfloat16* out_bf16, int rows, int ffn,
            cudaStream_t s);
void gelu(float* x, int64_t n, cudaStream_t s);  // tanh approximation, in place
void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s);  // y += x
void add_bias(float* y, const float* bias, int rows, int dim, cudaStream_t s);
// y[r] += scale * x[r] (e.g. shared experts)
void axpy(float* y, const float* x, float scale, int64_t n, cudaStream_t s);
// out[t] = table[ids[t]] (bf16 or fp32 table)
void embedding(const float* table, const int32_t* ids, float* out, int rows, int dim,
               cudaStream_t s);
void embedding_bf16(const __nv_bfloat16* table, const int32_t* ids, float* out, int rows, int dim,
                    cudaStream_t s);
// argmax over each row of logits[rows, vocab]
void argmax_rows(const float* logits, int32_t* out, int rows, int vocab, cudaStream_t s);

// [SECTION] Router
struct RouterParams {
  int tokens = 0;           // T
  int experts = 0;          // E (<= 1024)
  int top_k = 0;            // k (<= 8)
  bool sigmoid = false;     // gate: softmax over E (false) or sigmoid per expert
  bool renormalize = true;  // weights of the chosen k sum to 1
  float route_scale = 1.0f; // multiplies the final weights
  int capacity = 0;         // per expert; <= 0 means unlimited
  bool reroute = false;     // overflow goes to the token's next choice with room
  int candidates = 0;       // with reroute: choices considered (>= k); 0 = k + 2
};
// Scratch sizes for router(); all device memory, allocated once by the caller.
struct RouterBuffers {
  // outputs
  int32_t* topk_expert = nullptr;  // [T, k]: chosen expert (after reroute), -1 if dropped
  float* topk_weight = nullptr;    // [T, k]
  int32_t* topk_slot = nullptr;    // [T, k]: row in the permuted buffer, -1 if dropped
  int32_t* routed = nullptr;       // [E]: assignments wanting e (first choices, before capacity)
  int32_t* kept = nullptr;         // [E]: assignments e accepted
  int32_t* offsets = nullptr;      // [E + 1]: exclusive scan of kept
  int32_t* perm_token = nullptr;   // [T * k]: source token of each permuted row
  int32_t* stats = nullptr;        // [2]: dropped, rerouted
  // scratch
  int32_t* cand_expert = nullptr;  // [T, C]
  float* cand_weight = nullptr;    // [T, C]
};
// logits[T, E] fp32 (router GEMM output) and an optional per-expert selection
// bias (DeepSeek-V3: the bias picks experts, the unbiased score weights them).
// One launch computes the top-k, the on-device histogram, capacity enforcement
// in (token, choice) order — the same order as the CPU backend — and the
// permutation, so the host learns counts only when it copies `routed`/`kept`.
void router(const float* logits, const float* bias, const RouterParams& p, const RouterBuffers& b,
            cudaStream_t s);
// Xp[row] = x[perm_token[row]] for row < offsets[E] (bf16 out)
void permute_rows(const __nv_bfloat16* x, const int32_t* perm_token, const int32_t* offsets,
                  int experts, __nv_bfloat16* xp, int max_rows, int dim, cudaStream_t s);
// out[t] (+)= sum_j topk_weight[t,j] * yp[topk_slot[t,j]]  (dropped slots skipped)
void unpermute_combine(const float* yp, const int32_t* topk_slot, const float* topk_weight,
                       float* out, int tokens, int top_k, int dim, bool accumulate, cudaStream_t s);

// [SECTION] Expert GEMM
// Y[rows of e] = Xp[rows of e] · W[e]^T for every expert e, where the rows of e are
// offsets[e] .. offsets[e+1] (read on the device: no host round trip, so a decode
// step can be captured in a CUDA graph; experts with no rows cost one early exit
// per block). W is [E, N, K] bf16, Xp [rows, K] bf16, Y [rows, N] fp32.
// max_rows_per_expert bounds the grid (capacity, or T * k).
void grouped_gemm(const __nv_bfloat16* xp, const __nv_bfloat16* w, const int32_t* offsets,
                  float* y, int experts, int n, int k, int max_rows_per_expert, cudaStream_t s);
// Same, with the SwiGLU epilogue fused: W holds [E, 2F, K] = gate rows then up
// rows; H[row, F] = silu(x·Wg^T) * (x·Wu^T), written as bf16 for the down GEMM.
void grouped_gemm_swiglu(const __nv_bfloat16* xp, const __nv_bfloat16* w, const int32_t* offsets,
                         __nv_bfloat16* h, int experts, int ffn, int k, int max_rows_per_expert,
                         cudaStream_t s);

// [SECTION] Attention
// KV cache: blocks of `block_size` token slots; one block holds
// [block_size, kv_heads, head_dim] keys and the same of values (fp32), at
// k_cache + block * block_stride and v_cache + block * block_stride.
struct PagedKv {
  float* k = nullptr;
  float* v = nullptr;
  int block_size = 16;
  int64_t block_stride = 0;  // floats per block (block_size * kv_heads * head_dim)
  int kv_heads = 0;
  int head_dim = 0;
};
// Writes k/v rows [T, kv_heads, head_dim] of each token into its slot
// (slot = block_table[seq][pos / block_size] * block_size + pos % block_size).
void kv_store(const PagedKv& kv, const float* k, const float* v, int k_row_stride,
              const int32_t* token_seq, const int32_t* token_pos, const int32_t* block_tables,
              int max_blocks_per_seq, int tokens, cudaStream_t s);
// out[t, h, :] = softmax(q·K^T * scale over positions 0..token_pos[t] (causal) or
// 0..seq_len[seq]-1 (non-causal)) · V, GQA by h / (heads / kv_heads).
void paged_attention(const float* q, int q_row_stride, const PagedKv& kv, const int32_t* token_seq,
                     const int32_t* token_pos, const int32_t* seq_len, const int32_t* block_tables,
                     int max_blocks_per_seq, float* out, int tokens, int heads, float scale,
                     bool causal, int max_context, cudaStream_t s);
// Dense attention for the vision encoder: q/k/v [n, heads, hd] of one image,
// full (non-causal) attention.
void dense_attention(const float* q, const float* k, const float* v, int row_stride, float* out,
                     int n, int heads, int head_dim, float scale, cudaStream_t s);

// [SECTION] Selective SSM
// Mamba-style selective scan over each sequence's contiguous rows:
//   dt  = softplus(dt_raw[t,d] + dt_bias[d])
//   h   = exp(dt * A[d,n]) * h + dt * B[t,n] * x[t,d]
//   y   = sum_n C[t,n] * h[d,n] + Dskip[d] * x[t,d]
// `state` is [seqs, d_inner, d_state], read at the start and written at the end.
struct SsmScanArgs {
  const float* x = nullptr;       // [T, d_inner] (row stride x_stride)
  const float* dt_raw = nullptr;  // [T, d_inner] (row stride dt_stride)
  const float* dt_bias = nullptr; // [d_inner] or null
  const float* a = nullptr;       // [d_inner, d_state] (already negative)
  const float* b = nullptr;       // [T, d_state] (row stride bc_stride)
  const float* c = nullptr;       // [T, d_state] (row stride bc_stride)
  const float* d_skip = nullptr;  // [d_inner] or null
  float* y = nullptr;             // [T, d_inner]
  float** states = nullptr;       // [seqs] pointers to [d_inner, d_state] states
  const int32_t* seq_start = nullptr;  // [seqs + 1] row ranges
  int seqs = 0;
  int d_inner = 0;
  int d_state = 0;
  int x_stride = 0, dt_stride = 0, bc_stride = 0;
  int chunk = 64;                 // rows per chunk of the parallel scan
  int max_len = 0;                // longest run of rows (bounds the chunk grid)
};
void ssm_scan(const SsmScanArgs& a, cudaStream_t s);
// Depthwise causal conv1d over time with a per-sequence rolling state of the
// last (width-1) inputs, then SiLU. x/out [T, channels]; conv_states[seq] is
// [width-1, channels]; w [channels, width]; bias [channels] or null.
void causal_conv1d_silu(const float* x, int x_stride, const float* w, const float* bias,
                        float** conv_states, const int32_t* seq_start, int seqs, int channels,
                        int width, float* out, cudaStream_t s);

// [SECTION] Vision front end
// image [channels, height, width] fp32 -> patches [(h/p)*(w/p), channels*p*p]
// in (channel, dy, dx) order, written as bf16 for the patch-embedding GEMM.
void patchify(const float* image, int channels, int height, int width, int patch,
              __nv_bfloat16* patches, cudaStream_t s);
// out[i] = mean of x rows i*group .. i*group+group-1
void pool_rows(const float* x, float* out, int rows, int dim, int group, cudaStream_t s);

}  // namespace inferscope::engine::cuda
