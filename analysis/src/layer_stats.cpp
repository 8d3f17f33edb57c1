#include "inferscope/analysis/layer_stats.hpp"

#include <algorithm>
#include <cmath>

namespace inferscope::analysis {

LayerStats compute_layer_stats(std::span<const uint64_t> load, uint64_t dropped) {
  LayerStats s;
  s.dropped = dropped;
  const size_t n = load.size();
  s.utilization.assign(n, 0.0);
  s.share.assign(n, 0.0);
  for (uint64_t v : load) s.routed += v;
  if (n == 0 || s.routed == 0) return s;  // idle layer: no ratios to speak of
  const double total = static_cast<double>(s.routed);
  const double ideal = total / static_cast<double>(n);
  double sum_sq = 0.0;
  s.min_utilization = INFINITY;
  for (size_t e = 0; e < n; ++e) {
    const double u = static_cast<double>(load[e]) / ideal;
    s.utilization[e] = u;
    s.share[e] = static_cast<double>(load[e]) / total;
    s.max_utilization = std::max(s.max_utilization, u);
    s.min_utilization = std::min(s.min_utilization, u);
    sum_sq += (u - 1.0) * (u - 1.0);  // utilization has mean 1 by construction
  }
  s.imbalance = s.max_utilization;  // max / mean load
  s.cv = std::sqrt(sum_sq / static_cast<double>(n));
  s.drop_ratio = static_cast<double>(dropped) / total;
  return s;
}

namespace {

template <typename T>
double max_over_mean(std::span<const T> load) {
  uint64_t total = 0, max_load = 0;
  for (T v : load) {
    total += v;
    max_load = std::max<uint64_t>(max_load, v);
  }
  if (total == 0) return 0.0;
  return static_cast<double>(max_load) * static_cast<double>(load.size()) /
         static_cast<double>(total);
}

}  // namespace

double imbalance(std::span<const uint64_t> load) {
  return max_over_mean(load);
}
double imbalance(std::span<const uint32_t> load) {
  return max_over_mean(load);
}

RankLoad compute_rank_load(std::span<const uint64_t> load,
                           const std::vector<std::vector<uint32_t>>& expert_to_ranks,
                           uint32_t ranks) {
  RankLoad r;
  if (ranks == 0) return r;
  r.load.assign(ranks, 0.0);
  r.utilization.assign(ranks, 0.0);
  const size_t n = std::min(load.size(), expert_to_ranks.size());
  for (size_t e = 0; e < n; ++e) {
    const auto& replicas = expert_to_ranks[e];
    if (replicas.empty()) continue;
    const double part = static_cast<double>(load[e]) / static_cast<double>(replicas.size());
    for (uint32_t rank : replicas)
      if (rank < ranks) r.load[rank] += part;
  }
  double total = 0.0, max_load = 0.0;
  for (double v : r.load) {
    total += v;
    max_load = std::max(max_load, v);
  }
  if (total <= 0.0) return r;
  const double mean = total / ranks;
  for (uint32_t i = 0; i < ranks; ++i) r.utilization[i] = r.load[i] / mean;
  r.balancedness = mean / max_load;
  return r;
}

}  // namespace inferscope::analysis
