#include "inferscope/collector/ep_ranks.hpp"

#include <algorithm>

namespace inferscope::collector {

using prometheus::Counter;
using prometheus::Gauge;

namespace {
double seconds(int64_t ns) {
  return static_cast<double>(ns) * 1e-9;
}
}  // namespace

// [SECTION] Metric series: per (rank, layer) and per rank, created on first use

struct EpRanks::Cell {
  Counter *dispatch = nullptr, *compute = nullptr, *combine = nullptr, *idle = nullptr;
  Counter *rows_computed = nullptr, *rows_sent = nullptr, *steps = nullptr;
  Counter *rows_out = nullptr, *rows_in = nullptr, *bytes_out = nullptr, *bytes_in = nullptr;
};

struct EpRanks::RankSeries {
  Counter* straggler = nullptr;
  Counter* episodes = nullptr;
  Gauge* utilization = nullptr;
  Gauge* hot = nullptr;
};

EpRanks::EpRanks(const AggregatorOptions& options, CollectorMetrics& metrics, std::string model)
    : options_(options),
      rank_options_(options),
      metrics_(metrics),
      model_(std::move(model)),
      join_(options.ep_join_steps, options.ep_join_steps * 16) {
  // The expert detector's state machine, with rank thresholds; ranks are never cold.
  rank_options_.hot_threshold = options.hot_rank_threshold;
  rank_options_.hot_clear_threshold = options.hot_rank_clear_threshold;
  rank_options_.cold_threshold = -1.0;
  rank_options_.cold_clear_threshold = -1.0;
  rank_options_.drop_burst_threshold = 2.0;  // never
  metrics_.ep_joined_steps.Add({{"model", model_}});
}

EpRanks::~EpRanks() = default;

EpRanks::Cell& EpRanks::cell(uint32_t rank, uint32_t layer) {
  auto& slot = cells_[{rank, layer}];
  if (!slot) {
    slot = std::make_unique<Cell>();
    const prometheus::Labels l{
        {"model", model_}, {"rank", std::to_string(rank)}, {"layer", std::to_string(layer)}};
    slot->dispatch = &metrics_.ep_dispatch_seconds.Add(l);
    slot->compute = &metrics_.ep_compute_seconds.Add(l);
    slot->combine = &metrics_.ep_combine_seconds.Add(l);
    slot->idle = &metrics_.ep_idle_seconds.Add(l);
    slot->rows_computed = &metrics_.ep_rows_computed.Add(l);
    slot->rows_sent = &metrics_.ep_rows_sent.Add(l);
    slot->steps = &metrics_.ep_layer_steps.Add(l);
    slot->rows_out = &metrics_.ep_traffic_rows_out.Add(l);
    slot->rows_in = &metrics_.ep_traffic_rows_in.Add(l);
    slot->bytes_out = &metrics_.ep_traffic_bytes_out.Add(l);
    slot->bytes_in = &metrics_.ep_traffic_bytes_in.Add(l);
  }
  return *slot;
}

EpRanks::RankSeries& EpRanks::rank_series(uint32_t rank) {
  auto& slot = ranks_[rank];
  if (!slot) {
    slot = std::make_unique<RankSeries>();
    const prometheus::Labels l{{"model", model_}, {"rank", std::to_string(rank)}};
    slot->straggler = &metrics_.ep_straggler_steps.Add(l);
    slot->episodes = &metrics_.ep_hot_rank_episodes.Add(l);
    slot->utilization = &metrics_.ep_rank_load_utilization.Add(l);
    slot->hot = &metrics_.ep_rank_hot.Add(l);
  }
  return *slot;
}

// [SECTION] Records: counters and the (step, layer) join

void EpRanks::on_step(uint32_t world_size, uint32_t rank, const wire::ExpertParallelStep& s) {
  const uint32_t world = static_cast<uint32_t>(
      std::min<uint64_t>(std::max<uint32_t>(world_size, 1), options_.max_ranks));
  Cell& c = cell(rank, s.layer);
  c.dispatch->Increment(seconds(s.dispatch_ns));
  c.compute->Increment(seconds(s.compute_ns));
  c.combine->Increment(seconds(s.combine_ns));
  c.rows_computed->Increment(s.rows_computed);
  c.rows_sent->Increment(s.rows_sent);
  c.steps->Increment();
  rank_series(rank);
  auto& acc = rows_acc_[rank];
  if (acc.size() <= s.layer) acc.resize(s.layer + 1, 0);
  acc[s.layer] += s.rows_computed;
  rows_seen_ = true;

  // Traffic: the record is rank's row of the layer's dispatch matrix. A world
  // change restarts the window's matrices (they are sized world x world).
  if (world != matrix_ranks_) {
    layer_acc_.clear();
    matrix_ranks_ = world;
  }
  LayerAcc& la = layer_acc_[s.layer];
  if (la.compute_ns.size() != world) {
    la.compute_ns.assign(world, 0);
    la.passes.assign(world, 0);
    if (world <= options_.ep_matrix_max_ranks)
      la.matrix.assign(static_cast<size_t>(world) * world, 0);
  }
  if (rank < world) {
    la.compute_ns[rank] += s.compute_ns;
    ++la.passes[rank];
  }
  const size_t n = std::min<size_t>(s.rows_to_rank.size(), world);
  uint64_t out = 0;
  for (uint32_t d = 0; d < n; ++d) {
    const uint32_t v = s.rows_to_rank[d];
    if (rank < world && !la.matrix.empty()) la.matrix[static_cast<size_t>(rank) * world + d] += v;
    if (d == rank || v == 0) continue;
    out += v;
    Cell& dst = cell(d, s.layer);
    dst.rows_in->Increment(v);
    dst.bytes_in->Increment(static_cast<double>(v) * s.row_bytes);
  }
  if (out > 0) {
    c.rows_out->Increment(static_cast<double>(out));
    c.bytes_out->Increment(static_cast<double>(out) * s.row_bytes);
  }

  analysis::EpStepJoin::Joined joined;
  switch (join_.add(world, rank, s.step, s.layer, s.compute_ns, joined)) {
    case analysis::EpStepJoin::Result::kJoined: {
      ++joined_;
      metrics_.ep_joined_steps.Add({{"model", model_}}).Increment();
      const analysis::RankIdle idle = analysis::rank_idle(joined.compute_ns);
      for (uint32_t r = 0; r < idle.idle_ns.size(); ++r)
        cell(r, joined.layer).idle->Increment(seconds(idle.idle_ns[r]));
      rank_series(idle.slowest).straggler->Increment();
      break;
    }
    case analysis::EpStepJoin::Result::kDuplicate:
      metrics_.ep_unjoined_steps.Add({{"model", model_}, {"reason", "duplicate"}}).Increment();
      break;
    case analysis::EpStepJoin::Result::kOutOfWorld:
      metrics_.ep_unjoined_steps.Add({{"model", model_}, {"reason", "rank_out_of_world"}})
          .Increment();
      break;
    case analysis::EpStepJoin::Result::kPending:
      break;
  }
  if (join_.evicted() > reported_evicted_) {
    metrics_.ep_unjoined_steps.Add({{"model", model_}, {"reason", "incomplete"}})
        .Increment(static_cast<double>(join_.evicted() - reported_evicted_));
    reported_evicted_ = join_.evicted();
  }
}

// [SECTION] Window close: rank loads, hot-rank episodes and who is responsible

void EpRanks::close_window(int64_t start_ns, int64_t end_ns,
                           const std::vector<EpLayerWindow>& layers, uint32_t placement_ranks,
                           std::vector<wire::AlertEpisode>& alerts) {
  // Per rank and layer load this window: rows computed, else the placement's load.
  std::map<uint32_t, std::vector<double>> per_layer;  // layer -> load per rank
  uint32_t ranks = 0;
  if (rows_seen_) {
    for (const auto& [rank, acc] : rows_acc_) ranks = std::max(ranks, rank + 1);
    for (const auto& [rank, acc] : rows_acc_)
      for (uint32_t l = 0; l < acc.size(); ++l)
        if (acc[l] > 0) {
          auto& v = per_layer[l];
          v.resize(ranks, 0.0);
          v[rank] += static_cast<double>(acc[l]);
        }
  } else if (placement_ranks > 0) {
    ranks = placement_ranks;
    for (const auto& lw : layers)
      if (lw.rank_load != nullptr && lw.rank_load->balancedness > 0.0)
        per_layer[lw.layer] = lw.rank_load->load;
  }
  rows_acc_.clear();
  rows_seen_ = false;
  close_traffic(start_ns, end_ns);
  close_advice(start_ns, end_ns, layers, placement_ranks);
  layer_acc_.clear();
  if (ranks == 0 || per_layer.empty()) return;  // idle window

  std::vector<uint64_t> total(ranks, 0);
  for (auto& [layer, v] : per_layer) {
    v.resize(ranks, 0.0);
    for (uint32_t r = 0; r < ranks; ++r) total[r] += static_cast<uint64_t>(v[r] + 0.5);
  }
  analysis::LayerStats stats = analysis::compute_layer_stats(total, 0);
  if (stats.routed == 0) return;
  for (uint32_t r = 0; r < ranks; ++r) rank_series(r).utilization->Set(stats.utilization[r]);

  if (!detector_ || detector_->experts() != ranks) {
    std::vector<EpisodeEvent> closing;
    if (detector_) detector_->close_all(start_ns, closing);
    for (const auto& ev : closing) {
      if (ev.kind != wire::AlertKind::kHotExpert) continue;
      auto it = open_alert_.find(ev.expert);
      if (it == open_alert_.end()) continue;
      it->second.end_ns = std::max(ev.end_ns, it->second.start_ns);
      alerts.push_back(it->second);
      rank_series(ev.expert).hot->Set(0);
      open_alert_.erase(it);
      open_.erase(ev.expert);
    }
    detector_ = std::make_unique<LayerDetector>(rank_options_, ranks);
  }
  std::vector<EpisodeEvent> events;
  detector_->observe(stats, start_ns, end_ns, events);

  // Who is responsible: in each layer where rank r is over the threshold, the
  // experts placed on r with the largest share of the layer's assignments.
  std::vector<analysis::RankLayerInput> inputs;
  for (const auto& [layer, v] : per_layer) {
    analysis::RankLayerInput in;
    in.layer = layer;
    in.rank_load = v;
    for (const auto& lw : layers)
      if (lw.layer == layer && lw.placement != nullptr && !lw.expert_load.empty()) {
        in.expert_load = lw.expert_load;
        in.placement = lw.placement;
        break;
      }
    inputs.push_back(in);
  }
  auto hot_layers = [&](uint32_t r, HotRank& h) {
    analysis::HotRankCause cause = analysis::hot_rank_cause(r, inputs, options_);
    for (const HotRank::Layer& l : cause.layers) {
      auto it = std::find_if(h.layers.begin(), h.layers.end(),
                             [&](const HotRank::Layer& x) { return x.layer == l.layer; });
      if (it == h.layers.end())
        h.layers.push_back(l);
      else
        it->utilization = std::max(it->utilization, l.utilization);
    }
    std::sort(h.layers.begin(), h.layers.end(),
              [](const HotRank::Layer& a, const HotRank::Layer& b) { return a.layer < b.layer; });
    // A window under the bar keeps the last experts.
    if (!cause.experts.empty()) h.experts = std::move(cause.experts);
  };

  for (const auto& ev : events) {
    if (ev.kind != wire::AlertKind::kHotExpert) continue;  // ranks: only hot episodes
    const uint32_t r = ev.expert;
    if (ev.opened) {
      HotRank h;
      h.rank = r;
      h.start_ns = ev.start_ns;
      h.utilization = ev.peak_utilization;
      hot_layers(r, h);
      wire::AlertEpisode a;
      a.kind = wire::AlertKind::kHotRank;
      a.rank = r;
      // The headline: the hottest layer and, in it, the rank's largest expert.
      if (!h.layers.empty()) {
        auto top = std::max_element(h.layers.begin(), h.layers.end(),
                                    [](const HotRank::Layer& x, const HotRank::Layer& y) {
                                      return x.utilization < y.utilization;
                                    });
        a.layer = top->layer;
        for (const auto& x : h.experts)
          if (x.layer == a.layer) {
            a.expert = x.expert;
            break;
          }
      }
      a.start_ns = ev.start_ns;
      a.peak_share = ev.peak_share;
      a.peak_utilization = ev.peak_utilization;
      a.model = model_;
      alerts.push_back(a);
      open_alert_[r] = a;
      open_[r] = std::move(h);
      RankSeries& s = rank_series(r);
      s.hot->Set(1);
      s.episodes->Increment();
    } else {
      auto it = open_alert_.find(r);
      if (it != open_alert_.end()) {
        it->second.end_ns = std::max(ev.end_ns, it->second.start_ns);
        it->second.peak_share = ev.peak_share;
        it->second.peak_utilization = ev.peak_utilization;
        alerts.push_back(it->second);
        open_alert_.erase(it);
      }
      open_.erase(r);
      rank_series(r).hot->Set(0);
    }
  }
  // Open episodes keep collecting their hot layers and current experts.
  for (auto& [r, h] : open_) {
    if (r >= ranks) continue;
    h.utilization = std::max(h.utilization, stats.utilization[r]);
    hot_layers(r, h);
  }
}

// [SECTION] Window close: top traffic pairs and the EPLB advisor

void EpRanks::close_traffic(int64_t start_ns, int64_t end_ns) {
  const double window_s = std::max(seconds(end_ns - start_ns), 1e-9);
  const uint32_t k = std::min<uint32_t>(options_.ep_top_pairs, 64);
  std::map<uint32_t, std::vector<analysis::TrafficPair>> pairs;
  for (const auto& [layer, la] : layer_acc_)
    if (!la.matrix.empty()) pairs[layer] = analysis::top_traffic_pairs(la.matrix, matrix_ranks_, k);
  // Layers without traffic this window keep no pair series; series of pairs that
  // left the top K are removed, so each layer holds at most K at any time.
  for (auto it = pair_series_.begin(); it != pair_series_.end();) {
    const auto now = pairs.find(it->first);
    for (const PairSeries& ps : it->second) {
      const bool kept = now != pairs.end() &&
                        std::any_of(now->second.begin(), now->second.end(), [&](const auto& p) {
                          return p.src == ps.pair.src && p.dst == ps.pair.dst;
                        });
      if (!kept) metrics_.ep_traffic_top_pair.Remove(ps.gauge);
    }
    it = pair_series_.erase(it);
  }
  for (const auto& [layer, top] : pairs) {
    auto& series = pair_series_[layer];
    for (const analysis::TrafficPair& p : top) {
      prometheus::Gauge& g = metrics_.ep_traffic_top_pair.Add({{"model", model_},
                                                               {"layer", std::to_string(layer)},
                                                               {"src", std::to_string(p.src)},
                                                               {"dst", std::to_string(p.dst)}});
      g.Set(static_cast<double>(p.rows) / window_s);
      series.push_back({p, &g});
    }
  }
  last_pairs_ = std::move(pairs);
}

void EpRanks::close_advice(int64_t start_ns, int64_t end_ns,
                           const std::vector<EpLayerWindow>& layers, uint32_t placement_ranks) {
  if (placement_ranks == 0 || placement_ranks != matrix_ranks_) return;  // no placement / EP data
  std::vector<analysis::AdvisorLayerInput> inputs;
  uint64_t passes = 0;
  for (const EpLayerWindow& lw : layers) {
    auto it = layer_acc_.find(lw.layer);
    if (it == layer_acc_.end() || lw.placement == nullptr || lw.planned == nullptr) continue;
    // Every rank runs every pass in lockstep; the fewest passes any rank reported
    // is the count the per-pass averages divide by.
    const uint64_t p = *std::min_element(it->second.passes.begin(), it->second.passes.end());
    if (p == 0) continue;
    passes = std::max(passes, p);
    inputs.push_back(
        {lw.layer, lw.expert_load, lw.placement, lw.planned, it->second.compute_ns, p});
  }
  if (inputs.empty()) return;
  analysis::AdvisorOptions o;
  o.expert_bytes = options_.eplb_expert_bytes;
  o.move_bytes_per_second = options_.eplb_move_bytes_per_second;
  o.steps_per_second = static_cast<double>(passes) / std::max(seconds(end_ns - start_ns), 1e-9);
  advice_ = analysis::advise_eplb(inputs, placement_ranks, o);
  const prometheus::Labels m{{"model", model_}};
  metrics_.eplb_saving.Add(m).Set(advice_.saving_ns_per_step * 1e-9);
  for (const analysis::AdvisorLayer& l : advice_.layers) {
    auto& g = layer_saving_[l.layer];
    if (g == nullptr)
      g = &metrics_.eplb_layer_saving.Add({{"model", model_}, {"layer", std::to_string(l.layer)}});
    g->Set(l.saving_ns * 1e-9);
  }
  if (advice_.cost_known) {  // no cost series at all while the expert size is unknown
    metrics_.eplb_move_bytes.Add(m).Set(static_cast<double>(advice_.max_bytes_in));
    metrics_.eplb_move_stall.Add(m).Set(advice_.stall_s);
    metrics_.eplb_break_even.Add(m).Set(advice_.break_even_s);
  }
}

// [SECTION] Inspection

std::vector<analysis::TrafficPair> EpRanks::top_pairs(uint32_t layer) const {
  auto it = last_pairs_.find(layer);
  return it == last_pairs_.end() ? std::vector<analysis::TrafficPair>{} : it->second;
}

std::vector<HotRank> EpRanks::hot_ranks() const {
  std::vector<HotRank> out;
  for (const auto& [r, h] : open_) out.push_back(h);
  return out;
}

}  // namespace inferscope::collector
