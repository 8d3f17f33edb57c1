// Records -> Perfetto TrackEvent packets (perfetto_export.hpp for the layout).
#include "inferscope/collector/perfetto_export.hpp"

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "inferscope/collector/trace_scan.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "perfetto_writer.hpp"

namespace inferscope::collector {
namespace {

using perfetto::Annotation;
using perfetto::CounterUnit;
using perfetto::Event;
using perfetto::EventType;
using perfetto::mix;
using perfetto::Sequence;
using perfetto::TraceWriter;

constexpr size_t kMaxDescribedTracks = 1u << 16;  // per source; past it, descriptors repeat
constexpr size_t kMaxCompactTracks = 4096;        // per source: threads, streams, counters
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// Salts for the uuid mix, one per kind of track.
enum Salt : uint64_t {
  kProcessSalt = 1,
  kThreadSalt,
  kStreamSalt,
  kRequestSalt,
  kMemorySalt,
  kPrefixSalt,
  kImbalanceSalt,
  kCounterSalt,
  kFlowSalt,
  kAlertSalt,
  kEpisodeSalt,
};

int64_t saturating_add(int64_t a, int64_t b) {
  if (b > 0 && a > kMax - b) return kMax;
  if (b < 0 && a < kMin - b) return kMin;
  return a + b;
}

const char* stage_category(wire::Stage s) {
  switch (s) {
    case wire::Stage::kEncoder:
      return "encoder";
    case wire::Stage::kConnector:
      return "connector";
    case wire::Stage::kBackbonePrefill:
      return "prefill";
    case wire::Stage::kBackboneDecode:
      return "decode";
  }
  return "stage";
}

class Exporter {
 public:
  Exporter(TraceWriter& w, const ExportOptions& o, ExportStats& stats)
      : w_(w), options_(o), stats_(stats) {}

  // Shifts are relative to the reference host (NodeClocks); without any hello
  // found up front, the first hello read sets it.
  void set_reference(int64_t offset) {
    have_reference_ = true;
    reference_offset_ = offset;
  }

  void begin_node(size_t index, const std::string& label, const NodeClock& clock) {
    node_ = std::make_unique<Node>();
    node_->index = index;
    node_->label = label;
    if (clock.found) {
      if (!have_reference_) set_reference(clock.realtime_minus_monotonic_ns);
      node_->default_shift = host_shift(clock.host, clock.realtime_minus_monotonic_ns);
    }
  }

  void end_node() {
    for (auto& [id, s] : node_->sources) w_.flush(*s.seq);
    if (node_->alerts) w_.flush(*node_->alerts);
    alert_strings_.clear();
    node_.reset();
  }

  void frame(uint32_t source_id, std::span<const uint8_t> bytes) {
    if (!decoder_.open(bytes).ok()) return;  // the scan already checked it
    ++stats_.frames;
    wire::Record r;
    Source* src = nullptr;
    if (source_id == 0) {
      while (decoder_.next(r)) {
        ++stats_.records;
        if (wire::kind_of(r) == wire::RecordKind::kAlert) alert(std::get<wire::AlertEpisode>(r));
      }
      if (node_->alerts) w_.flush(*node_->alerts);
      alert_strings_.clear();
      return;
    }
    while (decoder_.next(r)) {
      ++stats_.records;
      if (wire::kind_of(r) == wire::RecordKind::kHello) {
        src = &hello(source_id, std::get<wire::Hello>(r));
        continue;
      }
      if (!src) src = find_source(source_id);
      if (!src) continue;  // no hello yet: a segment cut in the middle (never in the store)
      record(*src, r);
    }
    if (src) w_.flush(*src->seq);
  }

 private:
  struct Source {
    Sequence* seq = nullptr;
    uint64_t key = 0;  // node, source id and generation: the root of every uuid
    uint64_t process = 0;
    std::string instance;
    int64_t shift = 0;
    std::unordered_map<uint32_t, std::string> strings;
    std::unordered_map<uint64_t, uint64_t> compact;  // track key -> compact uuid
    std::unordered_set<uint64_t> described;
    std::unordered_map<uint32_t, double> counter_totals;
  };
  struct Node {
    size_t index = 0;
    std::string label;
    int64_t default_shift = 0;
    std::map<uint32_t, Source> sources;
    uint32_t generation = 0;
    Sequence* alerts = nullptr;
    uint64_t alert_track = 0;
    std::unordered_set<uint64_t> episode_tracks;
  };

  int64_t host_shift(const std::string& host, int64_t offset) {
    auto [it, inserted] = host_offsets_.emplace(host, offset);
    (void)inserted;  // a host keeps the offset of its first hello: one clock per host
    return it->second - reference_offset_;
  }

  bool in_range(int64_t start, int64_t end) const {
    return end >= options_.start_ns && start <= options_.end_ns;
  }

  Source* find_source(uint32_t id) {
    auto it = node_->sources.find(id);
    return it == node_->sources.end() ? nullptr : &it->second;
  }

  Source& hello(uint32_t id, const wire::Hello& h) {
    if (!have_reference_) set_reference(h.clock.realtime_minus_monotonic_ns);
    Source* existing = find_source(id);
    // Segments repeat the hello; a new instance under the same id (a collector
    // restart reused it) is a new process.
    if (existing && existing->instance == h.instance) return *existing;
    if (existing) w_.flush(*existing->seq);
    Source& s = node_->sources[id];
    s = Source{};
    s.seq = &w_.sequence();
    s.instance = h.instance;
    s.key = mix(mix(node_->index, id), ++node_->generation);
    s.shift = host_shift(h.host, h.clock.realtime_minus_monotonic_ns);
    s.process = mix(s.key, kProcessSalt);
    const std::string who = h.model.name.empty() ? h.service : h.model.name;
    w_.process_track(
        s.process, ++next_pid_,
        who + " rank " + std::to_string(h.rank) + " (" + h.instance + ") @ " + node_->label);
    ++stats_.events;
    return s;
  }

  // Iids are looked up at each use, never cached: a sequence's tables restart
  // when they outgrow their bound, and an old iid is not re-emitted after that.
  static uint64_t annotation_name(Source& s, std::string_view name) {
    return s.seq->intern(Sequence::kAnnotationNames, name);
  }

  const std::string& str(Source& s, uint32_t id) {
    static const std::string unnamed = "?";
    auto it = s.strings.find(id);
    return it == s.strings.end() ? unnamed : it->second;
  }

  // The uuid of a track, described the first time. Threads, streams and counters
  // get compact uuids (1, 2, ...: a byte or two per event instead of ten for a
  // 64-bit hash) from a bounded per-source map; requests, and anything past the
  // bound, use their 64-bit key, described again after the bounded set of
  // described keys was cleared (harmless). name() is called only to describe.
  template <typename Describe>
  uint64_t track(Source& s, uint64_t key, bool compact, Describe&& describe) {
    if (compact) {
      auto it = s.compact.find(key);
      if (it != s.compact.end()) return it->second;
      if (s.compact.size() < kMaxCompactTracks) {
        const uint64_t uuid = next_compact_uuid_++;
        s.compact.emplace(key, uuid);
        describe(uuid);
        ++stats_.events;
        return uuid;
      }
    }
    if (s.described.insert(key).second) {
      if (s.described.size() > kMaxDescribedTracks) {
        s.described.clear();
        s.described.insert(key);
      }
      describe(key);
      ++stats_.events;
    }
    return key;
  }

  template <typename Name>
  uint64_t child_track(Source& s, uint64_t key, bool compact, Name&& name) {
    return track(s, key, compact, [&](uint64_t uuid) { w_.track(uuid, s.process, name()); });
  }
  template <typename Name>
  uint64_t counter_track(Source& s, uint64_t key, Name&& name, CounterUnit unit) {
    return track(s, key, true,
                 [&](uint64_t uuid) { w_.counter_track(uuid, s.process, name(), unit); });
  }

  Event& event(Source& s, EventType type, int64_t ts, uint64_t track_uuid) {
    Event& e = s.seq->add();
    e.type = type;
    e.ts = ts;
    e.track = track_uuid;
    ++stats_.events;
    return e;
  }

  void slice(Source& s, uint64_t track_uuid, int64_t start, int64_t end, int32_t depth,
             uint64_t name_iid, uint64_t category_iid, Event** begin_out) {
    Event& b = event(s, EventType::kSliceBegin, start, track_uuid);
    b.depth = depth;
    b.name_iid = name_iid;
    b.category_iid = category_iid;
    Event& e = event(s, EventType::kSliceEnd, end, track_uuid);
    e.depth = depth;
    // The batch may reallocate on the next add: hand the begin out last.
    *begin_out = &s.seq->batch()[s.seq->batch().size() - 2];
  }

  void counter(Source& s, uint64_t track_uuid, int64_t ts, double value) {
    Event& e = event(s, EventType::kCounter, ts, track_uuid);
    e.double_value = true;
    e.counter_double = value;
  }

  void record(Source& s, const wire::Record& r) {
    switch (wire::kind_of(r)) {
      case wire::RecordKind::kStringDef: {
        const auto& d = std::get<wire::StringDef>(r);
        s.strings[d.id] = d.value;
        break;
      }
      case wire::RecordKind::kSpan:
        span(s, std::get<wire::Span>(r));
        break;
      case wire::RecordKind::kStage:
        stage(s, std::get<wire::StageTiming>(r));
        break;
      case wire::RecordKind::kRequest:
        request(s, std::get<wire::RequestEvent>(r));
        break;
      case wire::RecordKind::kMemory: {
        const auto& m = std::get<wire::MemorySample>(r);
        const int64_t ts = m.timestamp_ns + s.shift;
        if (!in_range(ts, ts)) break;
        const uint64_t t = counter_track(
            s, mix(mix(s.key, kMemorySalt), static_cast<uint64_t>(m.kind)),
            [&] { return std::string(wire::to_string(m.kind)) + " used"; }, CounterUnit::kBytes);
        Event& e = event(s, EventType::kCounter, ts, t);
        e.counter_int = static_cast<int64_t>(m.used_bytes);
        break;
      }
      case wire::RecordKind::kPrefixCache: {
        const auto& p = std::get<wire::PrefixCacheSample>(r);
        const int64_t ts = p.timestamp_ns + s.shift;
        if (!in_range(ts, ts)) break;
        if (p.attention_queried_tokens)
          counter(s,
                  counter_track(
                      s, mix(mix(s.key, kPrefixSalt), 0),
                      [] { return std::string("prefix cache hit rate (attention)"); },
                      CounterUnit::kUnspecified),
                  ts, double(p.attention_hit_tokens) / double(p.attention_queried_tokens));
        if (p.ssm_queried_tokens)
          counter(s,
                  counter_track(
                      s, mix(mix(s.key, kPrefixSalt), 1),
                      [] { return std::string("prefix cache hit rate (ssm)"); },
                      CounterUnit::kUnspecified),
                  ts, double(p.ssm_hit_tokens) / double(p.ssm_queried_tokens));
        break;
      }
      case wire::RecordKind::kExpertLoad: {
        const auto& l = std::get<wire::ExpertLoad>(r);
        const int64_t ts = l.timestamp_ns + s.shift;
        if (!in_range(ts, ts) || l.routed.empty()) break;
        uint64_t sum = 0, peak = 0;
        for (uint32_t v : l.routed) {
          sum += v;
          peak = std::max<uint64_t>(peak, v);
        }
        if (sum == 0) break;
        // max / mean over the layer's experts: 1 is perfectly even.
        const double imbalance = double(peak) * double(l.routed.size()) / double(sum);
        counter(s,
                counter_track(
                    s, mix(mix(s.key, kImbalanceSalt), l.layer),
                    [&] { return "layer " + std::to_string(l.layer) + " imbalance (max/mean)"; },
                    CounterUnit::kUnspecified),
                ts, imbalance);
        break;
      }
      case wire::RecordKind::kCounter: {
        const auto& c = std::get<wire::CounterSample>(r);
        double& total = s.counter_totals[c.name_id];
        total = c.is_gauge ? c.value : total + c.value;
        const int64_t ts = c.timestamp_ns + s.shift;
        if (!in_range(ts, ts)) break;
        counter(s,
                counter_track(
                    s, mix(mix(s.key, kCounterSalt), c.name_id), [&] { return str(s, c.name_id); },
                    CounterUnit::kUnspecified),
                ts, total);
        break;
      }
      default:
        break;  // agent health, EP steps: aggregated by the collector, not drawn
    }
  }

  void span(Source& s, const wire::Span& sp) {
    const int64_t start = sp.start_ns + s.shift, end = sp.end_ns + s.shift;
    if (!in_range(start, end)) return;
    const bool gpu = sp.track_kind == wire::TrackKind::kGpuStream;
    const uint64_t t =
        gpu ? child_track(s, mix(mix(mix(s.key, kStreamSalt), sp.track_id), sp.stream), true,
                          [&] {
                            return "GPU " + std::to_string(sp.track_id) + " stream " +
                                   std::to_string(sp.stream);
                          })
            : child_track(s, mix(mix(s.key, kThreadSalt), sp.track_id), true,
                          [&] { return "thread " + std::to_string(sp.track_id); });
    Event* b = nullptr;
    slice(s, t, start, end, sp.depth, s.seq->intern(Sequence::kNames, str(s, sp.name_id)),
          s.seq->intern(Sequence::kCategories, wire::to_string(sp.category)), &b);
    if (sp.request_id) b->annotate(annotation_name(s, "request_id")).set_uint(sp.request_id);
    if (sp.correlation_id) {
      b->annotate(annotation_name(s, "correlation_id")).set_uint(sp.correlation_id);
      const uint64_t flow = mix(mix(s.key, kFlowSalt), sp.correlation_id);
      if (gpu)
        b->flow_in = flow;
      else if (sp.category == wire::SpanCategory::kRuntime)
        b->flow_out = flow;
    }
    for (uint8_t i = 0; i < sp.num_args && i < wire::kMaxSpanArgs; ++i) {
      const std::string& key = str(s, sp.args[i].key_id);
      Annotation& a = b->annotate(s.seq->intern(Sequence::kAnnotationNames, key));
      // "range" args name an interned string (the enclosing range): show the name.
      if (key == "range")
        a.set_string(&str(s, static_cast<uint32_t>(sp.args[i].value)));
      else
        a.set_int(sp.args[i].value);
    }
  }

  uint64_t request_track(Source& s, uint64_t request_id) {
    // One track per request, all named "requests": requests overlap, a track
    // each keeps every request's stages nested in it, and the UI merges
    // same-named sibling tracks into one lane-packed row.
    return child_track(s, mix(mix(s.key, kRequestSalt), request_id), false,
                       [] { return std::string("requests"); });
  }

  void stage(Source& s, const wire::StageTiming& st) {
    const int64_t start = st.start_ns + s.shift, end = st.end_ns + s.shift;
    if (!in_range(start, end)) return;
    Event* b = nullptr;
    slice(s, request_track(s, st.request_id), start, end, 1,
          s.seq->intern(Sequence::kNames, wire::to_string(st.stage)),
          s.seq->intern(Sequence::kCategories, stage_category(st.stage)), &b);
    b->annotate(annotation_name(s, "request_id")).set_uint(st.request_id);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "gpu"))
        .set_int(st.device == wire::Device::kGpu ? 1 : 0);
    if (st.gpu_ns)
      b->annotate(s.seq->intern(Sequence::kAnnotationNames, "gpu_ns")).set_int(st.gpu_ns);
  }

  void request(Source& s, const wire::RequestEvent& q) {
    const int64_t start = q.arrival_ns + s.shift, end = q.finish_ns + s.shift;
    if (!in_range(start, end)) return;
    const uint64_t t = request_track(s, q.request_id);
    Event* b = nullptr;
    slice(s, t, start, end, 0, s.seq->intern(Sequence::kNames, "request"),
          s.seq->intern(Sequence::kCategories, "request"), &b);
    b->annotate(annotation_name(s, "request_id")).set_uint(q.request_id);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "prompt_tokens"))
        .set_int(q.prompt_tokens);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "output_tokens"))
        .set_int(q.output_tokens);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "cached_tokens"))
        .set_int(q.cached_tokens);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "image_tokens")).set_int(q.image_tokens);
    b->annotate(s.seq->intern(Sequence::kAnnotationNames, "status"))
        .set_int(static_cast<int>(q.status));
    if (q.first_token_ns != 0) {
      Event& ft = event(s, EventType::kInstant, q.first_token_ns + s.shift, t);
      ft.depth = 1;
      ft.name_iid = s.seq->intern(Sequence::kNames, "first token");
      ft.category_iid = s.seq->intern(Sequence::kCategories, "request");
    }
  }

  void alert(const wire::AlertEpisode& a) {
    const int64_t shift = node_->default_shift;
    const int64_t start = a.start_ns + shift, end = (a.end_ns == 0 ? a.start_ns : a.end_ns) + shift;
    if (!in_range(start, end)) return;
    Node& n = *node_;
    if (!n.alerts) {
      n.alerts = &w_.sequence();
      n.alert_track = mix(mix(n.index, 0xA1E47), kAlertSalt);
      w_.track(n.alert_track, 0, "inferscope alerts @ " + n.label);
      ++stats_.events;
    }
    Sequence& seq = *n.alerts;
    std::string what = std::string(wire::to_string(a.kind)) + " rank " + std::to_string(a.rank) +
                       " layer " + std::to_string(a.layer);
    if (a.kind != wire::AlertKind::kDropBurst) what += " expert " + std::to_string(a.expert);
    const uint64_t cat = seq.intern(Sequence::kCategories, "alert");
    auto annotate = [&](Event& e) {
      e.annotate(seq.intern(Sequence::kAnnotationNames, "episode"))
          .set_string(&remember(episode_id(a)));
      e.annotate(seq.intern(Sequence::kAnnotationNames, "peak_share")).set_double(a.peak_share);
      e.annotate(seq.intern(Sequence::kAnnotationNames, "peak_utilization"))
          .set_double(a.peak_utilization);
    };
    Event& i = seq.add();
    ++stats_.events;
    i.type = EventType::kInstant;
    i.track = n.alert_track;
    i.category_iid = cat;
    if (a.end_ns == 0) {
      i.ts = start;
      i.name_iid = seq.intern(Sequence::kNames, what + " opened");
      annotate(i);
      return;
    }
    i.ts = end;
    i.name_iid = seq.intern(Sequence::kNames, what + " closed");
    annotate(i);
    // The episode as a slice on its own track: episodes of different experts overlap.
    const uint64_t key =
        mix(mix(mix(mix(n.index, static_cast<uint64_t>(a.kind)), a.rank), a.layer), a.expert);
    const uint64_t t = mix(key, kEpisodeSalt);
    if (n.episode_tracks.insert(t).second) {
      if (n.episode_tracks.size() > kMaxDescribedTracks) n.episode_tracks.clear();
      w_.track(t, n.alert_track, what);
      ++stats_.events;
    }
    Event& b = seq.add();
    b.type = EventType::kSliceBegin;
    b.ts = start;
    b.track = t;
    b.category_iid = cat;
    b.name_iid = seq.intern(Sequence::kNames, wire::to_string(a.kind));
    annotate(b);
    Event& e = seq.add();
    e.type = EventType::kSliceEnd;
    e.ts = end;
    e.track = t;
    stats_.events += 2;
  }

  // Alert annotations are strings made here: kept (a deque keeps references)
  // until the frame's batch is written, then dropped.
  const std::string& remember(std::string s) {
    alert_strings_.push_back(std::move(s));
    return alert_strings_.back();
  }

  TraceWriter& w_;
  const ExportOptions& options_;
  ExportStats& stats_;
  wire::FrameDecoder decoder_{wire::DecoderOptions{wire::kMaxBlockRawBytes}};
  std::unique_ptr<Node> node_;
  bool have_reference_ = false;
  int64_t reference_offset_ = 0;
  std::unordered_map<std::string, int64_t> host_offsets_;
  int32_t next_pid_ = 0;
  uint64_t next_compact_uuid_ = 1;
  std::deque<std::string> alert_strings_;
};

}  // namespace

size_t perfetto_interning_cap() {
  return perfetto::kMaxInternedPerTable;
}

bool export_perfetto_trace(const std::vector<ExportNode>& nodes, std::ostream& out,
                           const ExportOptions& options, ExportStats& stats, std::string& error) {
  if (nodes.empty()) {
    error = "no input";
    return false;
  }
  NodeClocks clocks;
  if (!read_node_clocks(nodes, clocks, error)) return false;
  TraceWriter writer(out);
  Exporter ex(writer, options, stats);
  if (clocks.found) {
    ex.set_reference(clocks.reference_offset_ns);
    // The trace's clock (a monotonic one, written as Perfetto's default) to REALTIME.
    writer.clock_snapshot(1, static_cast<uint64_t>(1 + clocks.reference_offset_ns));
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    ex.begin_node(i, nodes[i].label, clocks.nodes[i]);
    // The window in this node's own clock, for its index.
    const int64_t shift = clocks.shift(i);
    const int64_t from = saturating_add(options.start_ns, -shift);
    const int64_t to = saturating_add(options.end_ns, -shift);
    TraceScanStats scan;
    const bool ok = scan_trace_files(
        nodes[i].files, from, to,
        [&](uint32_t source, std::span<const uint8_t> frame) {
          ex.frame(source, frame);
          return true;
        },
        scan, error);
    stats.files += scan.files;
    stats.corrupt_frames += scan.corrupt_frames;
    stats.blocks_read += scan.blocks_read;
    stats.blocks_skipped += scan.blocks_skipped;
    for (auto& d : scan.damage) stats.damage.push_back(std::move(d));
    ex.end_node();
    if (!ok) return false;
  }
  if (!writer.finish()) {
    error = "write failed";
    return false;
  }
  stats.bytes = writer.bytes();
  return true;
}

}  // namespace inferscope::collector
