// MoE and SwiGLU blocks over backend ops.
#include "inferscope/engine/layers.hpp"

#include <algorithm>
#include <cmath>

#include "inferscope/engine/capacity.hpp"

namespace inferscope::engine {

MoeScratch::MoeScratch(Backend& be, const ModelConfig& c, int64_t T) {
  const auto& m = c.moe;
  const int64_t A = T * m.top_k;
  logits = Buffer(be, T, m.experts);
  assign_expert = Buffer(be, T, m.top_k, DType::kI32);
  assign_weight = Buffer(be, T, m.top_k);
  xp = Buffer(be, A, c.d_model);
  hp = Buffer(be, A, 2 * m.expert_hidden);
  ap = Buffer(be, A, m.expert_hidden);
  yp = Buffer(be, A, c.d_model);
  perm = Buffer(be, A, 1, DType::kI32);
  if (m.shared_experts > 0) {
    shared_gu = Buffer(be, T, 2 * m.shared_experts * m.expert_hidden);
    shared_act = Buffer(be, T, m.shared_experts * m.expert_hidden);
  }
  offsets.resize(static_cast<size_t>(m.experts) + 1);
  device_offsets = Buffer(be, 1, m.experts + 1, DType::kI32);
}

size_t MoeScratch::bytes() const {
  return logits.bytes() + assign_expert.bytes() + assign_weight.bytes() + xp.bytes() + hp.bytes() +
         ap.bytes() + yp.bytes() + perm.bytes() + shared_gu.bytes() + shared_act.bytes() +
         device_offsets.bytes();
}

int32_t expert_capacity(const MoeConfig& moe, int64_t tokens) {
  return expert_capacity_for(moe.capacity_factor, tokens, moe.top_k, moe.experts);
}

void swiglu_ffn(Backend& be, const Tensor& w_gu, const Tensor& w_down, const Tensor& h,
                const Tensor& gu, const Tensor& act, const Tensor& out, float beta) {
  const int64_t F = w_gu.rows / 2, T = h.rows;
  Tensor g = gu.rows_view(0, T).reshaped(T, 2 * F);
  Tensor a = act.rows_view(0, T).reshaped(T, F);
  be.gate_up_swiglu(h, w_gu, g, a);
  be.linear(a, w_down, out, beta);
}

namespace {
RouteParams route_params(const MoeConfig& moe, int64_t tokens) {
  RouteParams p;
  p.top_k = moe.top_k;
  p.gate = moe.gate;
  p.renormalize = moe.renormalize;
  p.scaling = moe.scaling;
  p.capacity = expert_capacity(moe, tokens);
  p.overflow = moe.overflow;
  p.capacity_factor = moe.capacity_factor > 0.0f ? moe.capacity_factor : 0.0f;
  return p;
}
}  // namespace

namespace {
// The shared experts (dense, every token) seed `out` or add to it; without them a kSet output
// starts from zeros. The routed experts then accumulate into it.
void seed_moe_out(Backend& be, const MoeWeights& w, MoeScratch& s, const Tensor& h,
                  const Tensor& out, MoeOut mode) {
  if (!w.shared_gu.empty())
    swiglu_ffn(be, w.shared_gu, w.shared_down, h, s.shared_gu, s.shared_act, out,
               mode == MoeOut::kAdd ? 1.0f : 0.0f);
  else if (mode == MoeOut::kSet)
    be.fill(out, 0.0f);
}
}  // namespace

int64_t moe_route_and_permute(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                              const Tensor& h, const Tensor& out, RouteCounts& counts,
                              MoeOut mode) {
  const int64_t T = h.rows, E = moe.experts;
  const RouteParams p = route_params(moe, T);
  Tensor logits = s.logits.tensor().rows_view(0, T);
  be.linear(h, w.router, logits);
  Tensor ae = s.assign_expert.tensor().rows_view(0, T),
         aw = s.assign_weight.tensor().rows_view(0, T);
  be.moe_route(logits, w.router_bias, p, ae, aw, counts);
  s.offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e)
    s.offsets[static_cast<size_t>(e) + 1] =
        s.offsets[static_cast<size_t>(e)] + counts.kept[static_cast<size_t>(e)];
  const int64_t A = s.offsets.back();
  seed_moe_out(be, w, s, h, out, mode);
  if (A > 0) be.moe_permute(h, ae, s.offsets, s.xp.tensor().rows_view(0, A), s.perm.tensor());
  return A;
}

void moe_ffn(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s, const Tensor& h,
             const Tensor& out, RouteCounts& counts, MoeOut mode) {
  const int64_t T = h.rows, F = moe.expert_hidden;
  const int64_t A = moe_route_and_permute(be, moe, w, s, h, out, counts, mode);
  if (A == 0) return;
  Tensor xp = s.xp.tensor().rows_view(0, A), perm = s.perm.tensor();
  Tensor hp = s.hp.tensor().rows_view(0, A), ap = s.ap.tensor().rows_view(0, A);
  be.grouped_linear(xp, w.experts_gu, s.offsets, hp);
  be.mul_silu(hp.cols_view(F, F), hp.cols_view(0, F), ap);
  Tensor yp = s.yp.tensor().rows_view(0, A);
  be.grouped_linear(ap, w.experts_down, s.offsets, yp);
  be.moe_unpermute(yp, perm, s.assign_weight.tensor().rows_view(0, T), moe.top_k, A, out);
}

void moe_ffn_device(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                    const Tensor& h, const Tensor& out, const Tensor& counts,
                    std::span<const int32_t> valid_rows, MoeOut mode, const PreNorm* pre) {
  const int64_t T = h.rows;
  if (T == 0) return;
  Tensor logits = s.logits.tensor().rows_view(0, T);
  if (pre != nullptr)
    be.rms_norm_linear(pre->x, pre->weight, pre->eps, w.router, logits, h);
  else
    be.linear(h, w.router, logits);
  Tensor ae = s.assign_expert.tensor().rows_view(0, T),
         aw = s.assign_weight.tensor().rows_view(0, T);
  const Tensor& off = s.device_offsets.tensor();
  // The kept total A is on the device: every view is the bound T * top_k and
  // the ops stop at offsets[E]. An expert serves at most T rows (a token picks
  // it at most once) and at most its capacity: that bounds the grouped GEMMs'
  // grids (and picks the same kernel as the host path, which sees the counts).
  const int64_t bound = T * moe.top_k;
  const int32_t cap = expert_capacity(moe, T);
  const int64_t per_expert = cap > 0 ? std::min<int64_t>(T, cap) : T;
  Tensor xp = s.xp.tensor().rows_view(0, bound), perm = s.perm.tensor().rows_view(0, bound);
  be.moe_route_permute_device(logits, w.router_bias, route_params(moe, T), ae, aw, counts, off,
                              valid_rows, h, xp, perm);
  seed_moe_out(be, w, s, h, out, mode);
  Tensor hp = s.hp.tensor().rows_view(0, bound), ap = s.ap.tensor().rows_view(0, bound);
  be.grouped_gate_up_swiglu(xp, w.experts_gu, off, per_expert, hp, ap);
  Tensor yp = s.yp.tensor().rows_view(0, bound);
  be.grouped_linear(ap, w.experts_down, off, per_expert, yp);
  be.moe_unpermute(yp, perm, aw, moe.top_k, off, out);
}

}  // namespace inferscope::engine
