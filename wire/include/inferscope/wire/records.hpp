// inferscope wire: the event model shared by agent, collector and viewer.
//
// Every record that crosses a process boundary (agent -> collector, collector ->
// viewer, collector -> trace file) is one of the structs below. They are plain
// values; the codec (codec.hpp) turns them into frames and back.
//
// [SECTION] Time base
//   All timestamps are nanoseconds of CLOCK_MONOTONIC (std::chrono::steady_clock
//   on Linux) of the host that produced them. Processes on one node therefore
//   share a clock; GPU timestamps are converted to it by the agent before they
//   are shipped. The hello record carries the offset to CLOCK_REALTIME so that a
//   collector can show wall-clock times and line up several nodes.
//
// [SECTION] Strings
//   Names (span names, counter names, argument keys) are interned: a StringDef
//   record binds an id to a string once per connection, later records refer to
//   the id. Id 0 is "no string".
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace inferscope::wire {

inline constexpr uint16_t kProtocolVersion = 1;

// [SECTION] Limits: a decoder rejects anything beyond these, whatever the wire says.
inline constexpr uint32_t kMaxStringBytes = 4096;
inline constexpr uint32_t kMaxExperts = 4096;  // experts per MoE layer
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxEpRanks = 1024;  // entries of ExpertParallelStep::rows_to_rank
inline constexpr uint32_t kMaxSpanArgs = 4;
inline constexpr uint32_t kMaxRanks = 65536;

enum class LayerKind : uint8_t { kAttention = 0, kSsm = 1 };
enum class FfnKind : uint8_t { kDense = 0, kMoe = 1 };

struct LayerDescription {
  LayerKind mixer = LayerKind::kAttention;
  FfnKind ffn = FfnKind::kDense;
  uint16_t experts = 0;  // routed experts; 0 for dense layers

  friend bool operator==(const LayerDescription&, const LayerDescription&) = default;
};

struct ModelDescription {
  std::string name;
  std::vector<LayerDescription> layers;
  uint16_t top_k = 0;
  uint16_t shared_experts = 0;
  float capacity_factor = 0.0f;
  // Expert placement for expert parallelism: expert_to_rank[e] is the rank
  // that holds routed expert e (same for every MoE layer). Empty: no placement.
  std::vector<uint32_t> expert_to_rank;

  friend bool operator==(const ModelDescription&, const ModelDescription&) = default;
};

enum class ClockDomain : uint8_t { kMonotonic = 0 };

struct ClockDescription {
  ClockDomain domain = ClockDomain::kMonotonic;
  int64_t realtime_minus_monotonic_ns = 0;  // add to a timestamp to get Unix time

  friend bool operator==(const ClockDescription&, const ClockDescription&) = default;
};

// First record on every connection.
struct Hello {
  uint16_t protocol_version = kProtocolVersion;
  std::string service;   // e.g. "inferscope-engine"
  std::string instance;  // unique per process, e.g. host:pid
  std::string host;
  uint32_t pid = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  ModelDescription model;
  ClockDescription clock;
  std::string auth_token;  // empty when the collector does not require one
  // What the agent understands on the collector -> agent direction (bits,
  // wire/capture.hpp: kCapabilityCaptureRequests). Added last; older agents'
  // hellos decode as 0, and older collectors ignore it.
  uint32_t capabilities = 0;

  friend bool operator==(const Hello&, const Hello&) = default;
};

struct StringDef {
  uint32_t id = 0;
  std::string value;

  friend bool operator==(const StringDef&, const StringDef&) = default;
};

enum class TrackKind : uint8_t { kCpuThread = 0, kGpuStream = 1 };

enum class SpanCategory : uint8_t {
  kCpuRange = 0,   // an agent scoped range on a CPU thread
  kNvtxRange = 1,  // an NVTX range seen through CUPTI
  kKernel = 2,
  kMemcpy = 3,
  kMemset = 4,
  kRequest = 5,  // a whole request, arrival to finish
  kStage = 6,    // encoder / connector / backbone
  kRuntime = 7,  // CUDA runtime API call (launch) on a CPU thread
};

struct SpanArg {
  uint32_t key_id = 0;  // interned name
  int64_t value = 0;

  friend bool operator==(const SpanArg&, const SpanArg&) = default;
};

struct Span {
  TrackKind track_kind = TrackKind::kCpuThread;
  uint32_t track_id = 0;  // CPU: thread id; GPU: device ordinal
  uint32_t stream = 0;    // GPU stream id; 0 for CPU threads
  uint32_t name_id = 0;
  SpanCategory category = SpanCategory::kCpuRange;
  uint16_t depth = 0;  // nesting depth on its track (0 = outermost)
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  uint64_t correlation_id = 0;  // links a CPU launch to its GPU kernel; 0 = none
  uint64_t request_id = 0;      // 0 = not tied to a request
  uint8_t num_args = 0;
  std::array<SpanArg, kMaxSpanArgs> args{};

  friend bool operator==(const Span& a, const Span& b) {
    if (a.track_kind != b.track_kind || a.track_id != b.track_id || a.stream != b.stream ||
        a.name_id != b.name_id || a.category != b.category || a.depth != b.depth ||
        a.start_ns != b.start_ns || a.end_ns != b.end_ns || a.correlation_id != b.correlation_id ||
        a.request_id != b.request_id || a.num_args != b.num_args)
      return false;
    for (uint8_t i = 0; i < a.num_args && i < kMaxSpanArgs; ++i)
      if (!(a.args[i] == b.args[i])) return false;
    return true;
  }
};

// Tokens the router sent to each routed expert of one MoE layer in one batch
// step (after top-k, before capacity), and what capacity dropped.
struct ExpertLoad {
  uint64_t step = 0;
  uint32_t layer = 0;
  int64_t timestamp_ns = 0;
  uint32_t tokens = 0;           // tokens in the step's batch for this layer
  uint32_t dropped = 0;          // assignments dropped for capacity
  uint32_t rerouted = 0;         // assignments moved to a later choice instead
  std::vector<uint32_t> routed;  // routed[e] = assignments to expert e

  friend bool operator==(const ExpertLoad&, const ExpertLoad&) = default;
};

enum class MemoryKind : uint8_t {
  kKvCache = 0,
  kSsmState = 1,
  kSsmCheckpoints = 2,
  kWeights = 3,
  kActivations = 4,
};
inline constexpr uint8_t kMemoryKindCount = 5;

struct MemorySample {
  int64_t timestamp_ns = 0;
  uint32_t rank = 0;
  MemoryKind kind = MemoryKind::kKvCache;
  uint64_t used_bytes = 0;
  uint64_t capacity_bytes = 0;

  friend bool operator==(const MemorySample&, const MemorySample&) = default;
};

// Prefix-cache lookups since the previous sample (deltas, not totals).
struct PrefixCacheSample {
  int64_t timestamp_ns = 0;
  uint64_t attention_queried_tokens = 0;
  uint64_t attention_hit_tokens = 0;
  uint64_t ssm_queried_tokens = 0;
  uint64_t ssm_hit_tokens = 0;

  friend bool operator==(const PrefixCacheSample&, const PrefixCacheSample&) = default;
};

enum class Stage : uint8_t {
  kEncoder = 0,
  kConnector = 1,
  kBackbonePrefill = 2,
  kBackboneDecode = 3,
};
inline constexpr uint8_t kStageCount = 4;

enum class Device : uint8_t { kCpu = 0, kGpu = 1 };

struct StageTiming {
  uint64_t request_id = 0;
  Stage stage = Stage::kEncoder;
  Device device = Device::kCpu;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  int64_t gpu_ns = 0;  // GPU kernel time attributed to this stage (CUPTI); 0 if unknown

  friend bool operator==(const StageTiming&, const StageTiming&) = default;
};

enum class RequestStatus : uint8_t { kOk = 0, kCancelled = 1, kError = 2, kRejected = 3 };

// Sent once per request when it finishes (or fails).
struct RequestEvent {
  uint64_t request_id = 0;
  int64_t arrival_ns = 0;
  int64_t first_token_ns = 0;  // 0 if no token was produced
  int64_t finish_ns = 0;
  uint32_t prompt_tokens = 0;
  uint32_t output_tokens = 0;
  uint32_t image_tokens = 0;
  uint32_t cached_tokens = 0;  // prompt tokens served from the prefix cache
  RequestStatus status = RequestStatus::kOk;

  friend bool operator==(const RequestEvent&, const RequestEvent&) = default;
};

enum class RecordKind : uint8_t;  // below
// Per-kind arrays (AgentHealth::dropped_by_kind on the wire, the agent's
// counters) have this many slots: room for the kinds of later revisions.
inline constexpr size_t kRecordKindSlots = 16;

// The agent's own health, sent periodically: cumulative since process start.
struct AgentHealth {
  int64_t timestamp_ns = 0;
  uint64_t records_sent = 0;
  uint64_t records_dropped = 0;                              // all kinds
  std::array<uint64_t, kRecordKindSlots> dropped_by_kind{};  // indexed by RecordKind
  uint64_t buffer_high_water_bytes = 0;
  uint64_t reconnects = 0;
  uint64_t bytes_sent = 0;
  // Sent on connections that broke before the collector acknowledged them: they may
  // or may not have been processed. Added last; older encoders' records decode as 0.
  uint64_t records_unconfirmed = 0;
  // GPU tracing (docs/gpu.md), cumulative. Added after records_unconfirmed;
  // older agents' records decode as all 0 (mode 0 = off).
  struct Gpu {
    uint8_t mode = 0;  // agent::GpuTraceMode: 0 off, 1 sampled, 2 triggered, 3 full
    uint64_t bursts_started = 0;
    uint64_t bursts_finished = 0;
    uint64_t captures_requested = 0;
    uint64_t captures_started = 0;
    uint64_t captures_refused_busy = 0;
    uint64_t captures_refused_cooldown = 0;
    uint64_t captures_refused_off = 0;
    uint64_t captures_completed = 0;
    uint64_t kernels_captured = 0;
    uint64_t kernels_attributed = 0;
    uint64_t records_dropped = 0;
    // CUPTI's dynamic detach (docs/gpu.md), process-wide in the agent. Added
    // after records_dropped (revision 4); older agents' records decode as 0.
    uint64_t cupti_detaches = 0;
    uint64_t cupti_reattaches = 0;
    uint64_t cupti_detach_errors = 0;
    friend bool operator==(const Gpu&, const Gpu&) = default;
  } gpu;

  friend bool operator==(const AgentHealth&, const AgentHealth&) = default;
};

// A generic monotonic counter or gauge the host wants to publish.
struct CounterSample {
  int64_t timestamp_ns = 0;
  uint32_t name_id = 0;
  bool is_gauge = false;  // false: value is a delta to add; true: value is the level
  double value = 0.0;

  friend bool operator==(const CounterSample&, const CounterSample&) = default;
};

// A collector-derived episode (hot / cold / dead expert), stored in traces and
// streamed to viewers. end_ns == 0 while the episode is open.
// kHotRank: an expert-parallel rank carrying too much of the load; `layer` is its
// hottest MoE layer and `expert` the rank's largest expert there, peak_share the
// rank's share of all rows, peak_utilization that share over the fair share.
enum class AlertKind : uint8_t {
  kHotExpert = 0,
  kColdExpert = 1,
  kDeadExpert = 2,
  kDropBurst = 3,
  kHotRank = 4,
};
inline constexpr uint8_t kAlertKindCount = 5;

struct AlertEpisode {
  AlertKind kind = AlertKind::kHotExpert;
  uint32_t rank = 0;
  uint32_t layer = 0;
  uint32_t expert = 0;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  float peak_share = 0.0f;        // share of the layer's assignments at the peak
  float peak_utilization = 0.0f;  // share / fair share
  std::string model;

  friend bool operator==(const AlertEpisode&, const AlertEpisode&) = default;
};

// One MoE layer of one batch step on one expert-parallel rank. The all-to-alls
// include waiting: a rank whose experts finish early waits in combine for the
// slowest rank, so the collector derives idle time by joining ranks on (step, layer).
// The rank is the sending agent's hello rank; durations are >= 0.
struct ExpertParallelStep {  // RecordKind::kExpertParallel = 11
  uint64_t step = 0;
  uint32_t layer = 0;
  int64_t timestamp_ns = 0;    // when the layer's dispatch began
  int64_t dispatch_ns = 0;     // all-to-all sending rows to the experts' ranks
  int64_t compute_ns = 0;      // this rank's experts on the rows it holds
  int64_t combine_ns = 0;      // all-to-all bringing results back (includes waiting)
  uint32_t rows_sent = 0;      // assignment rows sent to other ranks
  uint32_t rows_computed = 0;  // rows this rank's experts computed (own + received)
  // Revision 2 (docs/wire-format.md): the dispatch traffic matrix's row of this
  // rank. rows_to_rank[d] = assignment rows this rank sent to rank d's experts in
  // the dispatch all-to-all (d == own rank: kept local, no transfer); combine
  // sends each of them back, so what a rank receives in combine is the transpose.
  // row_bytes: bytes of one row on the wire (hidden size x element size).
  // Empty / 0 in records from older agents.
  uint32_t row_bytes = 0;
  std::vector<uint32_t> rows_to_rank;  // <= kMaxEpRanks

  friend bool operator==(const ExpertParallelStep&, const ExpertParallelStep&) = default;
};

// [SECTION] Viewer range queries (docs/collector.md, "Viewer protocol")
// Viewer -> collector: the stored spans and samples of [from_ns, to_ns], with
// spans shorter than resolution_ns merged per track. Collector -> viewer: the
// same record, echoed as source 0, opens the reply; RangeEnd closes it. Times
// are coded absolutely (kinds added after v1: see record_codec.cpp).
struct RangeQuery {  // RecordKind::kRangeQuery = 12
  uint64_t query_id = 0;
  int64_t from_ns = 0;
  int64_t to_ns = 0;
  int64_t resolution_ns = 0;  // about one pixel; 0 = send every span
  uint32_t max_records = 0;   // cap on the reply's records; 0 = the collector's default

  friend bool operator==(const RangeQuery&, const RangeQuery&) = default;
};

// A merged summary span stands for `count` spans of one track shorter than the
// resolution: name_id = kMergedSpansStringId, args[0] = {kMergedSpansStringId, count}.
// The reply defines that string id for every source it holds.
inline constexpr uint32_t kMergedSpansStringId = 0xFFFFFFFFu;

enum class RangeStatus : uint8_t {
  kOk = 0,
  kTruncated = 1,
  kNoStore = 2,
  kBadQuery = 3,
  kBusy = 4
};
inline constexpr uint8_t kRangeStatusCount = 5;

struct RangeEnd {  // RecordKind::kRangeEnd = 13
  uint64_t query_id = 0;
  RangeStatus status = RangeStatus::kOk;
  uint64_t spans = 0;           // stored spans in the range (before merging)
  uint64_t merged_spans = 0;    // summary spans sent for the short ones
  uint64_t records = 0;         // records in the reply
  uint32_t blocks_read = 0;     // decompressed
  uint32_t blocks_skipped = 0;  // outside the range, by the index alone
  std::string message;          // why, when status is not ok

  friend bool operator==(const RangeEnd&, const RangeEnd&) = default;
};

// [SECTION] Delivery (docs/reliability.md, "Exactly once across reconnects")
// The first record of every data frame an agent sends: which agent stream it
// belongs to (a random id drawn once per agent, so a reused pid or host name
// never collides) and the frame's number in it, from 1. An agent re-sends the
// frames a collector has not acknowledged after it reconnects; the collector
// skips any frame whose number it has already applied for that stream, so a
// record reaches the aggregates and the trace store once. Numbers may skip
// (frames the agent gave up on), never go back.
struct FrameSequence {  // RecordKind::kFrameSequence = 14
  uint64_t stream = 0;
  uint64_t seq = 0;

  friend bool operator==(const FrameSequence&, const FrameSequence&) = default;
};

// Order matters: the index is the record's tag on the wire.
enum class RecordKind : uint8_t {
  kHello = 0,
  kStringDef = 1,
  kSpan = 2,
  kExpertLoad = 3,
  kMemory = 4,
  kPrefixCache = 5,
  kStage = 6,
  kRequest = 7,
  kAgentHealth = 8,
  kCounter = 9,
  kAlert = 10,
  kExpertParallel = 11,
  kRangeQuery = 12,
  kRangeEnd = 13,
  kFrameSequence = 14,
};
inline constexpr uint8_t kRecordKindCount = 15;
static_assert(kRecordKindCount <= kRecordKindSlots);

using Record = std::variant<Hello, StringDef, Span, ExpertLoad, MemorySample, PrefixCacheSample,
                            StageTiming, RequestEvent, AgentHealth, CounterSample, AlertEpisode,
                            ExpertParallelStep, RangeQuery, RangeEnd, FrameSequence>;

inline RecordKind kind_of(const Record& r) {
  return static_cast<RecordKind>(r.index());
}

const char* to_string(RecordKind kind);
const char* to_string(SpanCategory category);
const char* to_string(MemoryKind kind);
const char* to_string(Stage stage);
const char* to_string(AlertKind kind);
const char* to_string(LayerKind kind);

}  // namespace inferscope::wire
