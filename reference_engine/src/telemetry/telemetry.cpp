// Telemetry: the engine's signals through the agent API.
#include "inferscope/engine/telemetry.hpp"

namespace inferscope::engine {

Telemetry::Telemetry(agent::Config config, const ModelConfig& model) {
  config.model = model.describe();
  if (config.service.empty() || config.service == "inferscope") config.service = "inferscope-engine";
  agent_ = std::make_unique<agent::Agent>(std::move(config));
  id_step = agent::intern("engine.step");
  id_backbone = agent::intern("backbone");
  id_prefill = agent::intern("prefill");
  id_decode = agent::intern("decode");
  id_encoder = agent::intern("encoder");
  id_connector = agent::intern("connector");
  id_schedule = agent::intern("schedule");
  id_sample = agent::intern("sample");
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    std::string name = "layer." + std::to_string(l) + (model.is_attention(l) ? ".attention" : ".ssm") +
                       (model.is_moe(l) ? "+moe" : "+dense");
    layer_names_.push_back(agent::intern(name));
  }
  routed_.reserve(static_cast<size_t>(model.moe.experts));
}

Telemetry::~Telemetry() {
  layer_range_.reset();
  agent_.reset();  // flushes (bounded by the agent's shutdown timeout)
}

void Telemetry::layer_begin(int32_t layer) {
  layer_range_.reset();
  layer_range_.emplace(*agent_, layer_names_[static_cast<size_t>(layer)]);
}

void Telemetry::layer_end(int32_t) { layer_range_.reset(); }

void Telemetry::moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) {
  agent_->expert_load(step_, static_cast<uint32_t>(layer), counts.routed, static_cast<uint32_t>(tokens),
                      counts.dropped, counts.rerouted);
}

}  // namespace inferscope::engine
