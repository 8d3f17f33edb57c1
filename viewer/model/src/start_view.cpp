// Where the viewer opens: start range and the worst expert (start_view.hpp).
#include "inferscope/viewer/start_view.hpp"

#include <algorithm>

namespace inferscope::viewer {

TimeRange start_range(const TraceModel& m) {
  if (m.empty()) return {};
  const int64_t span = static_cast<int64_t>(kStartViewSeconds * 1e9);
  const int64_t lead = static_cast<int64_t>(1e9);  // context before the alert opened
  if (m.max_ns() - m.min_ns() <= span) return {m.min_ns(), m.max_ns()};
  int64_t t1 = m.max_ns();
  const AlertRec* latest = nullptr;
  for (const AlertRec& a : m.alerts())
    if (!latest || a.alert.start_ns > latest->alert.start_ns) latest = &a;
  if (latest) t1 = std::min(m.max_ns(), latest->alert.start_ns - lead + span);
  int64_t t0 = std::max(m.min_ns(), t1 - span);
  return {t0, std::min(m.max_ns(), t0 + span)};
}

std::optional<ExpertCell> worst_expert(const Heatmap& h) {
  std::optional<ExpertCell> best;
  for (const HeatmapLayer& l : h.layers) {
    if (l.total == 0) continue;
    for (size_t e = 0; e < l.assignments.size(); ++e) {
      const double u = l.utilization(e);
      if (!best || u > best->utilization) best = ExpertCell{l.layer, static_cast<uint32_t>(e), u};
    }
  }
  return best;
}

}  // namespace inferscope::viewer
