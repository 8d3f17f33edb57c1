#include "moe_routing.hpp"

#include <algorithm>

namespace inferscope::collector {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

namespace {
const char* kStateNames[3] = {"hot", "cold", "dead"};
const char* kKindLabel[4] = {"hot", "cold", "dead", "drop_burst"};
}  // namespace

// [SECTION] State
struct MoeRouting::Layer {
  uint32_t experts = 0;
  std::vector<uint64_t> acc;  // assignments per expert, current window
  uint64_t dropped_acc = 0;
  bool active = false;
  std::unique_ptr<LayerDetector> detector;
  uint64_t windows = 0;
  analysis::LayerStats last;
  Labels labels;
  Counter *routed = nullptr, *dropped = nullptr, *rerouted = nullptr, *batch = nullptr;
  Gauge *imbalance = nullptr, *cv = nullptr, *max_u = nullptr, *min_u = nullptr;
  std::array<Gauge*, 3> state{};
  Histogram* hist = nullptr;
  std::vector<Gauge*> episode_gauge;  // per expert, set while in an episode
  std::vector<Gauge*> current_util;
  std::vector<Counter*> expert_tokens;  // --per-expert-metrics
  std::vector<Gauge*> expert_share;
};

MoeRouting::MoeRouting(const AggregatorOptions& options, CollectorMetrics& metrics, AlertOut alerts)
    : options_(options), metrics_(metrics), alerts_(std::move(alerts)) {}
MoeRouting::~MoeRouting() = default;

MoeRouting::Layer* MoeRouting::make_layer(const ModelState& model, const RankState& rank,
                                          uint32_t index, uint32_t experts) {
  auto l = std::make_unique<Layer>();
  l->experts = experts;
  l->acc.assign(experts, 0);
  l->detector = std::make_unique<LayerDetector>(options_, experts);
  l->labels = {{"model", model.name}, {"rank", rank.label}, {"layer", std::to_string(index)}};
  l->routed = &metrics_.routed_tokens.Add(l->labels);
  l->dropped = &metrics_.dropped_tokens.Add(l->labels);
  l->rerouted = &metrics_.rerouted_tokens.Add(l->labels);
  l->batch = &metrics_.batch_tokens.Add(l->labels);
  l->imbalance = &metrics_.imbalance.Add(l->labels);
  l->cv = &metrics_.load_cv.Add(l->labels);
  l->max_u = &metrics_.max_utilization.Add(l->labels);
  l->min_u = &metrics_.min_utilization.Add(l->labels);
  for (int k = 0; k < 3; ++k) {
    Labels s = l->labels;
    s["state"] = kStateNames[k];
    l->state[k] = &metrics_.layer_experts.Add(s);
  }
  l->hist = &metrics_.expert_utilization.Add(l->labels, utilization_buckets());
  l->episode_gauge.assign(experts, nullptr);
  l->current_util.assign(experts, nullptr);
  if (options_.per_expert_metrics) {
    for (uint32_t e = 0; e < experts; ++e) {
      Labels x = l->labels;
      x["expert"] = std::to_string(e);
      l->expert_tokens.push_back(&metrics_.expert_tokens.Add(x));
      l->expert_share.push_back(&metrics_.expert_load_share.Add(x));
    }
  }
  auto& layers = ranks_.at(model, rank).layers;
  if (layers.size() <= index) layers.resize(index + 1);
  layers[index] = std::move(l);
  return layers[index].get();
}

// [SECTION] Records
bool MoeRouting::on_record(RecordContext& ctx, const wire::Record& record, std::string& why) {
  const auto& load = std::get<wire::ExpertLoad>(record);
  const ModelState& model = ctx.model;
  const uint32_t experts = static_cast<uint32_t>(load.routed.size());
  if (!model.layers.empty()) {
    if (load.layer >= model.layers.size() || model.layers[load.layer].ffn != wire::FfnKind::kMoe ||
        model.layers[load.layer].experts != experts) {
      why = "expert_load for layer " + std::to_string(load.layer) + " with " +
            std::to_string(experts) + " experts does not match the hello's model description";
      return false;
    }
  }
  if (experts == 0) return true;
  ctx.at(load.timestamp_ns);
  const RankState* rank = ctx.rank();
  if (rank == nullptr) return true;  // over the rank bound: counted there
  Rank& r = ranks_.at(model, *rank);
  Layer* layer = load.layer < r.layers.size() ? r.layers[load.layer].get() : nullptr;
  if (layer == nullptr) layer = make_layer(model, *rank, load.layer, experts);
  if (layer->experts != experts) {
    why = "expert_load for layer " + std::to_string(load.layer) + " has " +
          std::to_string(experts) + " experts, earlier " + std::to_string(layer->experts);
    return false;
  }
  uint64_t sum = 0;
  for (uint32_t e = 0; e < experts; ++e) {
    layer->acc[e] += load.routed[e];
    sum += load.routed[e];
  }
  if (options_.per_expert_metrics)
    for (uint32_t e = 0; e < experts; ++e)
      if (load.routed[e]) layer->expert_tokens[e]->Increment(load.routed[e]);
  layer->dropped_acc += load.dropped;
  layer->active = true;
  layer->routed->Increment(static_cast<double>(sum));
  layer->dropped->Increment(load.dropped);
  layer->rerouted->Increment(load.rerouted);
  layer->batch->Increment(load.tokens);
  return true;
}

// [SECTION] Windows
void MoeRouting::close_window(ModelState& model, int64_t start_ns, int64_t end_ns) {
  for (auto& [id, rank] : model.ranks) {
    Rank* r = ranks_.find(model, *rank);
    if (r == nullptr) continue;
    for (uint32_t i = 0; i < r->layers.size(); ++i)
      if (r->layers[i]) close_layer(model, *rank, i, *r->layers[i], start_ns, end_ns);
  }
}

void MoeRouting::close_layer(const ModelState& model, const RankState& rank, uint32_t index,
                             Layer& layer, int64_t start_ns, int64_t end_ns) {
  if (!layer.active) return;  // idle window: neither counts towards nor clears an episode
  analysis::LayerStats stats = analysis::compute_layer_stats(layer.acc, layer.dropped_acc);
  std::fill(layer.acc.begin(), layer.acc.end(), 0);
  layer.dropped_acc = 0;
  layer.active = false;
  if (stats.routed == 0) return;
  ++layer.windows;
  layer.imbalance->Set(stats.imbalance);
  layer.cv->Set(stats.cv);
  layer.max_u->Set(stats.max_utilization);
  layer.min_u->Set(stats.min_utilization);
  for (double u : stats.utilization) layer.hist->Observe(u);
  if (options_.per_expert_metrics) {
    for (uint32_t e = 0; e < layer.experts; ++e) layer.expert_share[e]->Set(stats.share[e]);
  }
  std::vector<EpisodeEvent> events;
  layer.detector->observe(stats, start_ns, end_ns, events);
  for (const auto& ev : events) publish(model, rank, layer, index, ev);
  for (int k = 0; k < 3; ++k)
    layer.state[k]->Set(layer.detector->count_open(static_cast<wire::AlertKind>(k)));
  for (uint32_t e = 0; e < layer.experts; ++e)
    if (layer.current_util[e] != nullptr) layer.current_util[e]->Set(stats.utilization[e]);
  layer.last = std::move(stats);
}

void MoeRouting::on_rank_left(const ModelState& model, const RankState& rank, int64_t end_ns) {
  // Its episodes end now (their series go away), and what it sent in the
  // current window is dropped, not judged as a short window.
  Rank* r = ranks_.find(model, rank);
  if (r == nullptr) return;
  for (uint32_t i = 0; i < r->layers.size(); ++i) {
    if (!r->layers[i]) continue;
    Layer& layer = *r->layers[i];
    std::vector<EpisodeEvent> events;
    layer.detector->close_all(end_ns, events);
    for (const auto& ev : events) publish(model, rank, layer, i, ev);
    for (int k = 0; k < 3; ++k) layer.state[k]->Set(0);
    std::fill(layer.acc.begin(), layer.acc.end(), 0);
    layer.dropped_acc = 0;
    layer.active = false;
  }
}

// [SECTION] Episodes
void MoeRouting::publish(const ModelState& model, const RankState& rank, Layer& layer,
                         uint32_t index, const EpisodeEvent& ev) {
  const int kind = static_cast<int>(ev.kind);
  const bool per_expert = ev.kind != wire::AlertKind::kDropBurst;
  if (ev.opened) {
    metrics_.episodes_total
        .Add({{"model", model.name},
              {"rank", rank.label},
              {"layer", std::to_string(index)},
              {"kind", kKindLabel[kind]}})
        .Increment();
    if (per_expert) {
      if (episode_series_ < options_.max_episode_series) {
        Labels l = layer.labels;
        l["expert"] = std::to_string(ev.expert);
        layer.current_util[ev.expert] = &metrics_.expert_utilization_current.Add(l);
        l["kind"] = kKindLabel[kind];
        layer.episode_gauge[ev.expert] = &metrics_.expert_episode.Add(l);
        layer.episode_gauge[ev.expert]->Set(1);
        ++episode_series_;
      } else {
        metrics_.overflow("episode_series").Increment();
      }
    }
  } else if (per_expert && layer.episode_gauge[ev.expert] != nullptr) {
    metrics_.expert_episode.Remove(layer.episode_gauge[ev.expert]);
    metrics_.expert_utilization_current.Remove(layer.current_util[ev.expert]);
    layer.episode_gauge[ev.expert] = nullptr;
    layer.current_util[ev.expert] = nullptr;
    --episode_series_;
  }
  wire::AlertEpisode a;
  a.kind = ev.kind;
  a.rank = rank.id;
  a.layer = index;
  a.expert = ev.expert;
  a.start_ns = ev.start_ns;
  a.end_ns = ev.end_ns;
  a.peak_share = ev.peak_share;
  a.peak_utilization = ev.peak_utilization;
  a.model = model.name;
  alerts_(std::move(a));
}

// [SECTION] Inspection
bool MoeRouting::has_layer(const ModelState& model, const RankState& rank, uint32_t layer) const {
  const Rank* r = ranks_.find(model, rank);
  return r != nullptr && layer < r->layers.size() && r->layers[layer] != nullptr;
}

std::optional<MoeRouting::Snapshot> MoeRouting::layer(const ModelState& model,
                                                      const RankState& rank, uint32_t index) const {
  if (!has_layer(model, rank, index)) return std::nullopt;
  const Layer& l = *ranks_.find(model, rank)->layers[index];
  return Snapshot{l.experts, l.windows, l.last};
}

}  // namespace inferscope::collector
