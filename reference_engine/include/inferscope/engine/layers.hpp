// The model's building blocks as free functions over backend ops. The model
// (model.hpp) composes them; tests call them directly. Nothing here knows which
// backend runs it.
#pragma once

#include <span>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/config.hpp"

namespace inferscope::engine {

// Scratch tensors for a MoE block, sized for `max_tokens` rows.
struct MoeScratch {
  Buffer logits, assign_expert, assign_weight, xp, hp, ap, yp, perm, shared_gu, shared_act;
  std::vector<int32_t> offsets;
  Buffer device_offsets;  // i32 [1, E + 1]: moe_ffn_device's offsets, never read by the host
  MoeScratch() = default;
  MoeScratch(Backend& be, const ModelConfig& c, int64_t max_tokens);
  size_t bytes() const;
};

struct MoeWeights {
  Tensor router, router_bias, experts_gu, experts_down, shared_gu,
      shared_down;  // bias/shared may be empty
};

// Expert capacity for `tokens` tokens: ceil(capacity_factor * tokens * k / E); 0 = unlimited.
int32_t expert_capacity(const MoeConfig& moe, int64_t tokens);

// How a MoE block writes `out`: kSet: out = MoE(h); kAdd: out += MoE(h). The
// model passes its residual stream with kAdd: the experts' unpermute and the
// shared experts' down projection then add into it directly, which saves a
// fill and an add (two launches) per MoE layer.
enum class MoeOut { kSet, kAdd };

// The first half of a MoE block, shared by moe_ffn and its expert-parallel twin
// (moe_ffn_ep): router logits, top-k with capacity (counts), s.offsets of the
// kept assignments per expert, the shared experts seeding `out` (else zeros;
// with kAdd, added to it, else nothing), and h's rows permuted by expert into
// s.xp / s.perm. Returns the kept assignments A (rows of s.xp in use).
int64_t moe_route_and_permute(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                              const Tensor& h, const Tensor& out, RouteCounts& counts,
                              MoeOut mode = MoeOut::kSet);

// out = MoE(h) (kAdd: out += MoE(h)): route, permute by expert, grouped SwiGLU
// experts, unpermute with the combine weights, plus the shared experts.
// `counts` receives the routing result (routed before capacity, kept, dropped,
// rerouted).
void moe_ffn(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s, const Tensor& h,
             const Tensor& out, RouteCounts& counts, MoeOut mode = MoeOut::kSet);

// moe_ffn on the asynchronous routing path (backend.hpp): the same result, but
// the routing stays on the device. `counts` (i32 [1, 2E + 2] on the device)
// receives routed[E], kept[E], dropped, rerouted; the caller copies it to the
// host when it next waits (Model::forward: once per step with the logits).
// Every permuted buffer is used up to the bound T * top_k.
// valid_rows (host metadata, empty or one value): only the first rows are
// routed and counted (the padding of a CUDA-graph bucket is not).
// pre (optional): h is still to be computed as rms_norm(pre->x, pre->weight,
// pre->eps); the block does it with its router linear (Backend::rms_norm_linear:
// one launch where the backend fuses them) and writes h.
struct PreNorm {
  Tensor x, weight;
  float eps = 0.0f;
};
void moe_ffn_device(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                    const Tensor& h, const Tensor& out, const Tensor& counts,
                    std::span<const int32_t> valid_rows = {}, MoeOut mode = MoeOut::kSet,
                    const PreNorm* pre = nullptr);

// out = W_down (silu(h W_gate^T) * (h W_up^T)); gu: [T, 2F] scratch, act: [T, F] scratch.
void swiglu_ffn(Backend& be, const Tensor& w_gu, const Tensor& w_down, const Tensor& h,
                const Tensor& gu, const Tensor& act, const Tensor& out, float beta);

}  // namespace inferscope::engine
