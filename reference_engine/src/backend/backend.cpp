// The Backend's ops (backend.hpp): each checks its inputs here, once for every
// backend, then calls the backend's <op>_impl. A check belongs here when it
// follows from the op's contract in backend.hpp; limits of one implementation
// (the CUDA router's 1024 experts, its power-of-two d_state) and checks of
// data only the implementation sees stay in that backend.
#include "inferscope/engine/backend.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "inferscope/engine/capacity.hpp"

namespace inferscope::engine {

void Backend::fail(const char* what) const {
  throw std::invalid_argument(name() + " backend: " + what);
}

// [SECTION] Memory
void Backend::upload(const Tensor& dst, const void* host_src) {
  check(dst.contiguous(), "upload needs a contiguous tensor");
  ++host_syncs_;
  upload_impl(dst, host_src);
}

void Backend::download(const Tensor& src, void* host_dst) {
  check(src.contiguous(), "download needs a contiguous tensor");
  ++host_syncs_;
  download_impl(src, host_dst);
}

void Backend::download(std::span<const HostCopy> copies) {
  for (const HostCopy& c : copies)
    check(c.src.contiguous() && (c.dst != nullptr || c.src.empty()),
          "download needs contiguous tensors and host destinations");
  ++host_syncs_;
  download_many_impl(copies);
}

void Backend::download_many_impl(std::span<const HostCopy> copies) {
  for (const HostCopy& c : copies)
    if (!c.src.empty()) download_impl(c.src, c.dst);
}

// [SECTION] Elementwise / data movement
void Backend::copy(const Tensor& src, const Tensor& dst) {
  check(src.rows == dst.rows && src.cols == dst.cols && src.dtype == dst.dtype, "copy shape");
  copy_impl(src, dst);
}

void Backend::fill(const Tensor& dst, float value) {
  fill_impl(dst, value);
}

void Backend::get_rows(const Tensor& table, std::span<const int32_t> ids, const Tensor& out) {
  check(out.rows == static_cast<int64_t>(ids.size()) && out.cols == table.cols, "get_rows shape");
  for (int32_t id : ids) check(id >= 0 && id < table.rows, "get_rows id out of range");
  get_rows_impl(table, ids, out);
}

void Backend::add(const Tensor& a, const Tensor& b, const Tensor& out) {
  check(a.rows == b.rows && a.cols == b.cols && out.rows == a.rows && out.cols == a.cols,
        "add shape");
  add_impl(a, b, out);
}

void Backend::mul_silu(const Tensor& x, const Tensor& gate, const Tensor& out) {
  check(x.rows == gate.rows && x.cols == gate.cols && out.rows == x.rows && out.cols == x.cols,
        "mul_silu shape");
  mul_silu_impl(x, gate, out);
}

void Backend::gelu(const Tensor& x, const Tensor& out) {
  check(x.rows == out.rows && x.cols == out.cols, "gelu shape");
  gelu_impl(x, out);
}

void Backend::rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  check(weight.cols == x.cols && out.rows == x.rows && out.cols == x.cols, "rms_norm shape");
  rms_norm_impl(x, weight, eps, out);
}

// [SECTION] GEMMs
void Backend::check_weight(const Tensor& x, const Tensor& w, const Tensor& y,
                           const char* op) const {
  const std::string o(op);
  if (x.dtype != DType::kF32 || y.dtype != DType::kF32)
    fail((o + ": activations must be f32").c_str());
  if (w.dtype == DType::kBF16) {
    if (!bf16_weights()) fail((o + ": this backend takes no bf16 weights").c_str());
    if (!w.contiguous()) fail((o + ": a bf16 weight must be contiguous").c_str());
  } else if (w.dtype != DType::kF32) {
    fail((o + ": weight must be f32 or bf16").c_str());
  }
}

void Backend::linear(const Tensor& x, const Tensor& w, const Tensor& y, float beta) {
  check(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows, "linear shape");
  check_weight(x, w, y, "linear");
  linear_impl(x, w, y, beta);
}

void Backend::grouped_linear(const Tensor& x, const Tensor& w, std::span<const int32_t> offsets,
                             const Tensor& y) {
  check(!offsets.empty(), "grouped_linear offsets");
  const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  check(experts >= 1 && w.rows % experts == 0,
        "grouped_linear: weight rows not a multiple of experts");
  check_weight(x, w, y, "grouped_linear");
  const int64_t n = w.rows / experts;
  check(x.cols == w.cols && y.cols == n && offsets.back() <= x.rows && y.rows >= offsets.back() &&
            offsets.front() >= 0,
        "grouped_linear shape");
  for (int64_t e = 0; e < experts; ++e)
    check(offsets[static_cast<size_t>(e) + 1] >= offsets[static_cast<size_t>(e)],
          "grouped_linear: offsets must not decrease");
  grouped_linear_impl(x, w, offsets, y);
}

// [SECTION] Attention
void Backend::rope(const Tensor& x, std::span<const int32_t> positions, int32_t n_heads,
                   int32_t head_dim, float theta) {
  check(x.rows == static_cast<int64_t>(positions.size()) && x.cols >= n_heads * head_dim &&
            head_dim % 2 == 0,
        "rope shape");
  rope_impl(x, positions, n_heads, head_dim, theta);
}

void Backend::check_kv_store(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                             const Tensor& v_cache, std::span<const int32_t> slots) const {
  check(k.rows == static_cast<int64_t>(slots.size()) && k.cols == k_cache.cols &&
            v.cols == v_cache.cols && v.rows == k.rows,
        "kv_store shape");
  for (int32_t s : slots) check(s >= 0 && s < k_cache.rows, "kv_store slot out of range");
}

void Backend::kv_store(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                       const Tensor& v_cache, std::span<const int32_t> slots) {
  check_kv_store(k, v, k_cache, v_cache, slots);
  kv_store_impl(k, v, k_cache, v_cache, slots);
}

void Backend::paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              const PagedBatch& batch, const AttentionParams& params,
                              const Tensor& out) {
  const int64_t T = q.rows;
  check(static_cast<int64_t>(batch.token_seq.size()) == T &&
            static_cast<int64_t>(batch.token_pos.size()) == T && batch.block_size > 0 &&
            params.n_kv_heads > 0 && params.n_heads % params.n_kv_heads == 0,
        "paged_attention batch");
  paged_attention_impl(q, k_cache, v_cache, batch, params, out);
}

void Backend::attention(const Tensor& q, const Tensor& k, const Tensor& v, SeqStarts seqs,
                        const AttentionParams& params, bool causal, const Tensor& out) {
  check(!seqs.empty() && seqs.back() == q.rows && k.rows == q.rows && v.rows == q.rows &&
            params.n_kv_heads > 0 && params.n_heads % params.n_kv_heads == 0,
        "attention shape");
  attention_impl(q, k, v, seqs, params, causal, out);
}

// [SECTION] Selective state space
void Backend::ssm_scan(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, const Tensor& A,
                       const Tensor& B, const Tensor& C, const Tensor& Dskip, SeqStarts seqs,
                       std::span<const int32_t> state_slots, const Tensor& states,
                       const Tensor& y) {
  const int64_t D = x.cols, N = A.cols;
  check(!seqs.empty() && seqs.back() == x.rows && dt.cols == D && A.rows == D && B.cols == N &&
            C.cols == N && states.cols == D * N && state_slots.size() + 1 == seqs.size() &&
            y.cols == D && A.contiguous(),
        "ssm_scan shape");
  ssm_scan_impl(x, dt, dt_bias, A, B, C, Dskip, seqs, state_slots, states, y);
}

// [SECTION] Mixture of experts
void Backend::moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                        const Tensor& assign_expert, const Tensor& assign_weight,
                        RouteCounts& counts) {
  const int64_t T = logits.rows, E = logits.cols;
  const int32_t k = params.top_k;
  check(k >= 1 && k <= E && assign_expert.rows == T && assign_expert.cols == k &&
            assign_weight.rows == T && assign_weight.cols == k && (bias.empty() || bias.cols == E),
        "moe_route shape");
  ++host_syncs_;  // the counts come back on the host
  moe_route_impl(logits, bias, params, assign_expert, assign_weight, counts);
}

void Backend::moe_permute(const Tensor& x, const Tensor& assign_expert,
                          std::span<const int32_t> offsets, const Tensor& xp, const Tensor& perm) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
  check(E >= 1 && xp.cols == x.cols && xp.rows >= offsets.back() && perm.rows >= offsets.back() &&
            assign_expert.rows == x.rows,
        "moe_permute shape");
  moe_permute_impl(x, assign_expert, offsets, xp, perm);
}

void Backend::moe_unpermute(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                            int32_t top_k, int64_t assignments, const Tensor& y) {
  check(yp.cols == y.cols && assignments <= yp.rows && top_k >= 1 && assign_weight.rows == y.rows &&
            assign_weight.cols == top_k,
        "moe_unpermute shape");
  moe_unpermute_impl(yp, perm, assign_weight, top_k, assignments, y);
}

// [SECTION] Mixture of experts, asynchronous routing
namespace {
bool i32_row(const Tensor& t, int64_t cols) {
  return t.dtype == DType::kI32 && t.rows == 1 && t.cols == cols && t.data != nullptr;
}
// The device-side offsets every op after routing takes: i32 [1, E + 1], E >= 1.
bool device_offsets(const Tensor& offsets) {
  return offsets.dtype == DType::kI32 && offsets.rows == 1 && offsets.cols >= 2;
}
}  // namespace

void Backend::check_route_device(const Tensor& logits, const Tensor& bias,
                                 const RouteParams& params, const Tensor& assign_expert,
                                 const Tensor& assign_weight, const Tensor& counts,
                                 const Tensor& offsets, std::span<const int32_t> valid_rows) const {
  const int64_t T = logits.rows, E = logits.cols;
  const int32_t k = params.top_k;
  check(k >= 1 && k <= E && assign_expert.rows == T && assign_expert.cols == k &&
            assign_weight.rows == T && assign_weight.cols == k && (bias.empty() || bias.cols == E),
        "moe_route_device shape");
  check(i32_row(counts, 2 * E + 2) && i32_row(offsets, E + 1),
        "moe_route_device: counts must be i32 [1, 2E + 2] and offsets i32 [1, E + 1]");
  check(
      valid_rows.size() <= 1 && (valid_rows.empty() || (valid_rows[0] >= 0 && valid_rows[0] <= T)),
      "moe_route_device: valid_rows must be empty or one value in 0..T");
}

void Backend::moe_route_device(const Tensor& logits, const Tensor& bias, const RouteParams& params,
                               const Tensor& assign_expert, const Tensor& assign_weight,
                               const Tensor& counts, const Tensor& offsets,
                               std::span<const int32_t> valid_rows) {
  check_route_device(logits, bias, params, assign_expert, assign_weight, counts, offsets,
                     valid_rows);
  moe_route_device_impl(logits, bias, params, assign_expert, assign_weight, counts, offsets,
                        valid_rows);
}

void Backend::check_permute_device(const Tensor& x, const Tensor& assign_expert,
                                   const Tensor& offsets, const Tensor& xp,
                                   const Tensor& perm) const {
  const int64_t bound = assign_expert.rows * assign_expert.cols;
  check(device_offsets(offsets), "moe_permute: offsets must be i32 [1, E + 1]");
  check(xp.cols == x.cols && xp.rows >= bound && perm.rows >= bound && perm.dtype == DType::kI32 &&
            assign_expert.rows == x.rows,
        "moe_permute shape (xp and perm need T * top_k rows)");
}

void Backend::moe_permute(const Tensor& x, const Tensor& assign_expert, const Tensor& offsets,
                          const Tensor& xp, const Tensor& perm) {
  check_permute_device(x, assign_expert, offsets, xp, perm);
  moe_permute_device_impl(x, assign_expert, offsets, xp, perm);
}

void Backend::grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets,
                             int64_t max_rows_per_expert, const Tensor& y) {
  check(device_offsets(offsets), "grouped_linear: offsets must be i32 [1, E + 1]");
  const int64_t experts = offsets.cols - 1;
  check(w.rows % experts == 0, "grouped_linear: weight rows not a multiple of experts");
  check_weight(x, w, y, "grouped_linear");
  check(x.cols == w.cols && y.cols == w.rows / experts && y.rows >= x.rows &&
            max_rows_per_expert >= 0,
        "grouped_linear shape");
  grouped_linear_device_impl(x, w, offsets, max_rows_per_expert, y);
}

void Backend::moe_unpermute(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                            int32_t top_k, const Tensor& offsets, const Tensor& y) {
  check(device_offsets(offsets), "moe_unpermute: offsets must be i32 [1, E + 1]");
  check(yp.cols == y.cols && top_k >= 1 && yp.rows >= y.rows * top_k &&
            perm.rows >= y.rows * top_k && assign_weight.rows == y.rows &&
            assign_weight.cols == top_k,
        "moe_unpermute shape (yp and perm need T * top_k rows)");
  moe_unpermute_device_impl(yp, perm, assign_weight, top_k, offsets, y);
}

// The synchronous defaults: exact for every backend, one wait each on a device.
// Host memory is read in place; a device backend on these defaults waits (counted).
std::vector<int32_t> Backend::read_offsets(const Tensor& offsets) {
  std::vector<int32_t> host(static_cast<size_t>(offsets.cols));
  if (!host_memory()) ++host_syncs_;
  download_impl(offsets, host.data());
  check(host.front() == 0, "device offsets must start at 0");
  for (size_t e = 0; e + 1 < host.size(); ++e)
    check(host[e + 1] >= host[e], "device offsets must not decrease");
  return host;
}

void Backend::moe_route_device_impl(const Tensor& logits, const Tensor& bias,
                                    const RouteParams& params, const Tensor& assign_expert,
                                    const Tensor& assign_weight, const Tensor& counts,
                                    const Tensor& offsets, std::span<const int32_t> valid_rows) {
  RouteCounts c;
  const size_t E = static_cast<size_t>(logits.cols);
  const int64_t T = logits.rows, v = valid_rows.empty() ? T : valid_rows[0];
  RouteParams p = params;
  if (!valid_rows.empty() && p.capacity_factor > 0.0f)
    p.capacity = expert_capacity_for(p.capacity_factor, v, p.top_k, logits.cols);
  if (v > 0)
    moe_route_impl(logits.rows_view(0, v), bias, p, assign_expert.rows_view(0, v),
                   assign_weight.rows_view(0, v), c);
  c.routed.resize(E, 0);
  c.kept.resize(E, 0);
  if (v < T) {  // padding rows: no expert, no weight
    fill_impl(assign_expert.rows_view(v, T - v), -1.0f);
    fill_impl(assign_weight.rows_view(v, T - v), 0.0f);
  }
  std::vector<int32_t> host(2 * E + 2), off(E + 1, 0);
  for (size_t e = 0; e < E; ++e) {
    host[e] = static_cast<int32_t>(c.routed[e]);
    host[E + e] = c.kept[e];
    off[e + 1] = off[e] + c.kept[e];
  }
  host[2 * E] = static_cast<int32_t>(c.dropped);
  host[2 * E + 1] = static_cast<int32_t>(c.rerouted);
  if (!host_memory()) ++host_syncs_;
  upload_impl(counts, host.data());
  upload_impl(offsets, off.data());
}

void Backend::moe_permute_device_impl(const Tensor& x, const Tensor& assign_expert,
                                      const Tensor& offsets, const Tensor& xp, const Tensor& perm) {
  const std::vector<int32_t> off = read_offsets(offsets);
  if (off.back() > 0) moe_permute_impl(x, assign_expert, off, xp, perm);
}

void Backend::grouped_linear_device_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                         int64_t /*max_rows_per_expert*/, const Tensor& y) {
  const std::vector<int32_t> off = read_offsets(offsets);
  check(off.back() <= x.rows, "grouped_linear: device offsets past the bound");
  grouped_linear_impl(x, w, off, y);
}

void Backend::moe_unpermute_device_impl(const Tensor& yp, const Tensor& perm,
                                        const Tensor& assign_weight, int32_t top_k,
                                        const Tensor& offsets, const Tensor& y) {
  const std::vector<int32_t> off = read_offsets(offsets);
  moe_unpermute_impl(yp, perm, assign_weight, top_k, off.back(), y);
}

// [SECTION] Fused ops: checked here, their compositions as the defaults
void Backend::rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps,
                              const Tensor& w, const Tensor& y, const Tensor& h) {
  check(h.rows == x.rows && h.cols == x.cols && h.data != x.data && h.data != y.data,
        "rms_norm_linear: h must be [x.rows, x.cols], apart from x and y");
  check(norm_weight.cols == x.cols, "rms_norm_linear shape");
  check(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows, "rms_norm_linear shape");
  check_weight(x, w, y, "rms_norm_linear");
  rms_norm_linear_impl(x, norm_weight, eps, w, y, h);
}
void Backend::rms_norm_linear_impl(const Tensor& x, const Tensor& norm_weight, float eps,
                                   const Tensor& w, const Tensor& y, const Tensor& h) {
  rms_norm(x, norm_weight, eps, h);
  linear(h, w, y);
}

void Backend::moe_route_permute_device(const Tensor& logits, const Tensor& bias,
                                       const RouteParams& params, const Tensor& assign_expert,
                                       const Tensor& assign_weight, const Tensor& counts,
                                       const Tensor& offsets, std::span<const int32_t> valid_rows,
                                       const Tensor& x, const Tensor& xp, const Tensor& perm) {
  check_route_device(logits, bias, params, assign_expert, assign_weight, counts, offsets,
                     valid_rows);
  check_permute_device(x, assign_expert, offsets, xp, perm);
  moe_route_permute_device_impl(logits, bias, params, assign_expert, assign_weight, counts, offsets,
                                valid_rows, x, xp, perm);
}
void Backend::moe_route_permute_device_impl(const Tensor& logits, const Tensor& bias,
                                            const RouteParams& params, const Tensor& assign_expert,
                                            const Tensor& assign_weight, const Tensor& counts,
                                            const Tensor& offsets,
                                            std::span<const int32_t> valid_rows, const Tensor& x,
                                            const Tensor& xp, const Tensor& perm) {
  moe_route_device(logits, bias, params, assign_expert, assign_weight, counts, offsets, valid_rows);
  moe_permute(x, assign_expert, offsets, xp, perm);
}

void Backend::gate_up_swiglu(const Tensor& x, const Tensor& w, const Tensor& gu,
                             const Tensor& act) {
  check(w.rows % 2 == 0 && gu.rows == x.rows && gu.cols == w.rows && act.rows == x.rows &&
            act.cols == w.rows / 2,
        "gate_up_swiglu: gu must be [x.rows, 2F] and act [x.rows, F] for a [2F, K] weight");
  gate_up_swiglu_impl(x, w, gu, act);
}
void Backend::gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& gu,
                                  const Tensor& act) {
  const int64_t F = gu.cols / 2;
  linear(x, w, gu);
  mul_silu(gu.cols_view(F, F), gu.cols_view(0, F), act);
}

void Backend::grouped_gate_up_swiglu(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                     int64_t max_rows_per_expert, const Tensor& gu,
                                     const Tensor& act) {
  check(device_offsets(offsets), "grouped_gate_up_swiglu: offsets must be i32 [1, E + 1]");
  const int64_t experts = offsets.cols - 1;
  check(w.rows % (2 * experts) == 0 && gu.cols == w.rows / experts && act.cols == gu.cols / 2 &&
            gu.rows == x.rows && act.rows == x.rows,
        "grouped_gate_up_swiglu: gu must be [x.rows, 2F] and act [x.rows, F] for [E * 2F, K]");
  grouped_gate_up_swiglu_impl(x, w, offsets, max_rows_per_expert, gu, act);
}
void Backend::grouped_gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                          int64_t max_rows_per_expert, const Tensor& gu,
                                          const Tensor& act) {
  const int64_t F = gu.cols / 2;
  grouped_linear(x, w, offsets, max_rows_per_expert, gu);
  // Over the bound: rows past offsets[E] hold stale values that nothing reads back.
  mul_silu(gu.cols_view(F, F), gu.cols_view(0, F), act);
}

void Backend::qk_norm_rope_store(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& q_norm, const Tensor& k_norm, float eps,
                                 std::span<const int32_t> positions, int32_t n_heads,
                                 int32_t n_kv_heads, int32_t head_dim, float theta,
                                 const Tensor& k_cache, const Tensor& v_cache,
                                 std::span<const int32_t> slots) {
  check(q.rows == k.rows && (q_norm.empty() || q_norm.cols == q.cols) &&
            (k_norm.empty() || k_norm.cols == k.cols),
        "qk_norm_rope_store shape");
  check(q.rows == static_cast<int64_t>(positions.size()) && q.cols >= n_heads * head_dim &&
            k.cols >= n_kv_heads * head_dim && head_dim % 2 == 0,
        "qk_norm_rope_store: rope shape");
  check_kv_store(k, v, k_cache, v_cache, slots);
  qk_norm_rope_store_impl(q, k, v, q_norm, k_norm, eps, positions, n_heads, n_kv_heads, head_dim,
                          theta, k_cache, v_cache, slots);
}
void Backend::qk_norm_rope_store_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& q_norm, const Tensor& k_norm, float eps,
                                      std::span<const int32_t> positions, int32_t n_heads,
                                      int32_t n_kv_heads, int32_t head_dim, float theta,
                                      const Tensor& k_cache, const Tensor& v_cache,
                                      std::span<const int32_t> slots) {
  if (!q_norm.empty()) rms_norm(q, q_norm, eps, q);
  if (!k_norm.empty()) rms_norm(k, k_norm, eps, k);
  rope(q, positions, n_heads, head_dim, theta);
  rope(k, positions, n_kv_heads, head_dim, theta);
  kv_store(k, v, k_cache, v_cache, slots);
}

// [SECTION] Step graphs: the defaults of a backend without them
void Backend::capture_begin() {
  fail("this backend captures no step graphs");
}
void Backend::capture_end(uint64_t) {
  fail("this backend captures no step graphs");
}
void Backend::graph_launch(uint64_t) {
  fail("this backend captures no step graphs");
}

// [SECTION] Vision front end
void Backend::patchify(const Tensor& image, int32_t height, int32_t width, int32_t channels,
                       int32_t patch, const Tensor& out) {
  check(patch > 0 && height % patch == 0 && width % patch == 0 && image.rows == height &&
            image.cols == static_cast<int64_t>(width) * channels &&
            out.rows == static_cast<int64_t>(height / patch) * (width / patch) &&
            out.cols == static_cast<int64_t>(patch) * patch * channels,
        "patchify shape");
  patchify_impl(image, height, width, channels, patch, out);
}

void Backend::mean_pool_rows(const Tensor& x, int32_t group, const Tensor& out) {
  check(group > 0 && out.rows * group == x.rows && out.cols == x.cols, "mean_pool_rows shape");
  mean_pool_rows_impl(x, group, out);
}

}  // namespace inferscope::engine
