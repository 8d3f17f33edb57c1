// inferscope analysis: what one window's utilization says about an expert.
//
// The conditions the collector's episode detector (hysteresis over windows) and
// the viewer's heatmap apply, written once:
//   hot:  utilization >= hot_threshold          clears below hot_clear_threshold
//   cold: utilization <  cold_threshold         clears at or above cold_clear_threshold
//   dead: no assignments (share 0)              clears on any assignment
//   drop burst (layer): dropped / routed >= drop_burst_threshold
// classify() ranks them as the detector opens episodes: dead over hot over cold.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/analysis/options.hpp"

namespace inferscope::analysis {

enum class ExpertClass : uint8_t { kNormal, kHot, kCold, kDead };

inline bool is_hot(double utilization, const AnalysisOptions& o) {
  return utilization >= o.hot_threshold;
}
inline bool hot_clears(double utilization, const AnalysisOptions& o) {
  return utilization < o.hot_clear_threshold;
}
inline bool is_cold(double utilization, const AnalysisOptions& o) {
  return utilization < o.cold_threshold;
}
inline bool cold_clears(double utilization, const AnalysisOptions& o) {
  return utilization >= o.cold_clear_threshold;
}
inline bool is_dead(double share) {
  return share == 0.0;
}
inline bool is_drop_burst(const LayerStats& s, const AnalysisOptions& o) {
  return s.routed > 0 && s.drop_ratio >= o.drop_burst_threshold;
}
inline bool is_hot_rank(double utilization, const AnalysisOptions& o) {
  return utilization >= o.hot_rank_threshold;
}

// One window, no history. An idle layer (nothing routed) classifies every expert normal:
// an idle window says nothing about an expert.
ExpertClass classify(double utilization, double share, const AnalysisOptions& o);
std::vector<ExpertClass> classify_layer(const LayerStats& s, const AnalysisOptions& o);

const char* expert_class_name(ExpertClass c);  // "normal", "hot", "cold", "dead"

}  // namespace inferscope::analysis
