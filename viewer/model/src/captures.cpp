#include "inferscope/viewer/captures.hpp"

#include "inferscope/wire/episode_id.hpp"

namespace inferscope::viewer {

const CaptureWindow* capture_for_episode(const TraceModel& model, const wire::AlertEpisode& a) {
  return model.capture_window(wire::episode_capture_tag(a));
}

}  // namespace inferscope::viewer
