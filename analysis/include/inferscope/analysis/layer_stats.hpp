// inferscope analysis: the arithmetic of one MoE layer over one window.
//
// Utilization ratio is the unit everywhere: an expert's load over its ideal
// load, ideal = routed assignments / experts. 1.0 is fair, above is overloaded,
// 0 is dead. Imbalance is max/mean load (= max utilization); CV is the
// population standard deviation over the mean.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace inferscope::analysis {

struct LayerStats {
  uint64_t routed = 0;  // assignments in the window (sum over experts)
  uint64_t dropped = 0;
  std::vector<double> utilization;  // per expert
  std::vector<double> share;        // per expert: load / routed
  double imbalance = 0.0;           // max / mean
  double cv = 0.0;
  double max_utilization = 0.0;
  double min_utilization = 0.0;
  double drop_ratio = 0.0;  // dropped / routed
};

LayerStats compute_layer_stats(std::span<const uint64_t> load, uint64_t dropped);

// Max / mean load alone (compute_layer_stats(...).imbalance without the per-expert
// vectors): for the engine's per-step count. 0 for an empty or idle layer.
double imbalance(std::span<const uint64_t> load);
double imbalance(std::span<const uint32_t> load);  // a router's per-step counts

struct RankLoad {
  std::vector<double> load;         // per physical rank: assignments it would process
  std::vector<double> utilization;  // load / mean rank load
  double balancedness = 0.0;        // mean / max rank load; 1.0 is perfect
};

// Load per rank when experts are placed as `expert_to_ranks` says: a replicated
// expert's load is split evenly among its replicas (what a balancing dispatcher
// aims for). Experts the placement does not name, and ranks >= `ranks`, are ignored.
RankLoad compute_rank_load(std::span<const uint64_t> load,
                           const std::vector<std::vector<uint32_t>>& expert_to_ranks,
                           uint32_t ranks);

}  // namespace inferscope::analysis
