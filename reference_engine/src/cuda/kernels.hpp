// CUDA kernels of the reference engine's GPU backend, as plain host launchers.
//
// They take strided 2-D views of device memory (the same shape conventions as
// inferscope/engine/backend.hpp: row-major [rows, cols] with a row stride in
// elements) and a stream, and never synchronise. cuda_backend.cpp maps the
// Backend ops onto them; the op tests (tests/gpu/) compare every op with the
// CPU backend. Integer metadata (ids, positions, slots, offsets) is a device
// pointer here: the backend stages the host spans of the interface first.
//
// [SECTION] Views
// From this many rows, permute_rows and mul_silu run a block per row with 16-byte columns (the
// prefill shape) instead of an element per thread with a division each (the decode shape).
constexpr int64_t kRowKernelMinRows = 64;

// [SECTION] Elementwise, norms, RoPE, casts
// [SECTION] Router, permutation
// [SECTION] Expert GEMM (grouped by expert, sizes on the device)
// [SECTION] Attention
// [SECTION] Selective SSM
// [SECTION] Vision front end
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace inferscope::engine::cuda {

// [SECTION] Views
struct View {
  float* p = nullptr;
  int64_t rows = 0, cols = 0, stride = 0;
};
struct IView {
  int32_t* p = nullptr;
  int64_t rows = 0, cols = 0, stride = 0;
};

// [SECTION] Elementwise, norms, RoPE, casts
void fill(View dst, float value, cudaStream_t s);
void fill_i32(IView dst, int32_t value, cudaStream_t s);
void get_rows(View table, const int32_t* ids, View out, cudaStream_t s);
void add(View a, View b, View out, cudaStream_t s);
void mul_silu(View x, View gate, View out, cudaStream_t s);  // out = x * silu(gate)
void gelu(View x, View out, cudaStream_t s);                 // tanh approximation
void rms_norm(View x, const float* weight, float eps, View out, cudaStream_t s);
// NeoX rotary embedding in place: dims i and i + head_dim/2 of each head pair
// up, frequency theta^(-2i/head_dim).
void rope(View x, const int32_t* positions, int heads, int head_dim, float theta, cudaStream_t s);
// One kernel for Backend::qk_norm_rope_store: per row, q and k each normalised
// over their whole width (a null weight: not normalised), then NeoX RoPE, in
// place; then k and v go to their cache rows slots[row] (as kv_store).
struct QkRopeStoreArgs {
  View q, k, v, k_cache, v_cache;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  float eps = 0.f;
  const int32_t* positions = nullptr;
  const int32_t* slots = nullptr;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float theta = 0.f;
};
void qk_norm_rope_store(const QkRopeStoreArgs& a, cudaStream_t s);
// Strided fp32 -> contiguous bf16 [rows, cols] (the GEMM operand).
void to_bf16(View x, __nv_bfloat16* out, cudaStream_t s);
void f32_to_bf16(const float* x, __nv_bfloat16* out, int64_t n, cudaStream_t s);

// [SECTION] Router, permutation
struct RouterParams {
  int tokens = 0;           // T
  int experts = 0;          // E (<= 1024)
  int top_k = 0;            // k
  bool sigmoid = false;     // gate: softmax over E (false) or sigmoid per expert
  bool renormalize = true;  // divide the chosen k weights by their score sum
  float scaling = 1.0f;     // multiplies every combine weight
  int capacity = 0;         // per expert; <= 0 means unlimited
  bool reroute = false;     // overflow moves to the token's next-ranked expert with room
  // Optional (device, one value): only tokens [0, *valid) are routed and
  // counted; the rest (CUDA-graph padding) get expert -1, weight 0. With
  // capacity_factor > 0 the capacity then comes from *valid on the device.
  const int32_t* valid = nullptr;
  float capacity_factor = 0.f;
};
// The permutation the single-block decode router can build in the same launch (permute_index's
// arguments: perm, slot_of, and the gather of x into xp when xp.p is set).
struct PermuteOut {
  IView perm;
  int32_t* slot_of = nullptr;
  View x, xp;
};
struct RouterBuffers {
  // outputs
  int32_t* assign_expert = nullptr;  // [T, k] contiguous: expert, -1 if dropped
  float* assign_weight = nullptr;    // [T, k] contiguous: combine weight, 0 if dropped
  int32_t* counts = nullptr;         // [2E + 2]: routed[E], kept[E], dropped, rerouted
  int32_t* offsets = nullptr;        // optional [E + 1]: exclusive prefix sums of kept
  // scratch
  int32_t* rank_expert = nullptr;   // [T, R] experts by rank (R = k, or E with reroute)
  float* rank_weight = nullptr;     // [T, R] their normalised weights
  int32_t* chunk_counts = nullptr;  // [rank_chunks(T * k), E]: needed when that is > 1
  // optional: the permutation of these assignments (needs offsets)
  PermuteOut permute;
};
// Long assignment lists (a prefill) are ranked in chunks, a block each: the
// number of chunks for `assignments` (1: one block walks them all).
int rank_chunks(int64_t assignments);
// logits [T, E] (strided) and an optional selection bias [E]. Gate, ranking,
// the histogram (routed = first-k choices before capacity) and capacity in
// (token, choice) order, exactly as the CPU backend orders them.
// Returns true when it also built b.permute (only the single-block decode router does: up to
// 64 experts and 256 tokens, no re-routing); else the caller runs permute_index.
bool router(View logits, const float* bias, const RouterParams& p, const RouterBuffers& b,
            cudaStream_t s);
// Row of each kept assignment in the permuted buffer (per expert, increasing
// assignment index a = t*k + j): perm[row] = a. offsets: device [E + 1].
// slot_of (optional, [T * k]) receives each assignment's row, -1 if not kept.
// With xp.p set, the same (single-block) launch also gathers xp[i] = x[perm[i]/k]
// for i < min(rows, offsets[E]): worth it for decode-sized batches, where it
// saves a launch (rows may be a bound: the kept total is read on the device).
void permute_index(IView assign_expert, const int32_t* offsets, int experts, IView perm,
                   int32_t* slot_of, View x, View xp, int64_t rows, cudaStream_t s);
// permute_index for long lists (no gather): the ranking spread over
// rank_chunks(T * k) blocks; chunk_counts is scratch [rank_chunks(T * k), E].
void permute_index_long(IView assign_expert, const int32_t* offsets, int experts, IView perm,
                        int32_t* slot_of, int32_t* chunk_counts, cudaStream_t s);
// xp[i] = x[perm[i] / top_k] for i < rows, and i < *total when total is set
// (rows is then a bound for the grid, *total the device's kept count).
void permute_rows(View x, IView perm, int top_k, int64_t rows, View xp, cudaStream_t s,
                  const int32_t* total = nullptr);
// y[t] += sum_j w[t, j] * yp[slot_of[t*k+j]], j in order (deterministic).
// slot_of is scratch [T * k], filled here from perm unless slot_of_ready (then
// it holds permute_index's by-product for this same perm). With total set,
// assignments is a bound and *total (device) the rows of perm in use.
void unpermute(View yp, IView perm, View assign_weight, int top_k, int64_t assignments,
               int32_t* slot_of, bool slot_of_ready, View y, cudaStream_t s,
               const int32_t* total = nullptr);

// [SECTION] Expert GEMM
// Y[rows of e] = X[rows of e] · W[e]^T for every expert e, where the rows of e
// are offsets[e] .. offsets[e+1] on the device. W [E, N, K] bf16, X [rows, K]
// bf16 contiguous, Y fp32 with row stride ldy. max_rows_per_expert bounds the
// grid. Experts with no rows cost one early exit per block and no weight reads.
void grouped_gemm(const __nv_bfloat16* x, const __nv_bfloat16* w, const int32_t* offsets, float* y,
                  int64_t ldy, int experts, int n, int k, int max_rows_per_expert, cudaStream_t s);

// An op fused into the decode linear (one launch instead of two):
//  kRmsNormIn: it multiplies rms_norm(x) = x[r, i] * inv_rms(x[r]) * norm_weight[i]
//              (rms_norm's formula; every block recomputes the row's sum of
//              squares); a dense call's normalised rows also go to h if h.p is set.
//  kSwigluOut: W is a fused gate|up weight [experts, 2 n_out, k] and y receives
//              mul_silu's up * silu(gate) of the two products, [rows, n_out]
//              (each warp holds gate and up columns of the same outputs); beta 0.
enum class Fused { kNone, kRmsNormIn, kSwigluOut };
struct Fusion {
  Fused mode = Fused::kNone;
  const float* norm_weight = nullptr;  // kRmsNormIn: [k]
  float eps = 0.f;
  View h;  // kRmsNormIn, dense: receives the normalised rows (optional)
};

// Few-row linear (decode): y = beta*y + x · W^T with fp32 x (strided) and bf16
// W [experts, n_out, k] (k % 8 == 0). offsets == nullptr: dense over all x rows
// (experts must be 1); else expert e owns rows offsets[e]..offsets[e+1] (device)
// and x.rows bounds their total. max_rows (a bound on any expert's rows, 0 if
// unknown) picks the rows per pass over the weights; any value is correct.
// Launched as a programmatic dependent (PDL, sm_90, see pdl.cuh): a dense call
// requests its first weights while the previous kernel finishes, once that
// kernel lets dependents start (the decode-path kernels do, after their own
// wait). So a weight must never be written by such a kernel; uploads (copies)
// and the bf16 shadow conversion never let dependents start.
void small_linear(View x, const __nv_bfloat16* w, const int32_t* offsets, int experts, View y,
                  int n_out, int k, float beta, cudaStream_t s, int max_rows = 0,
                  const Fusion& fused = {});

// Programmatic dependent launch of the decode-path kernels (pdl.cuh): on from
// sm_90 unless INFERSCOPE_CUDA_PDL=0; set_pdl overrides (the benches compare).
bool pdl_on();
void set_pdl(bool on);

// [SECTION] Attention
struct PagedArgs {
  View q, out;            // [T, heads * head_dim]
  View k_cache, v_cache;  // [slots, kv_heads * head_dim]
  const int32_t* token_seq = nullptr;
  const int32_t* token_pos = nullptr;
  const int32_t* block_table = nullptr;
  const int32_t* block_table_start = nullptr;
  int block_size = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  int max_context = 0;  // max over rows of token_pos + 1
};
void kv_store(View k, View v, View k_cache, View v_cache, const int32_t* slots, cudaStream_t s);
void paged_attention(const PagedArgs& a, cudaStream_t s);
// Prefill attention (prefill_attention.cu): the rows come in tiles of up to kPrefillTileRows rows
// of one sequence (consecutive positions make them cheap; any positions are correct), tile t
// being rows tile_first[t] .. tile_first[t + 1] - 1 (device array of tiles + 1). Same result as
// paged_attention. Returns false, launching nothing, where it does not apply (head_dim other
// than 32 / 64 / 128, views not 16-byte aligned): the caller then runs paged_attention.
constexpr int kPrefillTileRows = 32;
bool prefill_attention(const PagedArgs& a, const int32_t* tile_first, int tiles, cudaStream_t s);
// Attention within each sequence of contiguous rows (vision encoder).
struct SeqAttnArgs {
  View q, k, v, out;
  const int32_t* token_seq = nullptr;  // [T]
  const int32_t* seq_start = nullptr;  // [seqs + 1]
  int heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  bool causal = false;
  int max_context = 0;  // longest sequence
};
void seq_attention(const SeqAttnArgs& a, cudaStream_t s);

// [SECTION] Selective SSM
// Mamba-style selective scan, as Backend::ssm_scan documents. Runs longer than
// `chunk` rows use the chunked scan (needs `scratch`).
struct SsmScanArgs {
  View x, dt, b, c, y, states;
  const float* dt_bias = nullptr;       // [D]
  const float* a = nullptr;             // [D, N] contiguous (negative)
  const float* d_skip = nullptr;        // [D]
  const int32_t* state_slot = nullptr;  // [seqs]
  const int32_t* seq_start = nullptr;   // [seqs + 1]
  int seqs = 0, d_inner = 0, d_state = 0;
  int chunk = 64;
  int max_len = 0;
  float* scratch = nullptr;
};
int64_t ssm_scan_scratch_floats(int seqs, int max_len, int chunk, int d_inner, int d_state);
void ssm_scan(const SsmScanArgs& a, cudaStream_t s);

// [SECTION] Vision front end
// image [H, W*C] (channels interleaved) -> out [(H/P)*(W/P), P*P*C].
void patchify(View image, int height, int width, int channels, int patch, View out, cudaStream_t s);
void mean_pool_rows(View x, int group, View out, cudaStream_t s);

}  // namespace inferscope::engine::cuda
