// inferscope collector: hot / cold / dead expert episodes for one MoE layer.
//
// Fed one window at a time (per-expert utilization and load). An episode opens
// after `windows` consecutive windows in the condition and closes on the first
// window out of it, with hysteresis for hot and cold:
//   hot:  utilization >= hot_threshold        ... clears below hot_clear_threshold
//   cold: utilization <  cold_threshold       ... clears at or above cold_clear_threshold
//   dead: zero assignments                    ... clears on any assignment
// An expert is in at most one episode; dead wins over cold (a cold expert that
// stops receiving tokens becomes dead, a revived dead expert may become cold).
// Windows in which the whole layer saw no tokens are idle and are not fed in.
// A drop burst is a layer-level episode: dropped / routed >= drop_burst_threshold
// opens it at once, the first window below closes it.
// The conditions themselves are the analysis library's (inferscope/analysis/classify.hpp);
// this class adds the collector's memory of them: streaks, episodes and peaks.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

// What changed in one window. `expert` is 0 for drop bursts.
struct EpisodeEvent {
  bool opened = false;  // false: closed
  wire::AlertKind kind = wire::AlertKind::kHotExpert;
  uint32_t expert = 0;
  int64_t start_ns = 0;
  int64_t end_ns = 0;  // 0 when opened
  float peak_share = 0.0f;
  float peak_utilization = 0.0f;
};

class LayerDetector {
 public:
  LayerDetector(const AggregatorOptions& options, uint32_t experts);

  // One non-idle window [start_ns, end_ns): appends what opened or closed.
  void observe(const analysis::LayerStats& stats, int64_t start_ns, int64_t end_ns,
               std::vector<EpisodeEvent>& events);

  // Ends every open episode at end_ns (the source went away): appends the closings.
  void close_all(int64_t end_ns, std::vector<EpisodeEvent>& events);

  // -1 when the expert is in no episode, else the AlertKind.
  int open_kind(uint32_t expert) const { return experts_[expert].open; }
  bool drop_burst_open() const { return drop_open_; }
  uint32_t count_open(wire::AlertKind kind) const;
  uint32_t experts() const { return static_cast<uint32_t>(experts_.size()); }

 private:
  struct Streak {
    uint32_t length = 0;
    int64_t start_ns = 0;
    float peak_share = 0.0f;
    float peak_utilization = 0.0f;
  };
  struct Expert {
    Streak hot, cold, dead;
    int open = -1;
    int64_t episode_start_ns = 0;
    float peak_share = 0.0f;
    float peak_utilization = 0.0f;
  };

  AggregatorOptions options_;
  std::vector<Expert> experts_;
  bool drop_open_ = false;
  int64_t drop_start_ns_ = 0;
  float drop_peak_ = 0.0f;
};

}  // namespace inferscope::collector
