#include "inferscope/viewer/captures.hpp"

#include <algorithm>

#include "inferscope/wire/episode_id.hpp"

namespace inferscope::viewer {

void CaptureIndex::update(const TraceModel& model) {
  uint64_t spans = 0;
  for (const Track& t : model.tracks()) spans += t.span_count;
  if (spans == indexed_spans_) return;
  indexed_spans_ = spans;
  windows_.clear();
  // The argument key is interned like any name; no "capture" name means no capture in the trace.
  const uint32_t key = model.find_name("capture");
  if (key == 0) return;
  const auto& args = model.args();
  for (const Track& t : model.tracks()) {
    if (t.type != TrackType::kGpuStream) continue;
    for (const Lane& lane : t.lanes) {
      for (const SpanRec& s : lane.spans) {
        if (s.args == kNoArgs) continue;
        for (uint32_t i = 0; i < s.num_args && s.args + i < args.size(); ++i) {
          const wire::SpanArg& a = args[s.args + i];
          if (a.key_id != key || a.value <= 0) continue;
          auto [it, fresh] = windows_.try_emplace(uint64_t(a.value));
          CaptureWindow& w = it->second;
          w.start_ns = fresh ? s.start_ns : std::min(w.start_ns, s.start_ns);
          w.end_ns = fresh ? s.end_ns : std::max(w.end_ns, s.end_ns);
          ++w.spans;
        }
      }
    }
  }
}

const CaptureWindow* CaptureIndex::find(uint64_t tag) const {
  auto it = windows_.find(tag);
  return it == windows_.end() ? nullptr : &it->second;
}

const CaptureWindow* CaptureIndex::for_episode(const wire::AlertEpisode& a) const {
  return find(wire::episode_capture_tag(a));
}

}  // namespace inferscope::viewer
