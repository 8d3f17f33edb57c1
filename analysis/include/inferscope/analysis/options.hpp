// inferscope analysis: every threshold that turns a load into a verdict, in one
// struct, so the collector (alerts, metrics), the viewer (heatmap, EP view) and
// the engine's end-of-run summary call an expert or a rank hot at the same level.
//
// Utilization is the unit: an expert's (or rank's) load over the mean load of its
// layer (or of all ranks); 1.0 is fair. The collector's --hot-threshold etc. set
// these fields (collector::AggregatorOptions derives from this struct).
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferscope::analysis {

struct AnalysisOptions {
  // Experts (classify.hpp).
  double hot_threshold = 2.0;          // utilization at or above which an expert is hot
  double hot_clear_threshold = 1.5;    // hysteresis: a hot expert clears below this
  double cold_threshold = 0.25;        // below this utilization an expert is cold
  double cold_clear_threshold = 0.5;   // a cold expert clears at or above this
  uint32_t windows = 3;                // consecutive windows in a condition to open an episode
  double drop_burst_threshold = 0.05;  // dropped / routed assignments in a window

  // Expert-parallel ranks (hot_rank.hpp).
  double hot_rank_threshold = 1.25;       // rank load / mean rank load that makes a rank hot
  double hot_rank_clear_threshold = 1.1;  // hysteresis: a hot rank clears below this
  size_t experts_per_hot_layer = 3;       // a hot rank names at most this many experts per layer
};

}  // namespace inferscope::analysis
