// The engine's side of the agent, and the only caller of it: every signal the
// engine sends goes through a Telemetry method in the engine's own words
// (phases, requests, memory levels); this file translates them into agent
// calls and wire records. One Telemetry per engine; null when telemetry is off
// (`--collector ""`), in which case the engine makes no agent call at all.
//
// agent.hpp is only forward-declared here, so the engine core (engine.cpp and
// everything it includes) never sees the agent: scripts/check-includes keeps it
// that way. The process that owns the agent (inferscope-engine's main, tests,
// benches) includes agent.hpp itself and reaches it through agent().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inferscope/engine/config.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::agent {
class Agent;
class ScopedRange;
struct Config;
}  // namespace inferscope::agent

namespace inferscope::engine {

// The description the agent sends to the collector (wire types stay out of
// ModelConfig).
wire::ModelDescription describe(const ModelConfig& model);

// What a request spends time in, as the engine names it.
enum class RequestPhase : uint8_t { kEncoder, kConnector, kPrefill, kDecode };

// KV / SSM state / checkpoint bytes in use now (capacities: MemoryFootprint).
struct MemoryInUse {
  size_t kv_cache = 0, ssm_state = 0, ssm_checkpoints = 0;
};

class Telemetry final : public ForwardObserver {
 public:
  // config.model is filled from the model config; under expert parallelism
  // (placement.ranks > 1) its expert_to_rank describes the placement and the
  // agent's rank / world_size are the EP rank / size.
  Telemetry(agent::Config config, const ModelConfig& model, const ExpertPlacement& placement = {});
  ~Telemetry() override;

  // The time base of every signal (CLOCK_MONOTONIC ns, the agent's clock); the
  // engine stamps requests with it whether telemetry is on or not.
  static int64_t now_ns();

  // For the process that owns the agent: flush, stats, the final books.
  agent::Agent& agent() { return *agent_; }

  // A CPU range (and NVTX range) from construction to destruction; an empty
  // Span (telemetry off) does nothing.
  class Span {
   public:
    Span();
    Span(Span&&) noexcept;
    Span& operator=(Span&&) noexcept;
    ~Span();

   private:
    friend class Telemetry;
    std::unique_ptr<agent::ScopedRange> outer_, inner_;
  };
  // kEncoder / kConnector: that request's front end. kPrefill / kDecode: one
  // forward pass ("backbone" around "prefill" or "decode"; a mixed batch is
  // kPrefill), no request id.
  [[nodiscard]] Span span(RequestPhase phase, uint64_t request_id = 0);

  // Called once per engine step: also a step boundary for the agent's
  // step-counted GPU captures (docs/gpu.md; an atomic increment).
  void set_step(uint64_t step);
  // One request spent [start_ns, end_ns) in `phase`.
  void request_phase(uint64_t request_id, RequestPhase phase, int64_t start_ns, int64_t end_ns);
  // A request finished (or was rejected).
  void request_finished(const RequestResult& result);
  // Deltas since the last call.
  void checkpoint_evictions(uint64_t evicted_unused, uint64_t evicted_reused);
  void prefix_lookups(uint64_t attention_queried, uint64_t attention_hit, uint64_t ssm_queried,
                      uint64_t ssm_hit);
  // Levels now, against the model's capacities.
  void memory(const MemoryInUse& used, const MemoryFootprint& capacity);

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

 private:
  std::unique_ptr<agent::Agent> agent_;
  // Interned range and counter names.
  uint32_t id_backbone_ = 0, id_prefill_ = 0, id_decode_ = 0, id_encoder_ = 0, id_connector_ = 0;
  uint32_t id_ckpt_evicted_unused_ = 0, id_ckpt_evicted_reused_ = 0;  // wire/counter_names.hpp
  std::vector<uint32_t> layer_names_;
  // The open layer and EP-phase ranges, reused every step (no allocation per
  // layer); defined in telemetry.cpp, where the agent is complete.
  struct OpenRanges;
  std::unique_ptr<OpenRanges> open_;
  uint32_t ep_names_[3] = {};
  uint64_t step_ = 0;
};

}  // namespace inferscope::engine
