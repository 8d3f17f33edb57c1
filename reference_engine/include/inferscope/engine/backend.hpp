// inferscope reference engine: the backend interface.
//
// Everything the model code (layers, router, caches, scheduler) asks of a device
// goes through this one abstract class, in the spirit of ggml-backend.h: plain
// structs for data (Tensor) and a small table of operations. The model code never
// branches on the device; it only calls these ops in order. The CPU backend
// (src/cpu/) is the reference implementation and the oracle for every other
// backend (a CUDA backend lives in src/cuda/ and registers under "cuda").
//
// [SECTION] Conventions
//   - A Tensor is a 2-D strided view of backend memory: `rows` x `cols` elements,
//     row r starts at element r * `stride` of `data`. Activations are row-major
//     [tokens, features]. Views (rows_view / cols_view) share memory.
//   - Linear weights are stored [out_features, in_features] (PyTorch layout):
//     linear() computes y = x * W^T.
//   - `data` is a device pointer: host code never dereferences it unless the
//     backend says host_memory(). Pointer arithmetic on it (views) is allowed.
//   - Index metadata (token ids, positions, block tables, slots, offsets) is
//     passed as host std::spans; a device backend copies what it needs (per
//     op, or once per step for the arrays registered with begin_step). The
//     asynchronous MoE ops take their expert offsets as device tensors.
//   - Ops execute in call order (one in-order stream). upload() and download()
//     are synchronous with respect to all previously issued ops.
//   - Unless stated otherwise an output must not alias an input.
//   - Tensors hold fp32 (or i32) and every op but the GEMMs computes in fp32.
//     GEMMs (linear, grouped_linear) may multiply in lower precision: the CPU
//     backend multiplies in fp32; the CUDA backend by default multiplies bf16
//     copies of the weights (made once per weight tensor) by activations
//     rounded to bf16 (the small-batch decode kernel reads them in fp32), with
//     fp32 accumulation and fp32 outputs; INFERSCOPE_CUDA_MATH=fp32 makes it
//     multiply in fp32. A backend matches the CPU backend within a tolerance:
//     relative ~1e-4 for fp32 GEMMs, ~1.5e-2 relative L2 for bf16 ones
//     (tests/gpu/cuda_backend_ops_test.cpp), exact for the integer outputs of
//     moe_route / moe_permute.
//
// [SECTION] Registry
//   Backends are created by name through create_backend("cpu" | "cuda", ...).
//   The CPU backend is always registered. src/cuda/CMakeLists.txt (when present
//   and CUDA is on) must define a static library target `inferscope_engine_cuda`
//   that links `inferscope_engine_headers` and defines
//       std::unique_ptr<inferscope::engine::Backend>
//       inferscope::engine::create_cuda_backend(const BackendOptions&);
//   reference_engine/CMakeLists.txt links it and registers "cuda" with that
//   factory (an explicit call, so no static-initialiser tricks are needed).
//   register_backend() lets anyone add further backends at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace inferscope::engine {

// [SECTION] Tensor
// kBF16 is a storage type for GEMM weights only (the `w` of linear /
// grouped_linear) on backends whose bf16_weights() is true: a bf16 checkpoint
// stays bf16 on the device instead of growing into an fp32 copy.
enum class DType : uint8_t { kF32 = 0, kI32 = 1, kBF16 = 2 };

inline constexpr size_t dtype_size(DType t) {
  return t == DType::kBF16 ? 2 : 4;
}

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;  // elements between the starts of consecutive rows (>= cols)

  bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  bool contiguous() const { return stride == cols; }
  int64_t elements() const { return rows * cols; }
  size_t bytes() const { return static_cast<size_t>(elements()) * dtype_size(dtype); }

  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }

  // Rows [first, first + count) of this view.
  Tensor rows_view(int64_t first, int64_t count) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + first * stride * static_cast<int64_t>(dtype_size(dtype));
    t.rows = count;
    return t;
  }
  // Columns [first, first + count) of every row (a strided view).
  Tensor cols_view(int64_t first, int64_t count) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + first * static_cast<int64_t>(dtype_size(dtype));
    t.cols = count;
    return t;
  }
  // The same memory seen as `r` x `c` contiguous (requires contiguous()).
  Tensor reshaped(int64_t r, int64_t c) const {
    Tensor t = *this;
    t.rows = r;
    t.cols = c;
    t.stride = c;
    return t;
  }
};

// [SECTION] Op parameters
struct AttentionParams {
  int32_t n_heads = 0;     // query heads
  int32_t n_kv_heads = 0;  // key/value heads (n_heads % n_kv_heads == 0: GQA)
  int32_t head_dim = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
};

// Where the queries of a paged attention call come from. Query row t belongs to
// sequence token_seq[t] at absolute position token_pos[t]; it attends causally
// to that sequence's keys at positions 0..token_pos[t] inclusive. The key of
// position p of sequence s is in cache slot
//   block_table[block_table_start[s] + p / block_size] * block_size + p % block_size.
// kv_store() for the current rows must have been issued before the call.
struct PagedBatch {
  std::span<const int32_t> token_seq;          // [T]
  std::span<const int32_t> token_pos;          // [T]
  std::span<const int32_t> block_table;        // concatenated block ids
  std::span<const int32_t> block_table_start;  // [n_seqs + 1]
  int32_t block_size = 0;
};

// Sequences of a dense (non-paged) attention or SSM call: rows
// [seq_start[s], seq_start[s+1]) of the inputs belong to sequence s, in order.
using SeqStarts = std::span<const int32_t>;  // [n_seqs + 1], first 0, last T

enum class GateFn : uint8_t { kSoftmax = 0, kSigmoid = 1 };
enum class OverflowPolicy : uint8_t { kDrop = 0, kReroute = 1 };

struct RouteParams {
  int32_t top_k = 1;
  GateFn gate = GateFn::kSoftmax;
  bool renormalize = true;  // divide the chosen weights by their sum
  float scaling = 1.0f;     // multiplies every combine weight
  int32_t capacity = 0;     // assignments per expert per call; <= 0: unlimited
  OverflowPolicy overflow = OverflowPolicy::kDrop;
  // moe_route_device with valid rows only: when > 0 the capacity is
  // max(1, ceil(capacity_factor * valid * top_k / E)) (in double, as
  // expert_capacity() computes it), replacing `capacity`.
  float capacity_factor = 0.0f;
};

// Host-side result of moe_route.
struct RouteCounts {
  std::vector<uint32_t> routed;  // [E] top-k choices per expert, before capacity
  std::vector<int32_t> kept;     // [E] assignments each expert actually serves
  uint32_t dropped = 0;          // assignments lost to capacity
  uint32_t rerouted = 0;         // assignments moved to a later-ranked expert
};

struct BackendOptions {
  int threads = 2;  // CPU threads (CPU backend: BLAS and its own loops)
  int device = 0;   // device ordinal for GPU backends
};

// [SECTION] Backend
// Every op is a public non-virtual function that checks its inputs (shapes,
// index ranges of host spans, parameters) once for every backend, throwing
// std::invalid_argument "<name> backend: <op> ..." on bad input, and then
// calls the backend's protected virtual <op>_impl (as ggml checks ops once in
// its core). An implementation may assume those checks passed; it checks only
// its own limits (e.g. the CUDA router's expert count) and what only it can
// see (e.g. device-side counts that do not match the host's offsets).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // True when Tensor::data may be dereferenced on the host (CPU backend).
  virtual bool host_memory() const = 0;
  // True when linear / grouped_linear take kBF16 weights (read as stored,
  // multiplied with fp32 accumulation). Otherwise weights must be kF32 and a
  // bf16 checkpoint is widened tensor by tensor while loading.
  virtual bool bf16_weights() const { return false; }

  // --- memory ---------------------------------------------------------------
  // Zero-initialised, aligned to at least 64 bytes. Returns nullptr on failure.
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* ptr) = 0;
  // Host -> device / device -> host of a contiguous tensor (synchronous).
  void upload(const Tensor& dst, const void* host_src);
  void download(const Tensor& src, void* host_dst);
  // Waits for every issued op.
  virtual void synchronize() = 0;

  // --- elementwise / data movement -----------------------------------------
  // dst = src (same shape, any strides, same dtype).
  void copy(const Tensor& src, const Tensor& dst);
  void fill(const Tensor& dst, float value);
  // out[i] = table[ids[i]] (rows); used for the embedding and to gather rows.
  void get_rows(const Tensor& table, std::span<const int32_t> ids, const Tensor& out);
  // out = a + b (out may alias a or b).
  void add(const Tensor& a, const Tensor& b, const Tensor& out);
  // out = x * silu(gate), silu(g) = g / (1 + exp(-g)) (out may alias x). SwiGLU
  // is mul_silu(up, gate) over column views of one fused gate|up projection.
  void mul_silu(const Tensor& x, const Tensor& gate, const Tensor& out);
  // out = gelu(x), tanh approximation (out may alias x).
  void gelu(const Tensor& x, const Tensor& out);
  // out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight (weight: 1 x cols; out may alias x).
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out);

  // --- GEMMs ----------------------------------------------------------------
  // y = x * W^T + beta * y. x: [M, K], w: [N, K], y: [M, N]. x and y are
  // kF32; w is kF32 or, where bf16_weights(), a contiguous kBF16 tensor.
  void linear(const Tensor& x, const Tensor& w, const Tensor& y, float beta = 0.0f);
  // Grouped GEMM over tokens permuted by expert: for each expert e, rows
  // [offsets[e], offsets[e+1]) of x are multiplied by W_e^T into the same rows of
  // y. w stacks the experts: [E * N, K], W_e = rows [e*N, (e+1)*N). x: [A, K], y: [A, N].
  void grouped_linear(const Tensor& x, const Tensor& w, std::span<const int32_t> offsets,
                      const Tensor& y);

  // --- attention ------------------------------------------------------------
  // Rotary embedding (NeoX style: dims i and i + head_dim/2 of each head form a
  // pair, frequency theta^(-2i/head_dim)) on x: [T, n_heads * head_dim], in place.
  void rope(const Tensor& x, std::span<const int32_t> positions, int32_t n_heads, int32_t head_dim,
            float theta);
  // k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t]. Caches: [num_slots, n_kv_heads * head_dim].
  void kv_store(const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                std::span<const int32_t> slots);
  // out[t] = softmax(q[t] . K^T * scale) V over the keys described by `batch`,
  // per head; query head h uses kv head h / (n_heads / n_kv_heads).
  // q, out: [T, n_heads * head_dim].
  void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const PagedBatch& batch, const AttentionParams& params, const Tensor& out);
  // Attention within each sequence of contiguous rows (vision encoder):
  // q, out: [T, n_heads * head_dim], k, v: [T, n_kv_heads * head_dim]; causal or
  // bidirectional.
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, SeqStarts seqs,
                 const AttentionParams& params, bool causal, const Tensor& out);

  // --- selective state space (Mamba-style) ----------------------------------
  // For each sequence s (rows seqs[s]..seqs[s+1]) with state h = states[state_slots[s]]
  // viewed as [D, N] (row-major: h[i, n] at i * N + n), for each of its rows t in order:
  //   delta[i] = softplus(dt[t, i] + dt_bias[i])
  //   h[i, n]  = exp(delta[i] * A[i, n]) * h[i, n] + delta[i] * B[t, n] * x[t, i]
  //   y[t, i]  = sum_n C[t, n] * h[i, n] + Dskip[i] * x[t, i]
  // and the final h is written back. x, dt, y: [T, D]; B, C: [T, N]; A: [D, N]
  // (negative); Dskip, dt_bias: [1, D]; states: [slots, D * N]. A backend may
  // chunk the scan internally; the result must equal the recurrence. One row per
  // sequence is the single-step decode update.
  void ssm_scan(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, const Tensor& A,
                const Tensor& B, const Tensor& C, const Tensor& Dskip, SeqStarts seqs,
                std::span<const int32_t> state_slots, const Tensor& states, const Tensor& y);

  // --- mixture of experts -----------------------------------------------------
  // Router: logits [T, E] -> scores (softmax over E, or sigmoid). Each token
  // picks the top_k experts by score + bias[e] (bias: [1, E] or empty; the bias
  // only steers selection, DeepSeek-V3 style); ties go to the lower index. The
  // combine weight of a choice is its unbiased score, divided by the sum of the
  // token's top_k scores when renormalize, times scaling.
  // Capacity is enforced in assignment order: token 0 choices 1..k, token 1, ...
  // An assignment to an expert already holding `capacity` is dropped
  // (expert -1, weight 0) or, with kReroute, moved to the token's next-ranked
  // expert not already chosen by it that still has room (weight = that expert's
  // score over the same denominator), else dropped.
  // Outputs: assign_expert (i32 [T, top_k]), assign_weight (f32 [T, top_k]) and
  // counts (host): routed = choices before capacity, kept = after.
  void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                 const Tensor& assign_expert, const Tensor& assign_weight, RouteCounts& counts);
  // Gathers token rows by expert: for expert e in order, for every kept
  // assignment a = t * top_k + j with assign_expert[a] == e in increasing a,
  // the next row of xp is x[t] and perm[that row] = a. offsets: [E + 1] prefix
  // sums of counts.kept. x: [T, D], xp: [>= A, D], perm: i32 [>= A, 1].
  void moe_permute(const Tensor& x, const Tensor& assign_expert, std::span<const int32_t> offsets,
                   const Tensor& xp, const Tensor& perm);
  // y[perm[i] / top_k] += assign_weight[perm[i]] * yp[i] for the first
  // `assignments` rows of yp. y: [T, D] (accumulated into: fill or seed it first).
  void moe_unpermute(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                     int32_t top_k, int64_t assignments, const Tensor& y);

  // --- mixture of experts, asynchronous routing -------------------------------
  // The same MoE ops with the routing result left on the device, so a MoE layer
  // needs no host wait (and a decode step can be captured as a CUDA graph). The
  // host never learns the kept total A; it sizes every buffer by the bound
  // T * top_k, and the ops read A and the per-expert rows from `offsets`.
  //
  // moe_route as above, but the counts stay on the device:
  //   counts:  i32 [1, 2E + 2] = routed[E], kept[E], dropped, rerouted (a row of
  //            a step-wide [layers, 2E + 2] array, copied to the host once per step);
  //   offsets: i32 [1, E + 1], exclusive prefix sums of kept (offsets[E] = A).
  // Capacity (drop and reroute) is applied exactly as by moe_route.
  // valid_rows (host metadata, empty or one value v <= T): only rows [0, v)
  // are routed and counted, as if the call had v rows; rows past v (the
  // padding of a CUDA-graph bucket) get expert -1 and weight 0.
  void moe_route_device(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                        const Tensor& assign_expert, const Tensor& assign_weight,
                        const Tensor& counts, const Tensor& offsets,
                        std::span<const int32_t> valid_rows = {});
  // moe_permute with device offsets; xp and perm have >= T * top_k rows (the
  // rows past A are left as they were).
  void moe_permute(const Tensor& x, const Tensor& assign_expert, const Tensor& offsets,
                   const Tensor& xp, const Tensor& perm);
  // grouped_linear with device offsets over x / y of >= offsets[E] rows (the
  // bound); max_rows_per_expert bounds every expert's rows (a token never picks
  // an expert twice, so T does). Rows of y past offsets[E] are left as they were.
  void grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets,
                      int64_t max_rows_per_expert, const Tensor& y);
  // moe_unpermute of the first offsets[E] rows of yp (yp has >= T * top_k rows).
  void moe_unpermute(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                     int32_t top_k, const Tensor& offsets, const Tensor& y);

  // --- fused ops (decode) -------------------------------------------------------
  // Each is exactly the composition of the ops it names, and the defaults run
  // that composition (the CPU backend uses them, so it stays the oracle). A
  // device backend may run one kernel instead where it can: a decode step is
  // ~18 launches per layer, most of them latency-bound, so every launch saved
  // is step time saved (issue 18).
  //
  // h = rms_norm(x, norm_weight, eps), then y = h * W^T (linear, beta 0). h:
  // [x.rows, x.cols], written (later ops may read it), must not alias x or y.
  void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& w,
                       const Tensor& y, const Tensor& h);
  // The gate|up projection of a SwiGLU block and its activation: gu = x * W^T
  // (linear; W = [gate; up], [2F, K]), then act = mul_silu(gu[:, F:], gu[:, :F]).
  // gu: [x.rows, 2F] scratch of the composition; a fused backend may leave it
  // unwritten, so nothing may read it afterwards. act: [x.rows, F].
  void gate_up_swiglu(const Tensor& x, const Tensor& w, const Tensor& gu, const Tensor& act);
  // The same per expert with device offsets (grouped_linear's asynchronous
  // form): rows of x, gu and act up to the bound x.rows.
  void grouped_gate_up_swiglu(const Tensor& x, const Tensor& w, const Tensor& offsets,
                              int64_t max_rows_per_expert, const Tensor& gu, const Tensor& act);
  // The rows of q and of k normalised over their whole width (rms_norm in
  // place; an empty weight skips that tensor's norm: OLMoE normalises the full
  // q / k projections), then rope of q (n_heads) and of k (n_kv_heads), then
  // kv_store(k, v, k_cache, v_cache, slots): what an attention layer does
  // between its qkv projection and its paged attention.
  void qk_norm_rope_store(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_norm,
                          const Tensor& k_norm, float eps, std::span<const int32_t> positions,
                          int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float theta,
                          const Tensor& k_cache, const Tensor& v_cache,
                          std::span<const int32_t> slots);

  // moe_route_device, then moe_permute (device offsets) of x by the assignments
  // it made: a decode step's router and permutation are one block each, so one
  // launch instead of two where the backend fuses them.
  void moe_route_permute_device(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                                const Tensor& assign_expert, const Tensor& assign_weight,
                                const Tensor& counts, const Tensor& offsets,
                                std::span<const int32_t> valid_rows, const Tensor& x,
                                const Tensor& xp, const Tensor& perm);

  // --- host waits ---------------------------------------------------------------
  // Several device -> host copies (contiguous tensors) with one wait: the end
  // of a step downloads its logits and its routed counts together.
  struct HostCopy {
    Tensor src;
    void* dst = nullptr;
  };
  void download(std::span<const HostCopy> copies);
  // How often the host has waited for the device: every upload, download (one
  // per call, however many copies), synchronize() and moe_route (its counts
  // come back on the host), plus the waits a backend makes on its own (CUDA:
  // staging-ring wraps, scratch growth). The CPU backend never really waits; it
  // counts where the interface makes a device backend wait, so the protocol of
  // a step (one wait with asynchronous routing) is testable without a device.
  uint64_t host_syncs() const { return host_syncs_; }

  // --- step graphs (CUDA graphs of decode steps) ------------------------------
  // A backend that supports_step_graphs() can record a step's ops once and
  // replay them. Kernel arguments are frozen at capture, so what a step reads
  // from the host must sit at fixed device addresses:
  //   begin_step(key, arrays, context_bound) copies `arrays` (the host spans
  //     the step's ops will be handed: the same data pointers and sizes) into
  //     device buffers owned by `key`, with one copy; until end_step() an op
  //     handed one of those spans reads that copy, and paged_attention sizes
  //     its launch for context_bound (>= every token_pos + 1).
  //   capture_begin() ... capture_end(key): the ops in between are recorded
  //     into graph `key`, not run (inside begin_step / end_step; an op handed
  //     an unregistered span, or needing a wait, is an error there).
  //   graph_ready(key): `key` holds a graph still valid (a backend drops a
  //     graph when memory it uses moves: scratch growth, a freed buffer).
  //   graph_launch(key): runs it (after begin_step with arrays of the same
  //     sizes as at capture, but new contents).
  // Defaults: no graphs; begin_step / end_step do nothing, so a caller may run
  // the same step eagerly on any backend.
  virtual bool supports_step_graphs() const { return false; }
  virtual void begin_step(uint64_t /*key*/, std::span<const std::span<const int32_t>> /*arrays*/,
                          int32_t /*context_bound*/) {}
  virtual void end_step() {}
  virtual void capture_begin();
  virtual void capture_end(uint64_t key);
  virtual void capture_abort() {}  // ends a failed capture; never throws
  virtual bool graph_ready(uint64_t /*key*/) { return false; }
  virtual void graph_launch(uint64_t key);
  // Graphs captured and launches so far (tests, benchmarks).
  uint64_t graphs_captured() const { return graphs_captured_; }
  uint64_t graph_launches() const { return graph_launches_; }

  // --- vision front end ------------------------------------------------------
  // image: [H, W * C] (pixels row-major, channels interleaved, values ~[0,1]) ->
  // out: [(H/P) * (W/P), P * P * C], patches in raster order, each patch's
  // pixels in raster order with channels interleaved.
  void patchify(const Tensor& image, int32_t height, int32_t width, int32_t channels, int32_t patch,
                const Tensor& out);
  // out[g] = mean of rows [g * group, (g+1) * group) of x. out: [x.rows / group, cols].
  void mean_pool_rows(const Tensor& x, int32_t group, const Tensor& out);

 protected:
  // The ops, called after the checks above passed (see the class comment).
  virtual void upload_impl(const Tensor& dst, const void* host_src) = 0;
  virtual void download_impl(const Tensor& src, void* host_dst) = 0;
  virtual void copy_impl(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill_impl(const Tensor& dst, float value) = 0;
  virtual void get_rows_impl(const Tensor& table, std::span<const int32_t> ids,
                             const Tensor& out) = 0;
  virtual void add_impl(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  virtual void mul_silu_impl(const Tensor& x, const Tensor& gate, const Tensor& out) = 0;
  virtual void gelu_impl(const Tensor& x, const Tensor& out) = 0;
  virtual void rms_norm_impl(const Tensor& x, const Tensor& weight, float eps,
                             const Tensor& out) = 0;
  virtual void linear_impl(const Tensor& x, const Tensor& w, const Tensor& y, float beta) = 0;
  virtual void grouped_linear_impl(const Tensor& x, const Tensor& w,
                                   std::span<const int32_t> offsets, const Tensor& y) = 0;
  virtual void rope_impl(const Tensor& x, std::span<const int32_t> positions, int32_t n_heads,
                         int32_t head_dim, float theta) = 0;
  virtual void kv_store_impl(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                             const Tensor& v_cache, std::span<const int32_t> slots) = 0;
  virtual void paged_attention_impl(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                    const PagedBatch& batch, const AttentionParams& params,
                                    const Tensor& out) = 0;
  virtual void attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, SeqStarts seqs,
                              const AttentionParams& params, bool causal, const Tensor& out) = 0;
  virtual void ssm_scan_impl(const Tensor& x, const Tensor& dt, const Tensor& dt_bias,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& Dskip,
                             SeqStarts seqs, std::span<const int32_t> state_slots,
                             const Tensor& states, const Tensor& y) = 0;
  virtual void moe_route_impl(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                              const Tensor& assign_expert, const Tensor& assign_weight,
                              RouteCounts& counts) = 0;
  virtual void moe_permute_impl(const Tensor& x, const Tensor& assign_expert,
                                std::span<const int32_t> offsets, const Tensor& xp,
                                const Tensor& perm) = 0;
  virtual void moe_unpermute_impl(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                                  int32_t top_k, int64_t assignments, const Tensor& y) = 0;
  // Asynchronous routing. The defaults are synchronous and correct for every
  // backend (the CPU backend uses them): moe_route_impl plus an upload of the
  // counts and offsets; the other three read the offsets back and call the
  // host-offsets _impl. The CUDA backend overrides all four without a wait,
  // except a long prefill's grouped_linear (one offsets download per MoE layer).
  virtual void moe_route_device_impl(const Tensor& logits, const Tensor& bias,
                                     const RouteParams& params, const Tensor& assign_expert,
                                     const Tensor& assign_weight, const Tensor& counts,
                                     const Tensor& offsets, std::span<const int32_t> valid_rows);
  virtual void moe_permute_device_impl(const Tensor& x, const Tensor& assign_expert,
                                       const Tensor& offsets, const Tensor& xp, const Tensor& perm);
  virtual void grouped_linear_device_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                          int64_t max_rows_per_expert, const Tensor& y);
  virtual void moe_unpermute_device_impl(const Tensor& yp, const Tensor& perm,
                                         const Tensor& assign_weight, int32_t top_k,
                                         const Tensor& offsets, const Tensor& y);
  // Default: one download_impl per copy (a device backend waits once per call).
  virtual void download_many_impl(std::span<const HostCopy> copies);
  // Fused ops: the defaults run their composition (public ops, checked again).
  virtual void rms_norm_linear_impl(const Tensor& x, const Tensor& norm_weight, float eps,
                                    const Tensor& w, const Tensor& y, const Tensor& h);
  virtual void moe_route_permute_device_impl(const Tensor& logits, const Tensor& bias,
                                             const RouteParams& params, const Tensor& assign_expert,
                                             const Tensor& assign_weight, const Tensor& counts,
                                             const Tensor& offsets,
                                             std::span<const int32_t> valid_rows, const Tensor& x,
                                             const Tensor& xp, const Tensor& perm);
  virtual void gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& gu,
                                   const Tensor& act);
  virtual void grouped_gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                           int64_t max_rows_per_expert, const Tensor& gu,
                                           const Tensor& act);
  virtual void qk_norm_rope_store_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& q_norm, const Tensor& k_norm, float eps,
                                       std::span<const int32_t> positions, int32_t n_heads,
                                       int32_t n_kv_heads, int32_t head_dim, float theta,
                                       const Tensor& k_cache, const Tensor& v_cache,
                                       std::span<const int32_t> slots);
  virtual void patchify_impl(const Tensor& image, int32_t height, int32_t width, int32_t channels,
                             int32_t patch, const Tensor& out) = 0;
  virtual void mean_pool_rows_impl(const Tensor& x, int32_t group, const Tensor& out) = 0;

  // Backends add their own waits (synchronize(), internal ones) here.
  uint64_t host_syncs_ = 0;
  uint64_t graphs_captured_ = 0, graph_launches_ = 0;

 private:
  [[noreturn]] void fail(const char* what) const;
  std::vector<int32_t> read_offsets(const Tensor& offsets);
  void check_weight(const Tensor& x, const Tensor& w, const Tensor& y, const char* op) const;
  void check_route_device(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                          const Tensor& assign_expert, const Tensor& assign_weight,
                          const Tensor& counts, const Tensor& offsets,
                          std::span<const int32_t> valid_rows) const;
  void check_permute_device(const Tensor& x, const Tensor& assign_expert, const Tensor& offsets,
                            const Tensor& xp, const Tensor& perm) const;
  void check_kv_store(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                      const Tensor& v_cache, std::span<const int32_t> slots) const;
  void check(bool ok, const char* what) const {
    if (!ok) fail(what);
  }
};

// RAII device buffer seen as one tensor.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& backend, int64_t rows, int64_t cols, DType dtype = DType::kF32)
      : backend_(&backend) {
    tensor_.dtype = dtype;
    tensor_.rows = rows;
    tensor_.cols = cols;
    tensor_.stride = cols;
    tensor_.data = rows * cols > 0 ? backend.alloc(tensor_.bytes()) : nullptr;
  }
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept : backend_(o.backend_), tensor_(o.tensor_) {
    o.tensor_.data = nullptr;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      tensor_ = o.tensor_;
      o.tensor_.data = nullptr;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const Tensor& tensor() const { return tensor_; }
  operator const Tensor&() const { return tensor_; }  // NOLINT: a buffer is its tensor
  size_t bytes() const { return tensor_.data ? tensor_.bytes() : 0; }
  void reset() {
    if (backend_ && tensor_.data) backend_->free(tensor_.data);
    tensor_.data = nullptr;
  }

 private:
  Backend* backend_ = nullptr;
  Tensor tensor_;
};

// [SECTION] Registry
using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendOptions&)>;

void register_backend(const std::string& name, BackendFactory factory);
std::vector<std::string> backend_names();
// Throws std::runtime_error naming the known backends when `name` is unknown.
std::unique_ptr<Backend> create_backend(const std::string& name,
                                        const BackendOptions& options = {});

std::unique_ptr<Backend> create_cpu_backend(const BackendOptions& options = {});
#ifdef INFERSCOPE_ENGINE_WITH_CUDA
std::unique_ptr<Backend> create_cuda_backend(const BackendOptions& options);  // src/cuda
#endif

}  // namespace inferscope::engine
