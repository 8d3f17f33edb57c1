// inferscope viewer: the in-memory trace model (no ImGui, no GL).
//
// [SECTION] What it holds
//   Everything the viewer draws, decoded from wire records: sources (one per
//   agent stream, with its Hello), tracks of spans (one per CPU thread or GPU
//   stream of a source, plus synthetic request and stage tracks), expert loads,
//   memory, prefix-cache, stage and request records, and alert episodes.
//
// [SECTION] Names
//   String ids on the wire are per source. The model resolves them on arrival
//   into one global name table, so "find by name" and colours work across
//   sources. A span that names an id not (yet) defined shows as "#<id>".
//
// [SECTION] Lanes
//   finalize() sorts each track's spans and assigns nesting depth with a stack
//   (the wire's depth is advisory: imported JSON has none). Each depth is a
//   Lane whose spans do not overlap, so both starts and ends are sorted; the
//   level-of-detail query (lod.hpp) binary-searches them.
//
// [SECTION] Live use
//   add() may be called at any time; finalize() folds the new spans into the
//   lanes of the tracks that changed, re-placing only the spans that end after
//   the earliest new start (live data arrives roughly in time order). Memory is bounded by
//   max_spans: past it, further spans are counted in dropped_spans() and not stored.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::viewer {

inline constexpr uint32_t kNoArgs = std::numeric_limits<uint32_t>::max();

// One span as the viewer keeps it: 48 bytes, names resolved to the global table.
struct SpanRec {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  uint32_t name = 0;  // global name id (0 = none)
  wire::SpanCategory category = wire::SpanCategory::kCpuRange;
  uint8_t num_args = 0;
  uint16_t depth = 0;
  uint32_t args = kNoArgs;  // index into TraceModel::args()
  uint64_t correlation_id = 0;
  uint64_t request_id = 0;
};

struct Lane {
  std::vector<SpanRec> spans;  // sorted by start; non-overlapping
};

enum class TrackType : uint8_t { kCpuThread, kGpuStream, kRequests, kStages };

struct Track {
  uint32_t source = 0;
  TrackType type = TrackType::kCpuThread;
  uint32_t thread_or_device = 0;
  uint32_t stream = 0;
  std::string label;
  std::vector<Lane> lanes;
  std::vector<SpanRec> pending;  // added since the last finalize()
  uint64_t span_count = 0;       // in lanes
  int64_t min_ns = std::numeric_limits<int64_t>::max();
  int64_t max_ns = std::numeric_limits<int64_t>::min();
};

// Where a span lives: stable between finalize() calls.
struct SpanRef {
  uint32_t track = std::numeric_limits<uint32_t>::max();
  uint32_t lane = 0;
  uint32_t index = 0;
  bool valid() const { return track != std::numeric_limits<uint32_t>::max(); }
  friend bool operator==(const SpanRef&, const SpanRef&) = default;
};

struct Source {
  uint32_t id = 0;
  bool has_hello = false;
  wire::Hello hello;
  std::unordered_map<uint32_t, uint32_t> name_map;  // wire string id -> global name id
  std::string label;                                // "rank 0 · host:pid"
};

struct ExpertLoadRec {
  uint32_t source = 0;
  uint32_t rank = 0;
  uint32_t layer = 0;
  int64_t timestamp_ns = 0;
  uint64_t step = 0;
  uint32_t tokens = 0, dropped = 0, rerouted = 0;
  uint32_t offset = 0;  // into TraceModel::expert_counts()
  uint32_t experts = 0;
};

struct MemoryRec {
  uint32_t source = 0;
  wire::MemorySample sample;
};
struct PrefixRec {
  uint32_t source = 0;
  wire::PrefixCacheSample sample;
};
struct StageRec {
  uint32_t source = 0;
  wire::StageTiming stage;
};
struct RequestRec {
  uint32_t source = 0;
  uint32_t rank = 0;
  wire::RequestEvent request;
};
struct AlertRec {
  uint32_t source = 0;
  wire::AlertEpisode alert;
};
struct EpStepRec {
  uint32_t source = 0;
  uint32_t rank = 0;
  wire::ExpertParallelStep step;
};
struct CounterRec {
  uint32_t source = 0;
  int64_t timestamp_ns = 0;
  uint32_t name = 0;  // global
  bool is_gauge = false;
  double value = 0;
};

// Where one GPU capture lies: during a capture the agent tags every GPU span with the argument
// `capture` = the capture's tag (docs/gpu.md; captures.hpp maps an alert to its tag).
struct CaptureWindow {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  uint64_t spans = 0;
};

struct ModelLimits {
  uint64_t max_spans = 50'000'000;    // about 2.4 GB of spans
  uint64_t max_samples = 20'000'000;  // every other record kind together
  uint32_t max_capture_tags = 4096;   // capture windows tracked; spans of further tags counted
};

class TraceModel {
 public:
  explicit TraceModel(ModelLimits limits = {});

  // Takes one decoded record of a stream; source is the frame's source_id.
  void add(uint32_t source, const wire::Record& record);
  // Sorts new spans into lanes and rebuilds the indexes. Cheap when nothing changed.
  void finalize();
  void clear();
  // Drops every span of the CPU-thread and GPU-stream tracks (and their flows,
  // arguments and capture windows) and keeps everything else: sources, names, request and
  // stage tracks, sample tables, the time range. A level-of-detail view
  // (store_view.hpp) swaps the spans of a window this way without decoding
  // the other records again. finalize() afterwards.
  void clear_spans();

  // [SECTION] Spans built elsewhere (store_view.hpp builds a window's spans on a worker thread)
  // A model with this one's sources, names and tracks but no spans or other records, so that
  // spans added to it resolve to the same name and track ids. Copies no spans: cheap.
  TraceModel span_scratch() const;
  // Replaces the spans of the CPU-thread and GPU-stream tracks (their flows, arguments and
  // capture windows too) by those of scratch, a span_scratch() of this model to which nothing
  // was added since (else false, nothing changes). Finalizes scratch first (cheap when done).
  // Constant time in the number of spans: vectors are swapped, so the old spans end up in
  // scratch and whoever owns it frees them (a worker thread, not the UI).
  bool adopt_spans(TraceModel& scratch);

  // [SECTION] Access
  const std::vector<Track>& tracks() const { return tracks_; }
  const std::vector<uint32_t>& track_order() const { return track_order_; }  // display order
  const std::unordered_map<uint32_t, Source>& sources() const { return sources_; }
  const Source* source(uint32_t id) const;
  uint32_t rank_of(uint32_t source) const;
  const std::string& name(uint32_t id) const;
  uint32_t find_name(std::string_view s) const;  // 0 if unknown
  uint32_t intern(std::string_view s);
  size_t name_count() const { return names_.size(); }
  const std::vector<wire::SpanArg>& args() const { return args_; }

  const SpanRec* span(SpanRef ref) const;
  // The launch <-> kernel partner of a span with a correlation id (same source).
  SpanRef flow_partner(SpanRef ref) const;
  // Every span whose name contains needle (case-insensitive), capped at max.
  std::vector<SpanRef> find_spans(std::string_view needle, size_t max = 10000) const;
  // The spans of one request on the request track of its source (for jumping there).
  SpanRef find_request_span(uint32_t source, uint64_t request_id) const;

  const std::vector<ExpertLoadRec>& expert_loads() const { return expert_loads_; }
  const std::vector<uint32_t>& expert_counts() const { return expert_counts_; }
  const std::vector<MemoryRec>& memory() const { return memory_; }
  const std::vector<PrefixRec>& prefix_cache() const { return prefix_; }
  const std::vector<StageRec>& stages() const { return stages_; }
  const std::vector<RequestRec>& requests() const { return requests_; }
  const std::vector<AlertRec>& alerts() const { return alerts_; }
  const std::vector<CounterRec>& counters() const { return counters_; }
  const std::vector<EpStepRec>& ep_steps() const { return ep_steps_; }

  int64_t min_ns() const { return min_ns_; }
  int64_t max_ns() const { return max_ns_; }
  bool empty() const { return min_ns_ > max_ns_; }
  uint64_t span_count() const { return span_count_; }
  uint64_t record_count() const { return record_count_; }
  uint64_t dropped_spans() const { return dropped_spans_; }
  uint64_t dropped_samples() const { return dropped_samples_; }
  uint64_t unknown_source_records() const { return unknown_source_records_; }
  // Bumped by every finalize() that changed something: views cache on it.
  uint64_t generation() const { return generation_; }

  // The model description of the first source that has one (for the heatmap).
  const wire::ModelDescription* model_description() const;

  // [SECTION] GPU captures
  // Kept up to date by add() from each GPU span's arguments as it arrives (they are resolved
  // there anyway), so a lookup never scans spans. Pending spans count before finalize().
  const CaptureWindow* capture_window(uint64_t tag) const;
  const std::unordered_map<uint64_t, CaptureWindow>& capture_windows() const { return captures_; }
  // GPU spans with arguments that add() looked at for a capture tag (tests: no rescans).
  uint64_t capture_spans_seen() const { return capture_spans_seen_; }
  // Tagged spans not tracked because max_capture_tags windows already existed.
  uint64_t dropped_capture_spans() const { return dropped_capture_spans_; }

 private:
  Source& source_mut(uint32_t id);
  uint32_t track_for(uint32_t source, TrackType type, uint32_t a, uint32_t b);
  uint32_t resolve(Source& src, uint32_t wire_id);
  bool add_span(uint32_t track, SpanRec rec);  // false: over max_spans, dropped
  void track_capture(const SpanRec& rec);
  void extend_time(int64_t a, int64_t b);
  bool take_sample();
  void finalize_track(Track& t);
  void rebuild_order();

  ModelLimits limits_;
  std::unordered_map<uint32_t, Source> sources_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, uint32_t> name_ids_;
  std::vector<wire::SpanArg> args_;
  std::vector<Track> tracks_;
  std::vector<uint32_t> track_order_;
  std::unordered_map<uint64_t, uint32_t> track_index_;  // key(source, type, a, b) -> track
  struct FlowTarget {
    uint32_t track;
    int64_t start_ns;  // stable while lanes are rebuilt, unlike a lane index
  };
  // (source << 48 ^ correlation id) -> the launch / the kernel, filled by add().
  std::unordered_map<uint64_t, FlowTarget> launches_, kernels_;
  std::vector<ExpertLoadRec> expert_loads_;
  std::vector<uint32_t> expert_counts_;
  std::vector<MemoryRec> memory_;
  std::vector<PrefixRec> prefix_;
  std::vector<StageRec> stages_;
  std::vector<RequestRec> requests_;
  std::vector<AlertRec> alerts_;
  std::vector<CounterRec> counters_;
  std::vector<EpStepRec> ep_steps_;
  int64_t min_ns_ = std::numeric_limits<int64_t>::max();
  int64_t max_ns_ = std::numeric_limits<int64_t>::min();
  uint64_t span_count_ = 0, pending_spans_ = 0, samples_ = 0, record_count_ = 0;
  uint64_t dropped_spans_ = 0, dropped_samples_ = 0, unknown_source_records_ = 0;
  uint64_t generation_ = 0;
  bool dirty_ = false;
  uint32_t capture_key_ = 0;  // the global name id of "capture" (0: not interned yet)
  std::unordered_map<uint64_t, CaptureWindow> captures_;  // by capture tag
  uint64_t capture_spans_seen_ = 0, dropped_capture_spans_ = 0;
  // In a span_scratch(): the size of the name table and tracks of the model it came from.
  size_t scratch_names_ = 0, scratch_tracks_ = 0;
  const TraceModel* scratch_of_ = nullptr;
};

}  // namespace inferscope::viewer
