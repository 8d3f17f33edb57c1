// Telemetry: the engine's signals through the agent API (telemetry.hpp), the
// one place that translates engine vocabulary into agent calls and wire types.
//
// [SECTION] Set-up   [SECTION] Spans   [SECTION] Requests and memory
// [SECTION] Forward hooks   [SECTION] Expert parallelism
#include "inferscope/engine/telemetry.hpp"

#include <optional>

#include "inferscope/agent.hpp"
#include "inferscope/wire/counter_names.hpp"

namespace inferscope::engine {

struct Telemetry::OpenRanges {
  std::optional<agent::ScopedRange> layer, ep;
};

// [SECTION] Set-up
wire::ModelDescription describe(const ModelConfig& model) {
  wire::ModelDescription d;
  d.name = model.name;
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    wire::LayerDescription ld;
    ld.mixer = model.is_attention(l) ? wire::LayerKind::kAttention : wire::LayerKind::kSsm;
    ld.ffn = model.is_moe(l) ? wire::FfnKind::kMoe : wire::FfnKind::kDense;
    ld.experts = model.is_moe(l) ? static_cast<uint16_t>(model.moe.experts) : 0;
    d.layers.push_back(ld);
  }
  d.top_k = static_cast<uint16_t>(model.moe.top_k);
  d.shared_experts = static_cast<uint16_t>(model.moe.shared_experts);
  d.capacity_factor = model.moe.capacity_factor;
  return d;
}

Telemetry::Telemetry(agent::Config config, const ModelConfig& model,
                     const ExpertPlacement& placement) {
  config.model = describe(model);
  if (placement.ranks > 1) {
    config.model.expert_to_rank = placement.expert_to_rank();
    config.rank = static_cast<uint32_t>(placement.rank);
    config.world_size = static_cast<uint32_t>(placement.ranks);
  }
  if (config.service.empty() || config.service == "inferscope")
    config.service = "inferscope-engine";
  agent_ = std::make_unique<agent::Agent>(std::move(config));
  open_ = std::make_unique<OpenRanges>();
  id_backbone_ = agent::intern("backbone");
  id_prefill_ = agent::intern("prefill");
  id_decode_ = agent::intern("decode");
  id_encoder_ = agent::intern("encoder");
  id_connector_ = agent::intern("connector");
  id_ckpt_evicted_unused_ = agent::intern(wire::counter_names::kSsmCheckpointsEvictedUnused);
  id_ckpt_evicted_reused_ = agent::intern(wire::counter_names::kSsmCheckpointsEvictedReused);
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    std::string name = "layer." + std::to_string(l) +
                       (model.is_attention(l) ? ".attention" : ".ssm") +
                       (model.is_moe(l) ? "+moe" : "+dense");
    // Tied to its layer: the layer's spans and the kernels launched in it carry
    // the arg "layer" = l, so nobody parses the number back out of the name.
    layer_names_.push_back(agent::intern_layer(name, static_cast<uint32_t>(l)));
  }
  for (EpPhase p : {EpPhase::kDispatch, EpPhase::kExperts, EpPhase::kCombine})
    ep_names_[static_cast<size_t>(p)] = agent::intern(to_string(p));
}

Telemetry::~Telemetry() {
  open_.reset();   // ranges end before the agent goes
  agent_.reset();  // flushes (bounded by the agent's shutdown timeout)
}

int64_t Telemetry::now_ns() {
  return agent::now_ns();
}

void Telemetry::set_step(uint64_t step) {
  step_ = step;
  agent_->gpu_step();
}

// [SECTION] Spans
Telemetry::Span::Span() = default;
Telemetry::Span::Span(Span&&) noexcept = default;
Telemetry::Span::~Span() {
  inner_.reset();  // ranges nest: the inner one ends first
  outer_.reset();
}
Telemetry::Span& Telemetry::Span::operator=(Span&& o) noexcept {
  inner_.reset();
  outer_.reset();
  outer_ = std::move(o.outer_);
  inner_ = std::move(o.inner_);
  return *this;
}

Telemetry::Span Telemetry::span(RequestPhase phase, uint64_t request_id) {
  Span s;
  switch (phase) {
    case RequestPhase::kEncoder:
      s.outer_ = std::make_unique<agent::ScopedRange>(*agent_, id_encoder_, request_id);
      break;
    case RequestPhase::kConnector:
      s.outer_ = std::make_unique<agent::ScopedRange>(*agent_, id_connector_, request_id);
      break;
    case RequestPhase::kPrefill:
    case RequestPhase::kDecode:
      s.outer_ = std::make_unique<agent::ScopedRange>(*agent_, id_backbone_, request_id);
      s.inner_ = std::make_unique<agent::ScopedRange>(
          *agent_, phase == RequestPhase::kPrefill ? id_prefill_ : id_decode_, request_id);
      break;
  }
  return s;
}

// [SECTION] Requests and memory
void Telemetry::request_phase(uint64_t request_id, RequestPhase phase, int64_t start_ns,
                              int64_t end_ns) {
  wire::Stage stage = wire::Stage::kEncoder;
  switch (phase) {
    case RequestPhase::kEncoder:
      stage = wire::Stage::kEncoder;
      break;
    case RequestPhase::kConnector:
      stage = wire::Stage::kConnector;
      break;
    case RequestPhase::kPrefill:
      stage = wire::Stage::kBackbonePrefill;
      break;
    case RequestPhase::kDecode:
      stage = wire::Stage::kBackboneDecode;
      break;
  }
  agent_->stage(request_id, stage, start_ns, end_ns);
}

void Telemetry::request_finished(const RequestResult& result) {
  const RequestEvent& e = result.event;
  wire::RequestEvent w;
  w.request_id = e.request_id;
  w.arrival_ns = e.arrival_ns;
  w.first_token_ns = e.first_token_ns;
  w.finish_ns = e.finish_ns;
  w.prompt_tokens = e.prompt_tokens;
  w.output_tokens = e.output_tokens;
  w.image_tokens = e.image_tokens;
  w.cached_tokens = e.cached_tokens;
  w.status = e.status == RequestStatus::kRejected ? wire::RequestStatus::kRejected
                                                  : wire::RequestStatus::kOk;
  agent_->request(w);
}

void Telemetry::checkpoint_evictions(uint64_t evicted_unused, uint64_t evicted_reused) {
  agent_->counter(id_ckpt_evicted_unused_, static_cast<double>(evicted_unused));
  agent_->counter(id_ckpt_evicted_reused_, static_cast<double>(evicted_reused));
}

void Telemetry::prefix_lookups(uint64_t attention_queried, uint64_t attention_hit,
                               uint64_t ssm_queried, uint64_t ssm_hit) {
  agent_->prefix_cache(attention_queried, attention_hit, ssm_queried, ssm_hit);
}

void Telemetry::memory(const MemoryInUse& used, const MemoryFootprint& capacity) {
  agent_->memory(wire::MemoryKind::kKvCache, used.kv_cache, capacity.kv_cache);
  agent_->memory(wire::MemoryKind::kSsmState, used.ssm_state, capacity.ssm_state);
  agent_->memory(wire::MemoryKind::kSsmCheckpoints, used.ssm_checkpoints, capacity.ssm_checkpoints);
  agent_->memory(wire::MemoryKind::kWeights, capacity.weights, capacity.weights);
  agent_->memory(wire::MemoryKind::kActivations, capacity.activations, capacity.activations);
}

// [SECTION] Forward hooks
void Telemetry::layer_begin(int32_t layer) {
  open_->layer.reset();
  open_->layer.emplace(*agent_, layer_names_[static_cast<size_t>(layer)]);
}

void Telemetry::layer_end(int32_t) {
  open_->layer.reset();
}

void Telemetry::moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) {
  agent_->expert_load(step_, static_cast<uint32_t>(layer), counts.routed,
                      static_cast<uint32_t>(tokens), counts.dropped, counts.rerouted);
}

// [SECTION] Expert parallelism
void Telemetry::ep_phase_begin(int32_t, EpPhase phase) {
  open_->ep.reset();
  open_->ep.emplace(*agent_, ep_names_[static_cast<size_t>(phase)]);
}

void Telemetry::ep_phase_end(int32_t, EpPhase) {
  open_->ep.reset();
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
