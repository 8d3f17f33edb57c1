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
  // config.model is filled from the model config.
  Telemetry(agent::Config config, const ModelConfig& model);
  ~Telemetry() override;

  agent::Agent& agent() { return *agent_; }
  void set_step(uint64_t step) { step_ = step; }

  // ForwardObserver: one CPU range per layer, one expert_load per MoE layer.
  void layer_begin(int32_t layer) override;
  void layer_end(int32_t layer) override;
  void moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) override;

  // Interned range names.
  uint32_t id_step = 0, id_backbone = 0, id_prefill = 0, id_decode = 0, id_encoder = 0,
           id_connector = 0, id_schedule = 0, id_sample = 0;

 private:
  std::unique_ptr<agent::Agent> agent_;
  std::vector<uint32_t> layer_names_;
  std::optional<agent::ScopedRange> layer_range_;
  std::vector<uint32_t> routed_;
  uint64_t step_ = 0;
};

}  // namespace inferscope::engine
