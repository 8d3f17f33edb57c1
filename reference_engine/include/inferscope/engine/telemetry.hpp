// The engine's side of the agent: every signal goes through inferscope::agent
// (agent.hpp). One Telemetry per engine; null when telemetry is off
// (`--collector ""`), in which case the engine makes no agent call at all.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inferscope/agent.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/model.hpp"

namespace inferscope::engine {

class Telemetry final : public ForwardObserver {
 public:
  // config.model is filled from the model config; under expert parallelism
  // (placement.ranks > 1) its expert_to_rank describes the placement and the
  // agent's rank / world_size are the EP rank / size.
  Telemetry(agent::Config config, const ModelConfig& model, const ExpertPlacement& placement = {});
  ~Telemetry() override;

  agent::Agent& agent() { return *agent_; }
  // Called once per engine step: also a step boundary for the agent's
  // step-counted GPU captures (docs/gpu.md; an atomic increment).
  void set_step(uint64_t step) {
    step_ = step;
    agent_->gpu_step();
  }

  // ForwardObserver: one CPU range per layer, one expert_load per MoE layer.
  void layer_begin(int32_t layer) override;
  void layer_end(int32_t layer) override;
  void moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) override;
  // Expert parallelism: ep.dispatch / ep.experts / ep.combine ranges (agent +
  // NVTX, so CUPTI attributes the NCCL and GEMM kernels to them) and one
  // ExpertParallelStep record per MoE layer per step.
  void ep_phase_begin(int32_t layer, EpPhase phase) override;
  void ep_phase_end(int32_t layer, EpPhase phase) override;
  void ep_layer(const EpLayerStats& stats) override;

  // Interned range names.
  uint32_t id_step = 0, id_backbone = 0, id_prefill = 0, id_decode = 0, id_encoder = 0,
           id_connector = 0, id_schedule = 0, id_sample = 0;
  // Counters the collector exports (wire/counter_names.hpp).
  uint32_t id_ckpt_evicted_unused = 0, id_ckpt_evicted_reused = 0;

 private:
  std::unique_ptr<agent::Agent> agent_;
  std::vector<uint32_t> layer_names_;
  std::optional<agent::ScopedRange> layer_range_, ep_range_;
  uint32_t ep_names_[3] = {};
  std::vector<uint32_t> routed_;
  uint64_t step_ = 0;
};

}  // namespace inferscope::engine
