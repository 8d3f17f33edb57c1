// inferscope viewer: where the viewer opens on a trace (no ImGui, no GL).
//
// A whole trace at full zoom is hatched merged blocks that tell little, so the
// timeline opens on a few seconds: around the most recently opened alert
// episode (the problem the user came for), else the trace's last seconds. The
// expert view's analysis window is that range, and its preselected expert is
// the worst (reddest) cell of the heatmap there: the highest utilization.
#pragma once

#include <cstdint>
#include <optional>

#include "inferscope/viewer/stats.hpp"
#include "inferscope/viewer/trace_model.hpp"

namespace inferscope::viewer {

// Seconds of trace the timeline opens on.
inline constexpr double kStartViewSeconds = 5.0;

struct TimeRange {
  int64_t t0 = 0, t1 = 0;
};

// The range to open on: [start - 1 s, start + 4 s] of the most recent alert
// episode by start time, else the last kStartViewSeconds; clamped to the trace
// (a shorter trace is shown whole). Empty model: {0, 0}.
TimeRange start_range(const TraceModel& m);

struct ExpertCell {
  uint32_t layer = 0;
  uint32_t expert = 0;
  double utilization = 0;  // share x experts (1.0 = fair)
};

// The heatmap cell with the highest utilization (ties: lower layer, then lower
// expert); nullopt for a heatmap without assignments.
std::optional<ExpertCell> worst_expert(const Heatmap& h);

}  // namespace inferscope::viewer
