// Telemetry: the engine's signals through the agent API.
#include "inferscope/engine/telemetry.hpp"

#include "inferscope/wire/counter_names.hpp"

namespace inferscope::engine {

Telemetry::Telemetry(agent::Config config, const ModelConfig& model,
                     const ExpertPlacement& placement) {
  config.model = model.describe();
  if (placement.ranks > 1) {
    config.model.expert_to_rank = placement.expert_to_rank();
    config.rank = static_cast<uint32_t>(placement.rank);
    config.world_size = static_cast<uint32_t>(placement.ranks);
  }
  if (config.service.empty() || config.service == "inferscope")
    config.service = "inferscope-engine";
  agent_ = std::make_unique<agent::Agent>(std::move(config));
  id_step = agent::intern("engine.step");
  id_backbone = agent::intern("backbone");
  id_prefill = agent::intern("prefill");
  id_decode = agent::intern("decode");
  id_encoder = agent::intern("encoder");
  id_connector = agent::intern("connector");
  id_schedule = agent::intern("schedule");
  id_sample = agent::intern("sample");
  id_ckpt_evicted_unused = agent::intern(wire::counter_names::kSsmCheckpointsEvictedUnused);
  id_ckpt_evicted_reused = agent::intern(wire::counter_names::kSsmCheckpointsEvictedReused);
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    std::string name = "layer." + std::to_string(l) +
                       (model.is_attention(l) ? ".attention" : ".ssm") +
                       (model.is_moe(l) ? "+moe" : "+dense");
    layer_names_.push_back(agent::intern(name));
  }
  routed_.reserve(static_cast<size_t>(model.moe.experts));
  for (EpPhase p : {EpPhase::kDispatch, EpPhase::kExperts, EpPhase::kCombine})
    ep_names_[static_cast<size_t>(p)] = agent::intern(to_string(p));
}

Telemetry::~Telemetry() {
  ep_range_.reset();
  layer_range_.reset();
  agent_.reset();  // flushes (bounded by the agent's shutdown timeout)
}

void Telemetry::layer_begin(int32_t layer) {
  layer_range_.reset();
  layer_range_.emplace(*agent_, layer_names_[static_cast<size_t>(layer)]);
}

void Telemetry::layer_end(int32_t) {
  layer_range_.reset();
}

void Telemetry::moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) {
  agent_->expert_load(step_, static_cast<uint32_t>(layer), counts.routed,
                      static_cast<uint32_t>(tokens), counts.dropped, counts.rerouted);
}

}  // namespace inferscope::engine

namespace inferscope::engine {

void Telemetry::ep_phase_begin(int32_t, EpPhase phase) {
  ep_range_.reset();
  ep_range_.emplace(*agent_, ep_names_[static_cast<size_t>(phase)]);
}

void Telemetry::ep_phase_end(int32_t, EpPhase) {
  ep_range_.reset();
}

void Telemetry::ep_layer(const EpLayerStats& st) {
  wire::ExpertParallelStep r;
  r.step = step_;
  r.layer = static_cast<uint32_t>(st.layer);
  r.timestamp_ns = st.timestamp_ns;
  r.dispatch_ns = st.dispatch_ns;
  r.compute_ns = st.compute_ns;
  r.combine_ns = st.combine_ns;
  r.rows_sent = st.rows_sent;
  r.rows_computed = st.rows_computed;
  r.row_bytes = st.row_bytes;
  agent_->ep_step(r, st.rows_to_rank);  // issue 24: the traffic matrix row, not copied
}

}  // namespace inferscope::engine
