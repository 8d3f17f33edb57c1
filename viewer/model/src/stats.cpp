// Statistics and derived series: heatmaps, percentiles, memory, cache, requests.
#include "inferscope/viewer/stats.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "inferscope/analysis/classify.hpp"

namespace inferscope::viewer {

// [SECTION] Percentiles

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  p = std::clamp(p, 0.0, 100.0);
  // Nearest rank: the smallest value with at least p% of the values at or below it.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * double(values.size())));
  size_t idx = rank == 0 ? 0 : rank - 1;
  std::nth_element(values.begin(), values.begin() + static_cast<long>(idx), values.end());
  return values[idx];
}

Percentiles percentiles(std::vector<double> values) {
  Percentiles p;
  p.count = values.size();
  if (values.empty()) return p;
  p.p50 = percentile(values, 50);
  p.p95 = percentile(values, 95);
  p.p99 = percentile(values, 99);
  return p;
}

// [SECTION] Expert load (the arithmetic is the analysis library's)

Heatmap expert_heatmap(const TraceModel& m, int64_t t0, int64_t t1, uint32_t rank,
                       const analysis::AnalysisOptions& options) {
  Heatmap h;
  std::map<uint32_t, HeatmapLayer> layers;
  const auto& counts = m.expert_counts();
  for (const ExpertLoadRec& r : m.expert_loads()) {
    if (r.timestamp_ns < t0 || r.timestamp_ns > t1) continue;
    if (rank != kAllRanks && r.rank != rank) continue;
    HeatmapLayer& l = layers[r.layer];
    l.layer = r.layer;
    if (l.assignments.size() < r.experts) l.assignments.resize(r.experts, 0);
    for (uint32_t e = 0; e < r.experts; ++e) {
      l.assignments[e] += counts[r.offset + e];
      l.total += counts[r.offset + e];
    }
    l.dropped += r.dropped;
    l.tokens += r.tokens;
  }
  bool have_alerts = false;
  for (const AlertRec& a : m.alerts())
    if (a.alert.kind == wire::AlertKind::kHotExpert) have_alerts = true;
  for (auto& [layer, l] : layers) {
    size_t n = l.assignments.size();
    h.experts = std::max<uint32_t>(h.experts, static_cast<uint32_t>(n));
    l.hot.assign(n, 0);
    if (n > 0 && l.total > 0) {
      const analysis::LayerStats stats = analysis::compute_layer_stats(l.assignments, l.dropped);
      l.imbalance = stats.imbalance;
      l.cv = stats.cv;
      for (size_t e = 0; e < n; ++e) {
        h.max_share = std::max(h.max_share, l.share(e));
        if (!have_alerts && analysis::is_hot(stats.utilization[e], options)) l.hot[e] = 1;
      }
    }
    for (const AlertRec& a : m.alerts()) {
      const auto& al = a.alert;
      if (al.kind != wire::AlertKind::kHotExpert || al.layer != layer || al.expert >= n) continue;
      if (rank != kAllRanks && al.rank != rank) continue;
      bool overlaps = al.start_ns <= t1 && (al.end_ns == 0 || al.end_ns >= t0);
      if (overlaps) l.hot[al.expert] = 1;
    }
    h.layers.push_back(std::move(l));
  }
  return h;
}

std::vector<analysis::RankLoad> rank_loads(const Heatmap& h,
                                           const std::vector<uint32_t>& expert_to_rank) {
  std::vector<analysis::RankLoad> out;
  uint32_t ranks = 0;
  for (uint32_t x : expert_to_rank) ranks = std::max(ranks, x + 1);
  if (ranks == 0) return out;
  std::vector<std::vector<uint32_t>> table;
  for (uint32_t k : expert_to_rank) table.push_back({k});
  for (const HeatmapLayer& l : h.layers) {
    out.push_back(analysis::compute_rank_load(l.assignments, table, ranks));
  }
  return out;
}

Series expert_share_series(const TraceModel& m, uint32_t layer, uint32_t expert, int64_t t0,
                           int64_t t1, int bins, uint32_t rank) {
  Series s;
  if (bins <= 0 || t1 <= t0) return s;
  std::vector<double> mine(bins, 0), total(bins, 0);
  const auto& counts = m.expert_counts();
  double width = double(t1 - t0) / bins;
  for (const ExpertLoadRec& r : m.expert_loads()) {
    if (r.layer != layer || r.timestamp_ns < t0 || r.timestamp_ns > t1) continue;
    if (rank != kAllRanks && r.rank != rank) continue;
    int b = std::min(bins - 1, static_cast<int>(double(r.timestamp_ns - t0) / width));
    for (uint32_t e = 0; e < r.experts; ++e) total[b] += counts[r.offset + e];
    if (expert < r.experts) mine[b] += counts[r.offset + expert];
  }
  for (int b = 0; b < bins; ++b) {
    s.t.push_back((double(t0 - m.min_ns()) + (b + 0.5) * width) * 1e-9);
    s.v.push_back(total[b] > 0 ? mine[b] / total[b] : std::numeric_limits<double>::quiet_NaN());
  }
  return s;
}

// [SECTION] Memory and cache

MemorySeries memory_series(const TraceModel& m, int64_t t0, int64_t t1, int points, uint32_t rank) {
  MemorySeries s;
  if (points <= 1 || t1 <= t0) return s;
  // Group samples per (source, rank, kind), each group in time order.
  std::map<std::tuple<uint32_t, uint32_t, uint8_t>, std::vector<const wire::MemorySample*>> groups;
  for (const MemoryRec& r : m.memory()) {
    if (rank != kAllRanks && r.sample.rank != rank) continue;
    groups[{r.source, r.sample.rank, static_cast<uint8_t>(r.sample.kind)}].push_back(&r.sample);
    s.has_kind[static_cast<uint8_t>(r.sample.kind)] = true;
  }
  for (auto& [k, v] : groups)
    std::stable_sort(v.begin(), v.end(),
                     [](auto* a, auto* b) { return a->timestamp_ns < b->timestamp_ns; });
  for (auto& u : s.used) u.assign(points, 0.0);
  for (auto& c : s.capacity) c.assign(points, 0.0);
  for (int p = 0; p < points; ++p) {
    int64_t t = t0 + static_cast<int64_t>(double(t1 - t0) * p / (points - 1));
    s.t.push_back(double(t - m.min_ns()) * 1e-9);
    for (auto& [k, v] : groups) {
      auto it = std::upper_bound(v.begin(), v.end(), t,
                                 [](int64_t x, auto* smp) { return x < smp->timestamp_ns; });
      if (it == v.begin()) continue;
      const wire::MemorySample* smp = *(it - 1);
      uint8_t kind = std::get<2>(k);
      s.used[kind][p] += double(smp->used_bytes);
      s.capacity[kind][p] += double(smp->capacity_bytes);
    }
  }
  return s;
}

HitRateSeries prefix_hit_rate(const TraceModel& m, int64_t t0, int64_t t1, int bins,
                              uint32_t rank) {
  HitRateSeries s;
  if (bins <= 0 || t1 <= t0) return s;
  std::vector<double> aq(bins, 0), ah(bins, 0), sq(bins, 0), sh(bins, 0);
  double width = double(t1 - t0) / bins;
  for (const PrefixRec& r : m.prefix_cache()) {
    const auto& x = r.sample;
    if (x.timestamp_ns < t0 || x.timestamp_ns > t1) continue;
    if (rank != kAllRanks && m.rank_of(r.source) != rank) continue;
    int b = std::min(bins - 1, static_cast<int>(double(x.timestamp_ns - t0) / width));
    aq[b] += double(x.attention_queried_tokens);
    ah[b] += double(x.attention_hit_tokens);
    sq[b] += double(x.ssm_queried_tokens);
    sh[b] += double(x.ssm_hit_tokens);
    s.attention_queried += x.attention_queried_tokens;
    s.attention_hit += x.attention_hit_tokens;
    s.ssm_queried += x.ssm_queried_tokens;
    s.ssm_hit += x.ssm_hit_tokens;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int b = 0; b < bins; ++b) {
    s.t.push_back((double(t0 - m.min_ns()) + (b + 0.5) * width) * 1e-9);
    s.attention.push_back(aq[b] > 0 ? ah[b] / aq[b] : nan);
    s.ssm.push_back(sq[b] > 0 ? sh[b] / sq[b] : nan);
  }
  return s;
}

// [SECTION] Stages and requests

std::vector<RequestRow> request_rows(const TraceModel& m, int64_t t0, int64_t t1) {
  struct Key {
    uint32_t source;
    uint64_t id;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<uint64_t>()(k.id * 1315423911u + k.source);
    }
  };
  std::unordered_map<Key, std::array<double, wire::kStageCount>, KeyHash> stage_time;
  for (const StageRec& s : m.stages()) {
    auto& a = stage_time[{s.source, s.stage.request_id}];
    a[static_cast<uint8_t>(s.stage.stage)] += double(s.stage.end_ns - s.stage.start_ns) * 1e-9;
  }
  std::vector<RequestRow> rows;
  for (const RequestRec& r : m.requests()) {
    const auto& q = r.request;
    if (q.finish_ns < t0 || q.arrival_ns > t1) continue;
    RequestRow row;
    row.source = r.source;
    row.rank = r.rank;
    row.request_id = q.request_id;
    row.arrival_ns = q.arrival_ns;
    row.finish_ns = q.finish_ns;
    row.e2e_s = double(q.finish_ns - q.arrival_ns) * 1e-9;
    if (q.first_token_ns != 0) {
      row.ttft_s = double(q.first_token_ns - q.arrival_ns) * 1e-9;
      if (q.output_tokens > 1)
        row.tpot_s = double(q.finish_ns - q.first_token_ns) * 1e-9 / double(q.output_tokens - 1);
    }
    row.prompt = q.prompt_tokens;
    row.output = q.output_tokens;
    row.images = q.image_tokens;
    row.cached = q.cached_tokens;
    row.status = q.status;
    if (auto it = stage_time.find({r.source, q.request_id}); it != stage_time.end())
      row.stage_s = it->second;
    rows.push_back(row);
  }
  std::sort(rows.begin(), rows.end(),
            [](const RequestRow& a, const RequestRow& b) { return a.arrival_ns < b.arrival_ns; });
  return rows;
}

StageStats stage_stats(const std::vector<RequestRow>& rows) {
  StageStats s;
  std::array<std::vector<double>, wire::kStageCount> per;
  std::vector<double> ttft, tpot, e2e;
  for (const RequestRow& r : rows) {
    for (size_t i = 0; i < wire::kStageCount; ++i)
      if (r.stage_s[i] > 0) per[i].push_back(r.stage_s[i]);
    if (!std::isnan(r.ttft_s)) ttft.push_back(r.ttft_s);
    if (!std::isnan(r.tpot_s)) tpot.push_back(r.tpot_s);
    e2e.push_back(r.e2e_s);
  }
  for (size_t i = 0; i < wire::kStageCount; ++i) s.per_stage[i] = percentiles(std::move(per[i]));
  s.ttft = percentiles(std::move(ttft));
  s.tpot = percentiles(std::move(tpot));
  s.e2e = percentiles(std::move(e2e));
  return s;
}

}  // namespace inferscope::viewer
