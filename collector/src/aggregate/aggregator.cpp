#include "inferscope/collector/aggregator.hpp"

#include <algorithm>

#include "agent_health.hpp"
#include "consumer.hpp"
#include "expert_parallelism.hpp"
#include "kernel_time.hpp"
#include "moe_routing.hpp"
#include "serving.hpp"

namespace inferscope::collector {

namespace {
int64_t floor_div(int64_t a, int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}
}  // namespace

double seconds(int64_t ns) {
  return static_cast<double>(ns) * 1e-9;
}

// [SECTION] Record context
RankState* RecordContext::rank() {
  if (!rank_looked_up_) {
    rank_ = aggregator_.rank_for(model, source.hello.rank, source.rank);
    rank_looked_up_ = true;
  }
  return rank_;
}

void RecordContext::at(int64_t ts_ns) {
  aggregator_.on_time(model, ts_ns);
}

// [SECTION] Dispatch
Aggregator::Aggregator(AggregatorOptions options, CollectorMetrics& metrics)
    : options_(std::move(options)), metrics_(metrics) {
  auto alerts = [this](wire::AlertEpisode a) { emit(std::move(a)); };
  moe_ = std::make_unique<MoeRouting>(options_, metrics_, alerts);
  serving_ = std::make_unique<ServingMetrics>(metrics_);
  health_ = std::make_unique<AgentHealthMetrics>(metrics_);
  kernels_ = std::make_unique<KernelTime>(metrics_, *moe_);
  ep_ = std::make_unique<ExpertParallelism>(options_, metrics_, alerts);
  // Window close order: the layers' episodes first, then the ranks' (hot ranks).
  consumers_ = {moe_.get(), serving_.get(), health_.get(), kernels_.get(), ep_.get()};
  auto route = [&](wire::RecordKind kind, RecordConsumer* c) {
    by_kind_[static_cast<size_t>(kind)].push_back(c);
  };
  // MoeRouting checks an expert_load against the hello before the EP sum sees it.
  route(wire::RecordKind::kExpertLoad, moe_.get());
  route(wire::RecordKind::kExpertLoad, ep_.get());
  route(wire::RecordKind::kExpertParallel, ep_.get());
  for (auto kind :
       {wire::RecordKind::kMemory, wire::RecordKind::kPrefixCache, wire::RecordKind::kStage,
        wire::RecordKind::kRequest, wire::RecordKind::kCounter})
    route(kind, serving_.get());
  route(wire::RecordKind::kSpan, kernels_.get());
  route(wire::RecordKind::kAgentHealth, health_.get());
}
Aggregator::~Aggregator() = default;

bool Aggregator::on_record(const Source& source, const wire::Record& record, std::string& why) {
  // Fast path (kernel time counts the unattributed kernels too): the rest need not even
  // find their model.
  if (!takes(record)) return true;
  // The records of a frame share their source: the last one's model is most
  // likely this one's. A source's model changes only with a hello, which calls
  // on_connect(), and that forgets it (no string compare per record here).
  ModelState* model = last_model_;
  if (model == nullptr || last_source_ != source.id) {
    model = model_for(source);
    if (model == nullptr) return true;  // over the model bound: counted, not an error
    last_source_ = source.id;
    last_model_ = model;
    last_rank_ = nullptr;
  }
  RecordContext ctx(*this, source, *model, last_rank_);
  bool ok = true;
  for (RecordConsumer* c : by_kind_[static_cast<size_t>(wire::kind_of(record))])
    if (!c->on_record(ctx, record, why)) {
      ok = false;
      break;
    }
  last_rank_ = ctx.rank_found();
  return ok;
}

void Aggregator::flush_metrics() {
  kernels_->flush();
}

// [SECTION] Sources
ModelState* Aggregator::model_for(const Source& source) {
  auto it = models_.find(source.model);
  if (it != models_.end()) return it->second.get();
  if (models_.size() >= options_.max_models) {
    metrics_.overflow("models").Increment();
    return nullptr;
  }
  auto m = std::make_unique<ModelState>();
  m->index = static_cast<uint32_t>(models_.size());
  m->name = source.model;
  ModelState* raw = m.get();
  models_[source.model] = std::move(m);
  return raw;
}

const ModelState* Aggregator::find_model(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.get();
}

RankState* Aggregator::rank_for(ModelState& model, uint32_t rank, const std::string& label) {
  auto it = model.ranks.find(rank);
  if (it != model.ranks.end()) return it->second.get();
  if (model.ranks.size() >= options_.max_ranks) {
    metrics_.overflow("ranks").Increment();
    return nullptr;
  }
  auto r = std::make_unique<RankState>();
  r->id = rank;
  r->index = static_cast<uint32_t>(model.ranks.size());
  r->label = label;
  RankState* raw = r.get();
  model.ranks[rank] = std::move(r);
  for (RecordConsumer* c : consumers_) c->on_rank(model, *raw);
  return raw;
}

void Aggregator::on_connect(const Source& source) {
  last_model_ = nullptr;  // this source's model may be another now (see on_record)
  last_rank_ = nullptr;
  ModelState* model = model_for(source);
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
  if (RankState* rank = rank_for(*model, source.hello.rank, source.rank)) {
    ++rank->connected;
    for (RecordConsumer* c : consumers_) c->on_connected(*model, *rank);
  }
}

void Aggregator::on_disconnect(const Source& source) {
  last_model_ = nullptr;
  last_rank_ = nullptr;
  auto it = models_.find(source.model);
  if (it == models_.end()) return;
  ModelState& model = *it->second;
  auto r = model.ranks.find(source.hello.rank);
  if (r == model.ranks.end()) return;
  RankState& rank = *r->second;
  if (rank.connected > 0) {
    --rank.connected;
    for (RecordConsumer* c : consumers_) c->on_connected(model, rank);
  }
  if (rank.connected > 0) return;
  // The rank's last agent left: what it has open ends at the current window's start.
  const int64_t end =
      model.window == kNoWindow ? last_record_ns_ : model.window * options_.window_ns;
  for (RecordConsumer* c : consumers_) c->on_rank_left(model, rank, end);
}

// [SECTION] Windows
std::optional<int64_t> Aggregator::estimated_now(int64_t steady_now_ns) const {
  if (!seen_record_) return std::nullopt;
  return last_record_ns_ + std::max<int64_t>(0, steady_now_ns - last_arrival_steady_ns_);
}

void Aggregator::on_time(ModelState& model, int64_t ts_ns) {
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

void Aggregator::close_window(ModelState& model) {
  const int64_t start = model.window * options_.window_ns;
  const int64_t end = start + options_.window_ns;
  for (RecordConsumer* c : consumers_) c->close_window(model, start, end);
}

void Aggregator::emit(wire::AlertEpisode a) {
  recent_.push_back(a);
  while (recent_.size() > options_.max_recent_alerts) recent_.pop_front();
  if (alert_sink_) alert_sink_(a);
}

// [SECTION] Inspection
std::optional<Aggregator::LayerSnapshot> Aggregator::layer(const std::string& model, uint32_t rank,
                                                           uint32_t index) const {
  const ModelState* m = find_model(model);
  if (m == nullptr) return std::nullopt;
  auto r = m->ranks.find(rank);
  if (r == m->ranks.end()) return std::nullopt;
  auto s = moe_->layer(*m, *r->second, index);
  if (!s) return std::nullopt;
  return LayerSnapshot{s->experts, s->windows, std::move(s->last)};
}

std::optional<analysis::RankLoad> Aggregator::rank_load(const std::string& model,
                                                        uint32_t index) const {
  const ModelState* m = find_model(model);
  const analysis::RankLoad* rl = m ? ep_->rank_load(*m, index) : nullptr;
  if (rl == nullptr) return std::nullopt;
  return *rl;
}

std::optional<analysis::RankLoad> Aggregator::eplb_rank_load(const std::string& model,
                                                             uint32_t index) const {
  const ModelState* m = find_model(model);
  const analysis::RankLoad* rl = m ? ep_->eplb_rank_load(*m, index) : nullptr;
  if (rl == nullptr) return std::nullopt;
  return *rl;
}

std::vector<HotRank> Aggregator::hot_ranks(const std::string& model) const {
  const EpRanks* ep = ep_ranks(model);
  return ep ? ep->hot_ranks() : std::vector<HotRank>{};
}

const EpRanks* Aggregator::ep_ranks(const std::string& model) const {
  const ModelState* m = find_model(model);
  return m ? ep_->ep_ranks(*m) : nullptr;
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
