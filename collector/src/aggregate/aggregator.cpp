#include "inferscope/collector/aggregator.hpp"

#include <algorithm>
#include <array>
#include <charconv>

#include "inferscope/analysis/eplb.hpp"
#include "inferscope/wire/counter_names.hpp"

namespace inferscope::collector {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

namespace {

constexpr int64_t kNoWindow = INT64_MIN;

int64_t floor_div(int64_t a, int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

double seconds(int64_t ns) {
  return static_cast<double>(ns) * 1e-9;
}

const Histogram::BucketBoundaries& stage_buckets() {
  static const Histogram::BucketBoundaries b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,   0.5,   1,      2.5,   5,    10,    30};
  return b;
}
const Histogram::BucketBoundaries& ttft_buckets() {
  static const Histogram::BucketBoundaries b{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                             1,     2.5,  5,     10,   30,  60};
  return b;
}
const Histogram::BucketBoundaries& tpot_buckets() {
  static const Histogram::BucketBoundaries b{0.001, 0.0025, 0.005, 0.01, 0.02, 0.04,
                                             0.08,  0.16,   0.32,  0.64, 1.28};
  return b;
}
const Histogram::BucketBoundaries& e2e_buckets() {
  static const Histogram::BucketBoundaries b{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                             2.5,  5,     10,   30,  60,   120, 300};
  return b;
}

const char* kStateNames[3] = {"hot", "cold", "dead"};
const char* kKindLabel[4] = {"hot", "cold", "dead", "drop_burst"};

// The MoE layer a range name stands for: "moe.layer.12", "moe.layer.12.gate_up",
// or the reference engine's "layer.12.attention+moe" / "layer.12.ssm+moe" -> 12.
std::optional<uint32_t> moe_layer_of(const std::string& range) {
  static constexpr std::string_view kMoePrefix = "moe.layer.", kLayerPrefix = "layer.";
  size_t at = 0;
  bool need_moe_suffix = false;
  if (range.compare(0, kMoePrefix.size(), kMoePrefix) == 0) {
    at = kMoePrefix.size();
  } else if (range.compare(0, kLayerPrefix.size(), kLayerPrefix) == 0) {
    at = kLayerPrefix.size();
    need_moe_suffix = true;
  } else {
    return std::nullopt;
  }
  uint32_t layer = 0;
  const char* begin = range.data() + at;
  const char* end = range.data() + range.size();
  auto [ptr, ec] = std::from_chars(begin, end, layer);
  if (ec != std::errc() || ptr == begin || (ptr != end && *ptr != '.')) return std::nullopt;
  if (need_moe_suffix &&
      range.find("+moe", static_cast<size_t>(ptr - range.data())) == std::string::npos)
    return std::nullopt;
  if (layer >= wire::kMaxLayers) return std::nullopt;
  return layer;
}

}  // namespace

// [SECTION] State
struct Aggregator::Layer {
  uint32_t experts = 0;
  std::vector<uint64_t> acc;  // assignments per expert, current window
  uint64_t dropped_acc = 0;
  bool active = false;
  std::unique_ptr<LayerDetector> detector;
  uint64_t windows = 0;
  analysis::LayerStats last;
  Labels labels;
  Counter *routed = nullptr, *dropped = nullptr, *rerouted = nullptr, *batch = nullptr;
  Counter* gpu_seconds = nullptr;
  Gauge *imbalance = nullptr, *cv = nullptr, *max_u = nullptr, *min_u = nullptr;
  std::array<Gauge*, 3> state{};
  Histogram* hist = nullptr;
  std::vector<Gauge*> episode_gauge;  // per expert, set while in an episode
  std::vector<Gauge*> current_util;
  std::vector<Counter*> expert_tokens;  // --per-expert-metrics
  std::vector<Gauge*> expert_share;
};

struct Aggregator::Rank {
  std::string label;
  std::vector<std::unique_ptr<Layer>> layers;
  std::array<Gauge*, wire::kMemoryKindCount> mem_used{}, mem_capacity{};
  std::array<Counter*, 2> prefix_queried{}, prefix_hit{};
  std::array<Histogram*, wire::kStageCount> stage_hist{};
  std::array<Counter*, wire::kStageCount> stage_gpu{};  // created by the first measured GPU time
  std::array<Counter*, 2> ckpt_evictions{};             // [reused]; created by the first report
  Histogram *ttft = nullptr, *tpot = nullptr, *e2e = nullptr;
  std::array<Counter*, 4> requests{};
  std::array<Counter*, 4> tokens{};
  Counter *agent_sent = nullptr, *agent_reconnects = nullptr, *agent_unconfirmed = nullptr;
  std::array<Counter*, wire::kRecordKindCount> agent_dropped{};
  Gauge* agent_connected = nullptr;
};

struct Aggregator::Model {
  std::string name;
  std::vector<wire::LayerDescription> layers;  // from the first hello that described any
  int64_t window = kNoWindow;
  std::map<uint32_t, std::unique_ptr<Rank>> ranks;
  std::optional<Placement> placement;
  std::map<uint32_t, std::vector<uint64_t>> placement_acc;  // layer -> load over all ranks
  std::map<uint32_t, std::vector<Gauge*>> rank_util;
  std::map<uint32_t, Gauge*> balancedness;
  std::map<uint32_t, analysis::RankLoad> last_rank_load;
  // EPLB what-if, next to the current placement's gauges above.
  std::map<uint32_t, std::vector<Gauge*>> eplb_util;
  std::map<uint32_t, Gauge*> eplb_balancedness;
  std::map<uint32_t, analysis::RankLoad> last_eplb_load;
  // Expert parallelism: created by the first expert_parallel record or placement window.
  uint32_t world_size = 1;  // largest world size any hello of the model declared
  std::unique_ptr<EpRanks> ep;
};

Aggregator::Aggregator(AggregatorOptions options, CollectorMetrics& metrics)
    : options_(std::move(options)), metrics_(metrics) {}
Aggregator::~Aggregator() = default;

// [SECTION] Sources
Aggregator::Model* Aggregator::model_for(const Source& source) {
  auto it = models_.find(source.model);
  if (it != models_.end()) return it->second.get();
  if (models_.size() >= options_.max_models) {
    metrics_.overflow("models").Increment();
    return nullptr;
  }
  auto m = std::make_unique<Model>();
  m->name = source.model;
  Model* raw = m.get();
  models_[source.model] = std::move(m);
  return raw;
}

Aggregator::Rank* Aggregator::rank_for(Model& model, uint32_t rank, const std::string& label) {
  auto it = model.ranks.find(rank);
  if (it != model.ranks.end()) return it->second.get();
  if (model.ranks.size() >= options_.max_ranks) {
    metrics_.overflow("ranks").Increment();
    return nullptr;
  }
  auto r = std::make_unique<Rank>();
  r->label = label;
  const Labels base{{"model", model.name}, {"rank", label}};
  auto with = [&](const char* key, const char* value) {
    Labels l = base;
    l[key] = value;
    return l;
  };
  for (uint8_t k = 0; k < wire::kMemoryKindCount; ++k) {
    const char* kind = wire::to_string(static_cast<wire::MemoryKind>(k));
    r->mem_used[k] = &metrics_.memory_used.Add(with("kind", kind));
    r->mem_capacity[k] = &metrics_.memory_capacity.Add(with("kind", kind));
  }
  const char* layer_kinds[2] = {"attention", "ssm"};
  for (int k = 0; k < 2; ++k) {
    r->prefix_queried[k] = &metrics_.prefix_queried.Add(with("layer_kind", layer_kinds[k]));
    r->prefix_hit[k] = &metrics_.prefix_hit.Add(with("layer_kind", layer_kinds[k]));
  }
  for (uint8_t s = 0; s < wire::kStageCount; ++s) {
    const char* stage = wire::to_string(static_cast<wire::Stage>(s));
    r->stage_hist[s] = &metrics_.stage_duration.Add(with("stage", stage), stage_buckets());
  }
  r->ttft = &metrics_.ttft.Add(base, ttft_buckets());
  r->tpot = &metrics_.tpot.Add(base, tpot_buckets());
  r->e2e = &metrics_.e2e.Add(base, e2e_buckets());
  const char* statuses[4] = {"ok", "cancelled", "error", "rejected"};
  for (int s = 0; s < 4; ++s) r->requests[s] = &metrics_.requests.Add(with("status", statuses[s]));
  const char* token_kinds[4] = {"prompt", "output", "image", "cached"};
  for (int k = 0; k < 4; ++k)
    r->tokens[k] = &metrics_.request_tokens.Add(with("kind", token_kinds[k]));
  r->agent_sent = &metrics_.agent_sent.Add(base);
  r->agent_reconnects = &metrics_.agent_reconnects.Add(base);
  r->agent_unconfirmed = &metrics_.agent_unconfirmed.Add(base);
  r->agent_connected = &metrics_.agent_connected.Add(base);
  Rank* raw = r.get();
  model.ranks[rank] = std::move(r);
  return raw;
}

void Aggregator::on_connect(const Source& source) {
  Model* model = model_for(source);
  if (model == nullptr) return;
  if (model->layers.empty() && !source.hello.model.layers.empty())
    model->layers = source.hello.model.layers;
  if (options_.placement)
    model->placement = options_.placement;
  else if (!model->placement && !source.hello.model.expert_to_rank.empty())
    model->placement = Placement::from_single(source.hello.model.expert_to_rank);
  if (model->placement && model->placement->ranks > options_.max_ranks) {
    metrics_.overflow("ranks").Increment();
    model->placement.reset();
  }
  model->world_size = std::max(model->world_size, source.hello.world_size);
  if (Rank* rank = rank_for(*model, source.hello.rank, source.rank))
    rank->agent_connected->Increment();
}

void Aggregator::on_disconnect(const Source& source) {
  auto it = models_.find(source.model);
  if (it == models_.end()) return;
  Model& model = *it->second;
  auto r = model.ranks.find(source.hello.rank);
  if (r == model.ranks.end()) return;
  Rank& rank = *r->second;
  if (rank.agent_connected->Value() > 0) rank.agent_connected->Decrement();
  if (rank.agent_connected->Value() > 0) return;
  // The rank's last agent left: its episodes end now (their series go away), and
  // what it sent in the current window is dropped, not judged as a short window.
  const int64_t end =
      model.window == kNoWindow ? last_record_ns_ : model.window * options_.window_ns;
  for (uint32_t i = 0; i < rank.layers.size(); ++i) {
    if (!rank.layers[i]) continue;
    Layer& layer = *rank.layers[i];
    std::vector<EpisodeEvent> events;
    layer.detector->close_all(end, events);
    for (const auto& ev : events) publish(model, rank, layer, i, ev);
    for (int k = 0; k < 3; ++k) layer.state[k]->Set(0);
    std::fill(layer.acc.begin(), layer.acc.end(), 0);
    layer.dropped_acc = 0;
    layer.active = false;
  }
}

// [SECTION] Windows
std::optional<int64_t> Aggregator::estimated_now(int64_t steady_now_ns) const {
  if (!seen_record_) return std::nullopt;
  return last_record_ns_ + std::max<int64_t>(0, steady_now_ns - last_arrival_steady_ns_);
}

void Aggregator::on_time(Model& model, int64_t ts_ns) {
  if (!seen_record_ || ts_ns > last_record_ns_) last_record_ns_ = ts_ns;
  seen_record_ = true;
  const int64_t w = floor_div(ts_ns, options_.window_ns);
  if (model.window == kNoWindow) {
    model.window = w;
  } else if (w > model.window) {
    close_window(model);
    model.window = w;  // windows in between had no records: idle, nothing to close
  }
}

void Aggregator::advance(int64_t now_ns) {
  const int64_t w = floor_div(now_ns, options_.window_ns);
  for (auto& [name, model] : models_) {
    if (model->window == kNoWindow || w <= model->window) continue;
    close_window(*model);
    model->window = w;
  }
}

void Aggregator::close_window(Model& model) {
  const int64_t start = model.window * options_.window_ns;
  const int64_t end = start + options_.window_ns;
  for (auto& [rank_id, rank] : model.ranks)
    for (uint32_t i = 0; i < rank->layers.size(); ++i)
      if (rank->layers[i]) close_layer(model, *rank, i, *rank->layers[i], start, end);
  std::vector<EpLayerWindow> ep_layers;
  std::vector<analysis::EplbPlan> plans;  // outlive ep_layers' pointers into them
  plans.reserve(model.placement_acc.size());
  if (model.placement) {
    const uint32_t ranks = model.placement->ranks;
    const uint32_t redundant = static_cast<uint32_t>(
        options_.eplb_redundant >= 0 ? std::min<int64_t>(options_.eplb_redundant, wire::kMaxExperts)
                                     : ranks);
    for (auto& [layer, acc] : model.placement_acc) {
      const auto& table = model.placement->for_layer(layer);
      analysis::RankLoad rl = analysis::compute_rank_load(acc, table, ranks);
      if (rl.balancedness <= 0.0) continue;  // idle
      // What-if: EPLB planned from this window's loads, evaluated on them.
      const analysis::EplbPlan& plan =
          plans.emplace_back(analysis::plan_eplb(acc, ranks, redundant, &table));
      analysis::RankLoad eplb = analysis::compute_rank_load(acc, plan.expert_to_ranks, ranks);
      const std::string layer_label = std::to_string(layer);
      auto& gauges = model.rank_util[layer];
      auto& eplb_gauges = model.eplb_util[layer];
      if (gauges.empty()) {
        for (uint32_t r = 0; r < ranks; ++r) {
          const Labels l{
              {"model", model.name}, {"rank", std::to_string(r)}, {"layer", layer_label}};
          gauges.push_back(&metrics_.ep_rank_utilization.Add(l));
          eplb_gauges.push_back(&metrics_.eplb_rank_utilization.Add(l));
        }
        model.balancedness[layer] =
            &metrics_.ep_balancedness.Add({{"model", model.name}, {"layer", layer_label}});
        model.eplb_balancedness[layer] =
            &metrics_.eplb_balancedness.Add({{"model", model.name}, {"layer", layer_label}});
      }
      for (uint32_t r = 0; r < gauges.size(); ++r) gauges[r]->Set(rl.utilization[r]);
      for (uint32_t r = 0; r < eplb_gauges.size(); ++r) eplb_gauges[r]->Set(eplb.utilization[r]);
      model.balancedness[layer]->Set(rl.balancedness);
      model.eplb_balancedness[layer]->Set(eplb.balancedness);
      model.last_rank_load[layer] = std::move(rl);
      model.last_eplb_load[layer] = std::move(eplb);
      ep_layers.push_back(
          {layer, acc, &table, &model.last_rank_load[layer], &plan.expert_to_ranks});
    }
    if (!model.ep) model.ep = std::make_unique<EpRanks>(options_, metrics_, model.name);
  }
  if (model.ep) {
    std::vector<wire::AlertEpisode> alerts;
    model.ep->close_window(start, end, ep_layers, model.placement ? model.placement->ranks : 0,
                           alerts);
    for (auto& a : alerts) emit(std::move(a));
  }
  for (auto& [layer, acc] : model.placement_acc) std::fill(acc.begin(), acc.end(), 0);
}

void Aggregator::close_layer(Model& model, Rank& rank, uint32_t index, Layer& layer,
                             int64_t start_ns, int64_t end_ns) {
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

void Aggregator::publish(Model& model, Rank& rank, Layer& layer, uint32_t index,
                         const EpisodeEvent& ev) {
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
  a.rank = static_cast<uint32_t>(std::stoul(rank.label));
  a.layer = index;
  a.expert = ev.expert;
  a.start_ns = ev.start_ns;
  a.end_ns = ev.end_ns;
  a.peak_share = ev.peak_share;
  a.peak_utilization = ev.peak_utilization;
  a.model = model.name;
  emit(std::move(a));
}

void Aggregator::emit(wire::AlertEpisode a) {
  recent_.push_back(a);
  while (recent_.size() > options_.max_recent_alerts) recent_.pop_front();
  if (alert_sink_) alert_sink_(a);
}

// [SECTION] Records
void Aggregator::on_expert_load(const Source& source, Model& model, const wire::ExpertLoad& load,
                                std::string& why, bool& ok) {
  const uint32_t experts = static_cast<uint32_t>(load.routed.size());
  if (!model.layers.empty()) {
    if (load.layer >= model.layers.size() || model.layers[load.layer].ffn != wire::FfnKind::kMoe ||
        model.layers[load.layer].experts != experts) {
      why = "expert_load for layer " + std::to_string(load.layer) + " with " +
            std::to_string(experts) + " experts does not match the hello's model description";
      ok = false;
      return;
    }
  }
  if (experts == 0) return;
  on_time(model, load.timestamp_ns);
  Rank* rank = rank_for(model, source.hello.rank, source.rank);
  if (rank == nullptr) return;
  if (rank->layers.size() <= load.layer) rank->layers.resize(load.layer + 1);
  auto& slot = rank->layers[load.layer];
  if (!slot) {
    slot = std::make_unique<Layer>();
    Layer& l = *slot;
    l.experts = experts;
    l.acc.assign(experts, 0);
    l.detector = std::make_unique<LayerDetector>(options_, experts);
    l.labels = {
        {"model", model.name}, {"rank", rank->label}, {"layer", std::to_string(load.layer)}};
    l.routed = &metrics_.routed_tokens.Add(l.labels);
    l.dropped = &metrics_.dropped_tokens.Add(l.labels);
    l.rerouted = &metrics_.rerouted_tokens.Add(l.labels);
    l.batch = &metrics_.batch_tokens.Add(l.labels);
    l.imbalance = &metrics_.imbalance.Add(l.labels);
    l.cv = &metrics_.load_cv.Add(l.labels);
    l.max_u = &metrics_.max_utilization.Add(l.labels);
    l.min_u = &metrics_.min_utilization.Add(l.labels);
    for (int k = 0; k < 3; ++k) {
      Labels s = l.labels;
      s["state"] = kStateNames[k];
      l.state[k] = &metrics_.layer_experts.Add(s);
    }
    l.hist = &metrics_.expert_utilization.Add(l.labels, utilization_buckets());
    l.episode_gauge.assign(experts, nullptr);
    l.current_util.assign(experts, nullptr);
    if (options_.per_expert_metrics) {
      for (uint32_t e = 0; e < experts; ++e) {
        Labels x = l.labels;
        x["expert"] = std::to_string(e);
        l.expert_tokens.push_back(&metrics_.expert_tokens.Add(x));
        l.expert_share.push_back(&metrics_.expert_load_share.Add(x));
      }
    }
  }
  Layer& layer = *slot;
  if (layer.experts != experts) {
    why = "expert_load for layer " + std::to_string(load.layer) + " has " +
          std::to_string(experts) + " experts, earlier " + std::to_string(layer.experts);
    ok = false;
    return;
  }
  uint64_t sum = 0;
  for (uint32_t e = 0; e < experts; ++e) {
    layer.acc[e] += load.routed[e];
    sum += load.routed[e];
  }
  if (options_.per_expert_metrics)
    for (uint32_t e = 0; e < experts; ++e)
      if (load.routed[e]) layer.expert_tokens[e]->Increment(load.routed[e]);
  layer.dropped_acc += load.dropped;
  layer.active = true;
  layer.routed->Increment(static_cast<double>(sum));
  layer.dropped->Increment(load.dropped);
  layer.rerouted->Increment(load.rerouted);
  layer.batch->Increment(load.tokens);
  if (model.placement) {
    auto& acc = model.placement_acc[load.layer];
    if (acc.size() < experts) acc.resize(experts, 0);
    for (uint32_t e = 0; e < experts; ++e) acc[e] += load.routed[e];
  }
}

bool Aggregator::on_record(const Source& source, const wire::Record& record, std::string& why) {
  // Fast path: most records are spans, and only kernel spans with args matter here.
  if (const auto* sp = std::get_if<wire::Span>(&record))
    if (sp->category != wire::SpanCategory::kKernel || sp->num_args == 0) return true;
  Model* model = model_for(source);
  if (model == nullptr) return true;  // over the model bound: counted, not an error
  bool ok = true;
  auto rank = [&]() { return rank_for(*model, source.hello.rank, source.rank); };
  switch (wire::kind_of(record)) {
    case wire::RecordKind::kExpertLoad:
      on_expert_load(source, *model, std::get<wire::ExpertLoad>(record), why, ok);
      break;
    case wire::RecordKind::kExpertParallel: {
      const auto& s = std::get<wire::ExpertParallelStep>(record);
      if (!model->layers.empty() &&
          (s.layer >= model->layers.size() || model->layers[s.layer].ffn != wire::FfnKind::kMoe)) {
        why = "expert_parallel for layer " + std::to_string(s.layer) +
              ", which the hello's model description does not have as a MoE layer";
        ok = false;
        break;
      }
      on_time(*model, s.timestamp_ns);
      if (rank() == nullptr) break;  // over the rank bound: counted there
      if (!model->ep) model->ep = std::make_unique<EpRanks>(options_, metrics_, model->name);
      model->ep->on_step(model->world_size, source.hello.rank, s);
      break;
    }
    case wire::RecordKind::kMemory: {
      const auto& m = std::get<wire::MemorySample>(record);
      on_time(*model, m.timestamp_ns);
      // Labelled with the source's rank (not the sample's field), so one
      // connection cannot mint series for arbitrary ranks.
      if (Rank* r = rank()) {
        const auto k = static_cast<size_t>(m.kind);
        r->mem_used[k]->Set(static_cast<double>(m.used_bytes));
        r->mem_capacity[k]->Set(static_cast<double>(m.capacity_bytes));
      }
      break;
    }
    case wire::RecordKind::kPrefixCache: {
      const auto& p = std::get<wire::PrefixCacheSample>(record);
      on_time(*model, p.timestamp_ns);
      if (Rank* r = rank()) {
        r->prefix_queried[0]->Increment(static_cast<double>(p.attention_queried_tokens));
        r->prefix_hit[0]->Increment(static_cast<double>(p.attention_hit_tokens));
        r->prefix_queried[1]->Increment(static_cast<double>(p.ssm_queried_tokens));
        r->prefix_hit[1]->Increment(static_cast<double>(p.ssm_hit_tokens));
      }
      break;
    }
    case wire::RecordKind::kStage: {
      const auto& s = std::get<wire::StageTiming>(record);
      on_time(*model, s.end_ns);
      if (Rank* r = rank()) {
        const auto k = static_cast<size_t>(s.stage);
        r->stage_hist[k]->Observe(seconds(std::max<int64_t>(0, s.end_ns - s.start_ns)));
        // gpu_ns 0 means "not measured" (no CUPTI, a CPU stage): no series, rather
        // than one that reads as "the GPU took no time".
        if (s.gpu_ns > 0) {
          if (r->stage_gpu[k] == nullptr)
            r->stage_gpu[k] = &metrics_.stage_gpu_seconds.Add(
                {{"model", model->name}, {"rank", r->label}, {"stage", wire::to_string(s.stage)}});
          r->stage_gpu[k]->Increment(seconds(s.gpu_ns));
        }
      }
      break;
    }
    case wire::RecordKind::kRequest: {
      const auto& q = std::get<wire::RequestEvent>(record);
      on_time(*model, q.finish_ns);
      if (Rank* r = rank()) {
        r->requests[static_cast<size_t>(q.status)]->Increment();
        r->tokens[0]->Increment(q.prompt_tokens);
        r->tokens[1]->Increment(q.output_tokens);
        r->tokens[2]->Increment(q.image_tokens);
        r->tokens[3]->Increment(q.cached_tokens);
        if (q.status == wire::RequestStatus::kOk) {
          r->e2e->Observe(seconds(std::max<int64_t>(0, q.finish_ns - q.arrival_ns)));
          if (q.first_token_ns != 0) {
            r->ttft->Observe(seconds(std::max<int64_t>(0, q.first_token_ns - q.arrival_ns)));
            if (q.output_tokens > 1)
              r->tpot->Observe(seconds(std::max<int64_t>(0, q.finish_ns - q.first_token_ns)) /
                               (q.output_tokens - 1));
          }
        }
      }
      break;
    }
    case wire::RecordKind::kSpan: {
      const auto& s = std::get<wire::Span>(record);
      if (s.category != wire::SpanCategory::kKernel || s.num_args == 0) break;
      // Kernels carry the enclosing range's name as arg "range" (an interned string id).
      for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
        if (source.string(s.args[i].key_id) != "range") continue;
        auto layer = moe_layer_of(source.string(static_cast<uint32_t>(s.args[i].value)));
        if (!layer) break;
        Rank* r = rank();
        if (r == nullptr || *layer >= r->layers.size() || !r->layers[*layer]) break;
        Layer& l = *r->layers[*layer];
        if (l.gpu_seconds == nullptr) l.gpu_seconds = &metrics_.layer_gpu_seconds.Add(l.labels);
        l.gpu_seconds->Increment(seconds(std::max<int64_t>(0, s.end_ns - s.start_ns)));
        break;
      }
      break;
    }
    case wire::RecordKind::kCounter: {
      // Only the counters named in wire/counter_names.hpp become metrics.
      const auto& c = std::get<wire::CounterSample>(record);
      if (c.is_gauge || !(c.value >= 0)) break;
      const std::string& name = source.string(c.name_id);
      int reused = name == wire::counter_names::kSsmCheckpointsEvictedUnused   ? 0
                   : name == wire::counter_names::kSsmCheckpointsEvictedReused ? 1
                                                                               : -1;
      if (reused < 0) break;
      Rank* r = rank();
      if (r == nullptr) break;
      if (r->ckpt_evictions[reused] == nullptr)
        r->ckpt_evictions[reused] = &metrics_.ssm_checkpoint_evictions.Add(
            {{"model", model->name}, {"rank", r->label}, {"reused", reused ? "true" : "false"}});
      r->ckpt_evictions[reused]->Increment(c.value);
      break;
    }
    case wire::RecordKind::kAgentHealth: {
      const auto& h = std::get<wire::AgentHealth>(record);
      Rank* r = rank();
      if (r == nullptr) break;
      constexpr size_t kMaxAgentsTracked = 4096;
      std::string agent =
          source.hello.host + '|' + source.hello.instance + '|' + std::to_string(source.hello.pid);
      if (health_.size() >= kMaxAgentsTracked && !health_.count(agent))
        health_.erase(health_.begin());
      wire::AgentHealth& last = health_[agent];
      // Cumulative values; a smaller one means the agent restarted its counts.
      auto delta = [](uint64_t now, uint64_t before) { return now >= before ? now - before : now; };
      r->agent_sent->Increment(static_cast<double>(delta(h.records_sent, last.records_sent)));
      r->agent_reconnects->Increment(static_cast<double>(delta(h.reconnects, last.reconnects)));
      r->agent_unconfirmed->Increment(
          static_cast<double>(delta(h.records_unconfirmed, last.records_unconfirmed)));
      for (uint8_t k = 0; k < wire::kRecordKindCount; ++k) {
        const uint64_t d = delta(h.dropped_by_kind[k], last.dropped_by_kind[k]);
        if (d == 0) continue;
        if (r->agent_dropped[k] == nullptr)
          r->agent_dropped[k] = &metrics_.agent_dropped.Add(
              {{"model", model->name},
               {"rank", r->label},
               {"kind", wire::to_string(static_cast<wire::RecordKind>(k))}});
        r->agent_dropped[k]->Increment(static_cast<double>(d));
      }
      last = h;
      break;
    }
    default:
      break;
  }
  return ok;
}

// [SECTION] Inspection
std::optional<Aggregator::LayerSnapshot> Aggregator::layer(const std::string& model, uint32_t rank,
                                                           uint32_t index) const {
  auto m = models_.find(model);
  if (m == models_.end()) return std::nullopt;
  auto r = m->second->ranks.find(rank);
  if (r == m->second->ranks.end() || index >= r->second->layers.size() || !r->second->layers[index])
    return std::nullopt;
  const Layer& l = *r->second->layers[index];
  return LayerSnapshot{l.experts, l.windows, l.last};
}

std::optional<analysis::RankLoad> Aggregator::rank_load(const std::string& model,
                                                        uint32_t index) const {
  auto m = models_.find(model);
  if (m == models_.end()) return std::nullopt;
  auto it = m->second->last_rank_load.find(index);
  if (it == m->second->last_rank_load.end()) return std::nullopt;
  return it->second;
}

std::optional<analysis::RankLoad> Aggregator::eplb_rank_load(const std::string& model,
                                                             uint32_t index) const {
  auto m = models_.find(model);
  if (m == models_.end()) return std::nullopt;
  auto it = m->second->last_eplb_load.find(index);
  if (it == m->second->last_eplb_load.end()) return std::nullopt;
  return it->second;
}

std::vector<HotRank> Aggregator::hot_ranks(const std::string& model) const {
  auto m = models_.find(model);
  if (m == models_.end() || !m->second->ep) return {};
  return m->second->ep->hot_ranks();
}

const EpRanks* Aggregator::ep_ranks(const std::string& model) const {
  auto m = models_.find(model);
  return m == models_.end() ? nullptr : m->second->ep.get();
}

std::vector<wire::AlertEpisode> Aggregator::open_episodes() const {
  // Replays the recent list: an episode is open if its last event has no end.
  std::map<std::tuple<std::string, uint32_t, uint32_t, uint32_t, int>, wire::AlertEpisode> open;
  for (const auto& a : recent_) {
    auto key = std::make_tuple(a.model, a.rank, a.layer, a.expert, static_cast<int>(a.kind));
    if (a.end_ns == 0)
      open[key] = a;
    else
      open.erase(key);
  }
  std::vector<wire::AlertEpisode> out;
  for (auto& [k, a] : open) out.push_back(a);
  return out;
}

}  // namespace inferscope::collector
