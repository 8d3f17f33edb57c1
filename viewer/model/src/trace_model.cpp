// TraceModel: turns wire records into tracks, lanes and sample tables.
#include "inferscope/viewer/trace_model.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <tuple>
#include <type_traits>

namespace inferscope::viewer {
namespace {

uint64_t track_key(uint32_t source, TrackType type, uint32_t a, uint32_t b) {
  // Exact for every realistic id: source < 2^16, type < 4, thread id < 2^30,
  // stream < 2^16. Larger values still map deterministically (rare collisions
  // only merge two tracks' spans into one, never lose them).
  return (static_cast<uint64_t>(source & 0xFFFF) << 48) ^
         (static_cast<uint64_t>(static_cast<uint8_t>(type)) << 46) ^
         (static_cast<uint64_t>(a) << 16) ^ static_cast<uint64_t>(b);
}

bool icontains(std::string_view hay, std::string_view needle) {
  if (needle.empty()) return true;
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
  return it != hay.end();
}

struct FlowKey {
  uint32_t source;
  uint64_t correlation;
};

}  // namespace

// [SECTION] Construction and reset
TraceModel::TraceModel(ModelLimits limits) : limits_(limits) {
  clear();
}

void TraceModel::clear() {
  sources_.clear();
  names_.assign(1, std::string());
  name_ids_.clear();
  args_.clear();
  tracks_.clear();
  track_order_.clear();
  track_index_.clear();
  launches_.clear();
  kernels_.clear();
  expert_loads_.clear();
  expert_counts_.clear();
  memory_.clear();
  prefix_.clear();
  stages_.clear();
  requests_.clear();
  alerts_.clear();
  counters_.clear();
  ep_steps_.clear();
  min_ns_ = std::numeric_limits<int64_t>::max();
  max_ns_ = std::numeric_limits<int64_t>::min();
  span_count_ = pending_spans_ = samples_ = record_count_ = 0;
  dropped_spans_ = dropped_samples_ = unknown_source_records_ = 0;
  capture_key_ = 0;
  captures_.clear();
  capture_spans_seen_ = dropped_capture_spans_ = 0;
  ++generation_;
  dirty_ = false;
}

void TraceModel::clear_spans() {
  std::vector<wire::SpanArg> kept;  // the arguments of the spans that stay, re-indexed
  auto keep_args = [&](std::vector<SpanRec>& spans) {
    for (SpanRec& r : spans) {
      if (r.num_args == 0 || r.args >= args_.size()) continue;
      const uint32_t at = static_cast<uint32_t>(kept.size());
      kept.insert(kept.end(), args_.begin() + r.args,
                  args_.begin() + std::min<size_t>(args_.size(), r.args + r.num_args));
      r.args = at;
    }
  };
  for (Track& t : tracks_) {
    if (t.type == TrackType::kCpuThread || t.type == TrackType::kGpuStream) {
      span_count_ -= std::min(span_count_, t.span_count);
      pending_spans_ -= std::min<uint64_t>(pending_spans_, t.pending.size());
      t.lanes.clear();
      t.pending.clear();
      t.span_count = 0;
      t.min_ns = std::numeric_limits<int64_t>::max();
      t.max_ns = std::numeric_limits<int64_t>::min();
      continue;
    }
    for (Lane& l : t.lanes) keep_args(l.spans);
    keep_args(t.pending);
  }
  args_.swap(kept);
  launches_.clear();
  kernels_.clear();
  captures_.clear();  // only GPU spans carry capture tags
  dirty_ = true;
}

// [SECTION] Spans built elsewhere
TraceModel TraceModel::span_scratch() const {
  TraceModel out(limits_);
  out.sources_ = sources_;
  out.names_ = names_;
  out.name_ids_ = name_ids_;
  out.capture_key_ = capture_key_;
  out.tracks_.reserve(tracks_.size());
  for (const Track& t : tracks_) {
    Track& c = out.tracks_.emplace_back();
    c.source = t.source;
    c.type = t.type;
    c.thread_or_device = t.thread_or_device;
    c.stream = t.stream;
    c.label = t.label;
  }
  out.track_order_ = track_order_;
  out.track_index_ = track_index_;
  out.scratch_names_ = names_.size();
  out.scratch_tracks_ = tracks_.size();
  out.scratch_of_ = this;
  return out;
}

bool TraceModel::adopt_spans(TraceModel& scratch) {
  // Name and track ids in scratch are only ours if nothing was interned or added here since.
  if (scratch.scratch_of_ != this || scratch.scratch_names_ != names_.size() ||
      scratch.scratch_tracks_ != tracks_.size())
    return false;
  scratch.finalize();
  // Scratch's names, sources and track index are a superset of ours (it may have interned
  // names or opened tracks for the new spans).
  names_.swap(scratch.names_);
  name_ids_.swap(scratch.name_ids_);
  sources_.swap(scratch.sources_);
  track_index_.swap(scratch.track_index_);
  capture_key_ = scratch.capture_key_;
  // The arguments: scratch's, then those of the spans we keep (request and stage tracks).
  std::vector<wire::SpanArg> args = std::move(scratch.args_);
  for (Track& t : tracks_) {
    if (t.type == TrackType::kCpuThread || t.type == TrackType::kGpuStream) continue;
    for (Lane& l : t.lanes)
      for (SpanRec& r : l.spans) {
        if (r.num_args == 0 || r.args >= args_.size()) continue;
        const uint32_t at = static_cast<uint32_t>(args.size());
        args.insert(args.end(), args_.begin() + r.args,
                    args_.begin() + std::min<size_t>(args_.size(), r.args + r.num_args));
        r.args = at;
      }
  }
  scratch.args_.swap(args_);  // our old arguments go with scratch
  args_.swap(args);
  for (size_t i = 0; i < scratch.tracks_.size(); ++i) {
    Track& from = scratch.tracks_[i];
    if (i >= tracks_.size()) {
      tracks_.push_back(std::move(from));
      continue;
    }
    Track& to = tracks_[i];
    if (to.type != TrackType::kCpuThread && to.type != TrackType::kGpuStream) continue;
    to.lanes.swap(from.lanes);
    to.pending.swap(from.pending);
    std::swap(to.span_count, from.span_count);
    std::swap(to.min_ns, from.min_ns);
    std::swap(to.max_ns, from.max_ns);
  }
  launches_.swap(scratch.launches_);
  kernels_.swap(scratch.kernels_);
  captures_.swap(scratch.captures_);
  span_count_ = pending_spans_ = 0;
  for (const Track& t : tracks_) {
    span_count_ += t.span_count;
    pending_spans_ += t.pending.size();
  }
  dropped_spans_ += scratch.dropped_spans_;
  capture_spans_seen_ += scratch.capture_spans_seen_;
  dropped_capture_spans_ += scratch.dropped_capture_spans_;
  record_count_ += scratch.record_count_;
  scratch.scratch_of_ = nullptr;  // spent: it holds our old spans now
  rebuild_order();
  ++generation_;
  return true;
}

// [SECTION] Sources, names and tracks
const Source* TraceModel::source(uint32_t id) const {
  auto it = sources_.find(id);
  return it == sources_.end() ? nullptr : &it->second;
}

uint32_t TraceModel::rank_of(uint32_t source_id) const {
  const Source* s = source(source_id);
  return s && s->has_hello ? s->hello.rank : 0;
}

const std::string& TraceModel::name(uint32_t id) const {
  return id < names_.size() ? names_[id] : names_[0];
}

uint32_t TraceModel::find_name(std::string_view s) const {
  auto it = name_ids_.find(std::string(s));
  return it == name_ids_.end() ? 0 : it->second;
}

uint32_t TraceModel::intern(std::string_view s) {
  if (s.empty()) return 0;
  auto [it, inserted] = name_ids_.try_emplace(std::string(s), static_cast<uint32_t>(names_.size()));
  if (inserted) {
    names_.emplace_back(s);
    if (s == "capture") capture_key_ = it->second;
  }
  return it->second;
}

Source& TraceModel::source_mut(uint32_t id) {
  auto [it, inserted] = sources_.try_emplace(id);
  if (inserted) {
    it->second.id = id;
    it->second.label = id == wire::kCollectorSource ? "collector" : "source " + std::to_string(id);
  }
  return it->second;
}

uint32_t TraceModel::resolve(Source& src, uint32_t wire_id) {
  if (wire_id == 0) return 0;
  auto it = src.name_map.find(wire_id);
  if (it != src.name_map.end()) return it->second;
  // Not defined (yet): keep the span, show the raw id. A later StringDef rebinds.
  uint32_t g = intern("#" + std::to_string(wire_id));
  return g;
}

uint32_t TraceModel::track_for(uint32_t source_id, TrackType type, uint32_t a, uint32_t b) {
  uint64_t key = track_key(source_id, type, a, b);
  auto it = track_index_.find(key);
  if (it != track_index_.end()) return it->second;
  Track t;
  t.source = source_id;
  t.type = type;
  t.thread_or_device = a;
  t.stream = b;
  switch (type) {
    case TrackType::kCpuThread:
      t.label = "thread " + std::to_string(a);
      break;
    case TrackType::kGpuStream:
      t.label = "GPU " + std::to_string(a) + " stream " + std::to_string(b);
      break;
    case TrackType::kRequests:
      t.label = "requests";
      break;
    case TrackType::kStages:
      t.label = "stages";
      break;
  }
  uint32_t index = static_cast<uint32_t>(tracks_.size());
  tracks_.push_back(std::move(t));
  track_index_.emplace(key, index);
  dirty_ = true;
  return index;
}

void TraceModel::extend_time(int64_t a, int64_t b) {
  min_ns_ = std::min(min_ns_, a);
  max_ns_ = std::max(max_ns_, b);
}

bool TraceModel::add_span(uint32_t track, SpanRec rec) {
  if (span_count_ + pending_spans_ >= limits_.max_spans) {
    ++dropped_spans_;
    return false;
  }
  if (rec.end_ns < rec.start_ns) rec.end_ns = rec.start_ns;
  Track& t = tracks_[track];
  t.min_ns = std::min(t.min_ns, rec.start_ns);
  t.max_ns = std::max(t.max_ns, rec.end_ns);
  extend_time(rec.start_ns, rec.end_ns);
  t.pending.push_back(rec);
  ++pending_spans_;
  if (rec.correlation_id != 0) {
    uint64_t key = (static_cast<uint64_t>(t.source) << 48) ^ rec.correlation_id;
    (t.type == TrackType::kGpuStream ? kernels_ : launches_)[key] = FlowTarget{track, rec.start_ns};
  }
  dirty_ = true;
  return true;
}

void TraceModel::track_capture(const SpanRec& rec) {
  // The argument key is interned like any name; no "capture" name means no capture yet.
  if (capture_key_ == 0 || rec.args == kNoArgs) return;
  ++capture_spans_seen_;
  const int64_t end = std::max(rec.end_ns, rec.start_ns);  // as add_span() stored it
  for (uint32_t i = 0; i < rec.num_args && rec.args + i < args_.size(); ++i) {
    const wire::SpanArg& a = args_[rec.args + i];
    if (a.key_id != capture_key_ || a.value <= 0) continue;
    auto it = captures_.find(uint64_t(a.value));
    if (it == captures_.end()) {
      if (captures_.size() >= limits_.max_capture_tags) {
        ++dropped_capture_spans_;
        continue;
      }
      captures_.emplace(uint64_t(a.value), CaptureWindow{rec.start_ns, end, 1});
      continue;
    }
    CaptureWindow& w = it->second;
    w.start_ns = std::min(w.start_ns, rec.start_ns);
    w.end_ns = std::max(w.end_ns, end);
    ++w.spans;
  }
}

bool TraceModel::take_sample() {
  if (samples_ >= limits_.max_samples) {
    ++dropped_samples_;
    return false;
  }
  ++samples_;
  dirty_ = true;
  return true;
}

// [SECTION] Adding records
void TraceModel::add(uint32_t source_id, const wire::Record& record) {
  ++record_count_;
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, wire::Hello>) {
          Source& s = source_mut(source_id);
          s.has_hello = true;
          s.hello = r;
          s.label = "rank " + std::to_string(r.rank) + " · " +
                    (r.host.empty() ? r.instance : r.host + ":" + std::to_string(r.pid));
          if (!r.model.name.empty()) s.label += " · " + r.model.name;
          dirty_ = true;
        } else if constexpr (std::is_same_v<T, wire::StringDef>) {
          Source& s = source_mut(source_id);
          s.name_map[r.id] = intern(r.value);
        } else if constexpr (std::is_same_v<T, wire::Span>) {
          Source& s = source_mut(source_id);
          TrackType type = r.track_kind == wire::TrackKind::kGpuStream ? TrackType::kGpuStream
                                                                       : TrackType::kCpuThread;
          uint32_t track =
              track_for(source_id, type, r.track_id, type == TrackType::kGpuStream ? r.stream : 0);
          SpanRec rec;
          rec.start_ns = r.start_ns;
          rec.end_ns = r.end_ns;
          rec.name = resolve(s, r.name_id);
          rec.category = r.category;
          rec.depth = r.depth;
          rec.correlation_id = r.correlation_id;
          rec.request_id = r.request_id;
          uint8_t n = std::min<uint8_t>(r.num_args, wire::kMaxSpanArgs);
          if (n > 0) {
            rec.args = static_cast<uint32_t>(args_.size());
            rec.num_args = n;
            for (uint8_t i = 0; i < n; ++i)
              args_.push_back({resolve(s, r.args[i].key_id), r.args[i].value});
          }
          // A capture window grows with each tagged kernel as it arrives: no rescans later.
          if (add_span(track, rec) && type == TrackType::kGpuStream) track_capture(rec);
        } else if constexpr (std::is_same_v<T, wire::ExpertLoad>) {
          if (!take_sample()) return;
          ExpertLoadRec rec;
          rec.source = source_id;
          rec.rank = rank_of(source_id);
          rec.layer = r.layer;
          rec.timestamp_ns = r.timestamp_ns;
          rec.step = r.step;
          rec.tokens = r.tokens;
          rec.dropped = r.dropped;
          rec.rerouted = r.rerouted;
          rec.offset = static_cast<uint32_t>(expert_counts_.size());
          rec.experts = static_cast<uint32_t>(r.routed.size());
          expert_counts_.insert(expert_counts_.end(), r.routed.begin(), r.routed.end());
          expert_loads_.push_back(rec);
          extend_time(r.timestamp_ns, r.timestamp_ns);
        } else if constexpr (std::is_same_v<T, wire::MemorySample>) {
          if (!take_sample()) return;
          memory_.push_back({source_id, r});
          extend_time(r.timestamp_ns, r.timestamp_ns);
        } else if constexpr (std::is_same_v<T, wire::PrefixCacheSample>) {
          if (!take_sample()) return;
          prefix_.push_back({source_id, r});
          extend_time(r.timestamp_ns, r.timestamp_ns);
        } else if constexpr (std::is_same_v<T, wire::StageTiming>) {
          if (!take_sample()) return;
          stages_.push_back({source_id, r});
          SpanRec rec;
          rec.start_ns = r.start_ns;
          rec.end_ns = r.end_ns;
          rec.name = intern(wire::to_string(r.stage));
          rec.category = wire::SpanCategory::kStage;
          rec.request_id = r.request_id;
          add_span(track_for(source_id, TrackType::kStages, 0, 0), rec);
        } else if constexpr (std::is_same_v<T, wire::RequestEvent>) {
          if (!take_sample()) return;
          requests_.push_back({source_id, rank_of(source_id), r});
          SpanRec rec;
          rec.start_ns = r.arrival_ns;
          rec.end_ns = std::max(r.finish_ns, r.arrival_ns);
          rec.name = intern("request " + std::to_string(r.request_id));
          rec.category = wire::SpanCategory::kRequest;
          rec.request_id = r.request_id;
          add_span(track_for(source_id, TrackType::kRequests, 0, 0), rec);
        } else if constexpr (std::is_same_v<T, wire::CounterSample>) {
          if (!take_sample()) return;
          Source& s = source_mut(source_id);
          counters_.push_back(
              {source_id, r.timestamp_ns, resolve(s, r.name_id), r.is_gauge, r.value});
        } else if constexpr (std::is_same_v<T, wire::ExpertParallelStep>) {
          if (!take_sample()) return;
          ep_steps_.push_back({source_id, rank_of(source_id), r});
          extend_time(r.timestamp_ns, r.timestamp_ns + r.dispatch_ns + r.compute_ns + r.combine_ns);
        } else if constexpr (std::is_same_v<T, wire::AlertEpisode>) {
          if (!take_sample()) return;
          // The collector's windows are aligned to multiples of its window length,
          // so an episode found in the first window starts before the first record:
          // the trace's time range includes it (no negative times in the views).
          extend_time(r.start_ns, std::max(r.start_ns, r.end_ns));
          // An open episode is re-sent when it closes: update it in place.
          for (AlertRec& a : alerts_) {
            if (a.alert.kind == r.kind && a.alert.rank == r.rank && a.alert.layer == r.layer &&
                a.alert.expert == r.expert && a.alert.start_ns == r.start_ns &&
                a.alert.model == r.model) {
              a.alert = r;
              return;
            }
          }
          alerts_.push_back({source_id, r});
        } else {
          (void)r;  // agent health: shown nowhere yet
        }
      },
      record);
}

// [SECTION] Finalizing: lanes and display order
void TraceModel::finalize_track(Track& t) {
  if (t.pending.empty()) return;
  // Only the tail moves: spans already in lanes that end before the earliest
  // new start cannot overlap anything new, so they stay where they are. Live
  // data arrives roughly in time order, so a finalize costs O(new log new),
  // not a re-sort of the whole track.
  int64_t tmin = std::numeric_limits<int64_t>::max();
  for (const SpanRec& r : t.pending) tmin = std::min(tmin, r.start_ns);
  std::vector<SpanRec> all = std::move(t.pending);
  t.pending = {};
  for (Lane& l : t.lanes) {
    auto it = std::upper_bound(l.spans.begin(), l.spans.end(), tmin,
                               [](int64_t v, const SpanRec& r) { return v < r.end_ns; });
    all.insert(all.end(), it, l.spans.end());
    l.spans.erase(it, l.spans.end());
  }
  // Parents before children: earlier start first, longer first on a tie.
  std::sort(all.begin(), all.end(), [](const SpanRec& a, const SpanRec& b) {
    return a.start_ns != b.start_ns ? a.start_ns < b.start_ns : a.end_ns > b.end_ns;
  });
  // Depth by first fit: each span goes to the lowest lane whose last span has
  // ended. For properly nested ranges this is exactly the nesting depth (the
  // open spans occupy lanes 0..d-1); overlapping non-nested spans (requests,
  // stages, imported JSON) pack into as few lanes as possible.
  constexpr size_t kMaxDepth = 255;
  std::vector<int64_t> lane_end(t.lanes.size(), std::numeric_limits<int64_t>::min());
  for (size_t d = 0; d < t.lanes.size(); ++d)
    if (!t.lanes[d].spans.empty()) lane_end[d] = t.lanes[d].spans.back().end_ns;
  for (SpanRec rec : all) {
    size_t d = 0;
    while (d < lane_end.size() && lane_end[d] > rec.start_ns) ++d;
    if (d >= kMaxDepth) {
      // Past the depth cap a span shares the last lane, clipped so it stays sorted.
      d = kMaxDepth - 1;
      rec.start_ns = std::max(rec.start_ns, lane_end[d]);
      rec.end_ns = std::max(rec.end_ns, rec.start_ns);
    }
    if (d == lane_end.size()) {
      lane_end.push_back(rec.end_ns);
      t.lanes.emplace_back();
    } else {
      lane_end[d] = rec.end_ns;
    }
    rec.depth = static_cast<uint16_t>(d);
    t.lanes[d].spans.push_back(rec);
  }
  while (!t.lanes.empty() && t.lanes.back().spans.empty()) t.lanes.pop_back();
  t.span_count = 0;
  for (const Lane& l : t.lanes) t.span_count += l.spans.size();
}

void TraceModel::rebuild_order() {
  track_order_.resize(tracks_.size());
  for (uint32_t i = 0; i < tracks_.size(); ++i) track_order_[i] = i;
  std::stable_sort(track_order_.begin(), track_order_.end(), [&](uint32_t a, uint32_t b) {
    const Track& x = tracks_[a];
    const Track& y = tracks_[b];
    uint32_t rx = rank_of(x.source), ry = rank_of(y.source);
    return std::tie(rx, x.source, x.type, x.thread_or_device, x.stream) <
           std::tie(ry, y.source, y.type, y.thread_or_device, y.stream);
  });
}

void TraceModel::finalize() {
  if (!dirty_) return;
  for (Track& t : tracks_) finalize_track(t);
  span_count_ += pending_spans_;
  pending_spans_ = 0;
  rebuild_order();
  std::sort(alerts_.begin(), alerts_.end(), [](const AlertRec& a, const AlertRec& b) {
    return a.alert.start_ns < b.alert.start_ns;
  });
  dirty_ = false;
  ++generation_;
}

// [SECTION] Queries
const SpanRec* TraceModel::span(SpanRef ref) const {
  if (!ref.valid() || ref.track >= tracks_.size()) return nullptr;
  const Track& t = tracks_[ref.track];
  if (ref.lane >= t.lanes.size() || ref.index >= t.lanes[ref.lane].spans.size()) return nullptr;
  return &t.lanes[ref.lane].spans[ref.index];
}

SpanRef TraceModel::flow_partner(SpanRef ref) const {
  const SpanRec* s = span(ref);
  if (!s || s->correlation_id == 0) return {};
  const Track& t = tracks_[ref.track];
  uint64_t key = (static_cast<uint64_t>(t.source) << 48) ^ s->correlation_id;
  const auto& index = t.type == TrackType::kGpuStream ? launches_ : kernels_;
  auto it = index.find(key);
  if (it == index.end() || it->second.track >= tracks_.size()) return {};
  // The index holds (track, start): stable while lanes are rebuilt. Find the
  // span in whichever lane holds it.
  const Track& pt = tracks_[it->second.track];
  for (uint32_t li = 0; li < pt.lanes.size(); ++li) {
    const auto& spans = pt.lanes[li].spans;
    auto sit = std::lower_bound(spans.begin(), spans.end(), it->second.start_ns,
                                [](const SpanRec& r, int64_t v) { return r.start_ns < v; });
    for (; sit != spans.end() && sit->start_ns == it->second.start_ns; ++sit)
      if (sit->correlation_id == s->correlation_id)
        return {it->second.track, li, static_cast<uint32_t>(sit - spans.begin())};
  }
  return {};
}

std::vector<SpanRef> TraceModel::find_spans(std::string_view needle, size_t max) const {
  std::vector<uint8_t> match(names_.size(), 0);
  for (size_t i = 1; i < names_.size(); ++i) match[i] = icontains(names_[i], needle) ? 1 : 0;
  std::vector<SpanRef> out;
  for (uint32_t ti : track_order_) {
    const Track& t = tracks_[ti];
    for (uint32_t li = 0; li < t.lanes.size(); ++li) {
      const auto& spans = t.lanes[li].spans;
      for (uint32_t i = 0; i < spans.size(); ++i) {
        if (spans[i].name < match.size() && match[spans[i].name]) {
          out.push_back({ti, li, i});
          if (out.size() >= max) return out;
        }
      }
    }
  }
  std::sort(out.begin(), out.end(),
            [&](SpanRef a, SpanRef b) { return span(a)->start_ns < span(b)->start_ns; });
  return out;
}

SpanRef TraceModel::find_request_span(uint32_t source_id, uint64_t request_id) const {
  auto it = track_index_.find(track_key(source_id, TrackType::kRequests, 0, 0));
  if (it == track_index_.end()) return {};
  const Track& t = tracks_[it->second];
  for (uint32_t li = 0; li < t.lanes.size(); ++li)
    for (uint32_t i = 0; i < t.lanes[li].spans.size(); ++i)
      if (t.lanes[li].spans[i].request_id == request_id) return {it->second, li, i};
  return {};
}

const CaptureWindow* TraceModel::capture_window(uint64_t tag) const {
  auto it = captures_.find(tag);
  return it == captures_.end() ? nullptr : &it->second;
}

const wire::ModelDescription* TraceModel::model_description() const {
  const wire::ModelDescription* best = nullptr;
  uint32_t best_id = std::numeric_limits<uint32_t>::max();
  for (const auto& [id, s] : sources_)
    if (s.has_hello && !s.hello.model.layers.empty() && id < best_id) {
      best = &s.hello.model;
      best_id = id;
    }
  return best;
}

}  // namespace inferscope::viewer
