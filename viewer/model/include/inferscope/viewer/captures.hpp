// inferscope viewer: the GPU capture an alert episode asked for.
//
// During a capture the agent tags every GPU span with the argument `capture` = the capture's tag
// (docs/gpu.md); a capture an episode asked for carries wire::episode_capture_tag(episode). The
// model tracks each tag's time window as spans arrive (TraceModel::capture_window), so the alerts
// view can jump from an alert to the kernels traced because of it without scanning spans.
#pragma once

#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::viewer {

// The window of the capture episode a asked for, or null when the trace holds none of its spans.
const CaptureWindow* capture_for_episode(const TraceModel& model, const wire::AlertEpisode& a);

}  // namespace inferscope::viewer
