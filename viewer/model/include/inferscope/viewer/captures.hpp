// inferscope viewer: where each GPU capture lies in the trace.
//
// During a capture the agent tags every GPU span with the argument `capture` = the capture's tag
// (docs/gpu.md); a capture an episode asked for carries wire::episode_capture_tag(episode). The
// index maps each tag to the time its spans cover, so the alerts view can jump from an alert to
// the kernels traced because of it.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::viewer {

struct CaptureWindow {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  uint64_t spans = 0;
};

class CaptureIndex {
 public:
  // Rebuilds from the model's finalized spans when they changed since the last call (a scan of
  // the GPU tracks only; cheap to call every frame).
  void update(const TraceModel& model);
  const CaptureWindow* find(uint64_t tag) const;
  const CaptureWindow* for_episode(const wire::AlertEpisode& a) const;
  size_t size() const { return windows_.size(); }

 private:
  std::unordered_map<uint64_t, CaptureWindow> windows_;
  uint64_t indexed_spans_ = UINT64_MAX;
};

}  // namespace inferscope::viewer
