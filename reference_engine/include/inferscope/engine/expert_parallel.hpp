// Expert parallelism for the MoE layers (docs/expert-parallel.md, "Engine").
//
// Data-parallel attention + expert-parallel MoE, as in DeepSeek / SGLang's
// DP-attention + EP: N rank processes each serve their own requests with their
// own caches and a full copy of the non-expert weights, and hold only their
// shard of every MoE layer's routed experts. Rank r holds the physical expert
// slots [r * E/N, (r+1) * E/N); shared experts are replicated. By default slot
// == the model's (logical) expert id; a placement file (--ep-placement,
// placement_file.hpp) relabels the experts per layer so that a rank's slots
// hold the logical experts the file puts there: the router rows and expert
// weights are permuted at load time, the routing yields slots, and the
// per-expert counts are mapped back to logical ids before they leave the model.
//
// moe_ffn_ep() is moe_ffn() with the experts spread over the ranks:
//   route locally (capacity decided here, by the routing rank)
//   -> permute by expert (a destination rank's rows are contiguous, because
//      its experts are)
//   -> all_gather the per-expert kept counts (every rank learns how many rows
//      each source sends for each of its experts)
//   -> dispatch: all_to_all_v of the permuted rows
//   -> experts: grouped SwiGLU over the local experts, one grouped GEMM pair
//      per source block (the received rows are grouped by source, then by
//      expert; no regrouping copy)
//   -> combine: all_to_all_v of the results back to their routing ranks, in
//      the order they were sent, i.e. the single-rank permuted order
//   -> unpermute with the combine weights, on top of the shared experts.
// A rank with no rows calls it with h.rows == 0: it still answers every
// exchange (lockstep), computing the rows the others send it.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/layers.hpp"

namespace inferscope::engine {

// Which rank holds which routed experts.
struct ExpertPlacement {
  int32_t experts = 0;  // E (routed experts per MoE layer)
  int32_t ranks = 1;    // N
  int32_t rank = 0;     // this rank
  // Per layer (indexed by layer; an empty entry = identity): the logical
  // expert held in each physical slot, [E]. Empty: contiguous everywhere.
  std::vector<std::vector<int32_t>> slot_to_logical;
  // Logical expert -> rank of the default (non-override) map, for the agent's
  // hello. Empty: contiguous.
  std::vector<uint32_t> default_expert_to_rank;

  // Throws std::invalid_argument unless 1 <= ranks, 0 <= rank < ranks and E % N == 0.
  static ExpertPlacement make(int32_t experts, int32_t ranks, int32_t rank);
  // make() that keeps this placement's relabelling (checked against E).
  ExpertPlacement validated(int32_t experts) const;
  // The slot -> logical map of `layer`, or null where it is the identity.
  const std::vector<int32_t>* relabel(int32_t layer) const {
    if (layer < 0 || static_cast<size_t>(layer) >= slot_to_logical.size()) return nullptr;
    const auto& m = slot_to_logical[static_cast<size_t>(layer)];
    return m.empty() ? nullptr : &m;
  }
  int32_t per_rank() const { return ranks > 0 ? experts / ranks : experts; }
  int32_t first_local() const { return rank * per_rank(); }
  int32_t owner(int32_t expert) const { return expert / per_rank(); }
  bool sharded() const { return ranks > 1; }
  // expert_to_rank[e] for the agent's ModelDescription.
  std::vector<uint32_t> expert_to_rank() const;
};

enum class EpPhase : uint8_t { kDispatch = 0, kExperts = 1, kCombine = 2 };
const char* to_string(EpPhase phase);  // "ep.dispatch" | "ep.experts" | "ep.combine"

// Named ranges around the three phases (the engine's telemetry makes them
// agent + NVTX ranges, so CUPTI attributes the NCCL and GEMM kernels to them).
class EpPhaseHook {
 public:
  virtual ~EpPhaseHook() = default;
  virtual void ep_phase_begin(int32_t /*layer*/, EpPhase) {}
  virtual void ep_phase_end(int32_t /*layer*/, EpPhase) {}
};

// One MoE layer of one step on this rank.
struct EpLayerStats {
  int32_t layer = 0;
  int64_t timestamp_ns = 0;  // host clock (ExpertParallel::clock) when dispatch began
  int64_t dispatch_ns = 0, compute_ns = 0, combine_ns = 0;
  uint32_t rows_sent = 0;      // assignment rows sent to other ranks
  uint32_t rows_computed = 0;  // rows this rank's experts computed (own + received)
  // Dispatch traffic matrix, this rank's row: rows_to_rank[d] = rows sent to rank
  // d's experts (own rank: kept local). Combine returns each row to its sender, so
  // a rank receives in combine what it sent in dispatch (the matrix transposed).
  uint32_t row_bytes = 0;  // bytes of one dispatched row (hidden size x element size)
  std::vector<uint32_t> rows_to_rank;
};

// Scratch for the received rows (sized for every rank sending its whole batch here).
struct EpScratch {
  Buffer xrecv, hrecv, arecv, yrecv;
  std::vector<int32_t> gathered, send_counts, recv_counts, local_offsets, kept;
  EpScratch() = default;
  EpScratch(Backend& be, const ModelConfig& c, const ExpertPlacement& p, int64_t max_tokens);
  size_t bytes() const;
};

// Everything a rank needs for moe_ffn_ep.
struct ExpertParallel {
  Communicator* comm = nullptr;
  ExpertPlacement placement;
  EpScratch scratch;
  int64_t (*clock)() = nullptr;  // host clock for EpLayerStats::timestamp_ns (null: steady clock)
};

// out = MoE(h) (kAdd: out += MoE(h)) with the routed experts spread over the ranks (see above).
// w.experts_gu / experts_down hold only this rank's experts
// ([per_rank * 2F, D] and [per_rank * D, F]). h may have 0 rows. `mark_base`
// picks 4 communicator mark slots for this call's timing; stats' durations are
// filled by ep_read_timing() once the backend has synchronised.
void moe_ffn_ep(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                ExpertParallel& ep, const Tensor& h, const Tensor& out, RouteCounts& counts,
                int mark_base, EpLayerStats& stats, EpPhaseHook* hook = nullptr,
                MoeOut mode = MoeOut::kSet);
void ep_read_timing(ExpertParallel& ep, int mark_base, EpLayerStats& stats);

// The topic (workload.hpp) whose hot experts (topic_hot_expert) sit on `rank`'s
// shard in the most MoE layers: the skewed-ep workload sends mostly this topic.
int32_t ep_hot_topic(const ModelConfig& config, int32_t ranks, int32_t rank);

}  // namespace inferscope::engine
