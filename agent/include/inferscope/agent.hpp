// inferscope agent: the in-process instrumentation API.
//
// Linked into a serving process. Every call on the hot path is a timestamp and a
// store into a per-thread buffer: no locks, no allocation, no syscalls. A
// background thread drains the buffers, encodes frames (inferscope/wire) and
// ships them to the collector. When a buffer is full or the collector is slow or
// down, records are dropped and counted per kind, never waited for.
//
//   inferscope::agent::Agent agent(inferscope::agent::Config::from_environment());
//   static const uint32_t kDecode = inferscope::agent::intern("decode_step");
//   { inferscope::agent::ScopedRange r(agent, kDecode); ... }
//   { INFERSCOPE_RANGE(agent, "decode_step"); ... }  // the same, name interned once here
//   agent.expert_load(step, layer, routed_counts, tokens, dropped);
//
// [SECTION] Config       how to reach the collector, buffers, sampling
// [SECTION] Agent        the signals
// [SECTION] ScopedRange  RAII CPU range, also an NVTX range in the "inferscope" domain
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "inferscope/export.h"
#include "inferscope/hot_path.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::agent {

// Nanoseconds of CLOCK_MONOTONIC: the one time base of every record on the
// wire. (ScopedRange reads the TSC where it is usable; the shipper converts
// its ticks to this clock before anything leaves the process: docs/agent.md.)
INFERSCOPE_API int64_t now_ns();

// Which clock ScopedRange reads in this process, chosen once at the first
// agent that records (INFERSCOPE_CLOCK=tsc|os|auto overrides the detection):
// "tsc (...)" or "os (...)" (clock_gettime), with the reason, e.g.
// "tsc (invariant, 2.445 GHz, kernel clocksource tsc)" or "os (INFERSCOPE_CLOCK=os)".
INFERSCOPE_API std::string range_clock_description();

// Interns a name process-wide and returns its id (never 0). Thread-safe; takes
// a lock, so call it once per name (e.g. into a static) and keep the id.
INFERSCOPE_API uint32_t intern(std::string_view name);

// Interns the name of a range that stands for one model layer (0-based, below
// wire::kMaxLayers) and ties that layer to it: the CPU spans of ranges with this
// name, and the GPU kernels launched inside them (CUPTI), carry the arg "layer"
// = layer, so that a consumer reads the layer as a number instead of parsing it
// back out of the name (the collector's per-layer GPU time does: docs/agent.md).
// A name keeps the first layer it is given; a later call with another layer, or
// a layer out of range, ties nothing (one line on stderr). Returns the id.
INFERSCOPE_API uint32_t intern_layer(std::string_view name, uint32_t layer);

// [SECTION] GPU tracing modes (docs/gpu.md)
// off        no CUPTI at all (the default);
// sampled    CUPTI kernel tracing in short bursts (gpu_trace_burst every
//            gpu_trace_period), plus captures on request: the average cost is
//            the burst's cost times its duty cycle (0.2 % by default);
// triggered  CUPTI stays loaded but off until a capture is requested (by the
//            host, or by the collector when it opens an episode);
// full       kernel tracing all the time (the old Config::cupti = true).
enum class GpuTraceMode : uint8_t { kOff = 0, kSampled = 1, kTriggered = 2, kFull = 3 };
INFERSCOPE_API const char* to_string(GpuTraceMode mode);
// "off", "sampled", "triggered", "full"; false (out unchanged) for anything else.
INFERSCOPE_API bool parse_gpu_trace_mode(std::string_view text, GpuTraceMode& out);

// What CUPTI is asked to record while a burst is on (bits; docs/gpu.md has the
// cost of each). The default is what kernel attribution needs: kernel records
// plus callbacks on the runtime and driver launch calls.
enum GpuTraceKind : uint32_t {
  kGpuKernels = 1u << 0,          // CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL
  kGpuLaunchCallbacks = 1u << 1,  // runtime + driver launch callbacks -> range attribution
  kGpuMemcpy = 1u << 2,
  kGpuMemset = 1u << 3,
  kGpuRuntime = 1u << 4,              // every runtime API call as a span (CPU side)
  kGpuDriver = 1u << 5,               // every driver API call (no spans; for cost measurement)
  kGpuExternalCorrelation = 1u << 6,  // the old attribution path (needs kGpuRuntime/kGpuDriver)
};
inline constexpr uint32_t kGpuTraceDefaultKinds = kGpuKernels | kGpuLaunchCallbacks;
// "kernel,callbacks,memcpy,memset,runtime,driver,extcorr" (any subset, comma
// separated) or "default"/"all"; false for an unknown word.
INFERSCOPE_API bool parse_gpu_trace_kinds(std::string_view text, uint32_t& out);

// The GPU tracing books (Stats::gpu and AgentHealth). Captures are the
// requested windows (host or collector); bursts are the sampled ones.
struct GpuTraceStats {
  GpuTraceMode mode = GpuTraceMode::kOff;
  bool cupti_available = false;  // CUPTI loaded and a GPU present
  bool tracing = false;          // a window is on (with CUPTI: enabled, after the switch completed)
  uint64_t bursts_started = 0;
  uint64_t bursts_finished = 0;
  uint64_t captures_requested = 0;
  uint64_t captures_started = 0;
  uint64_t captures_refused_busy = 0;      // another capture was running
  uint64_t captures_refused_cooldown = 0;  // too soon after the previous one
  uint64_t captures_refused_off = 0;       // mode off, or no CUPTI
  uint64_t captures_completed = 0;
  uint64_t kernels_captured = 0;    // kernel records turned into spans
  uint64_t kernels_attributed = 0;  // ... of which carry an enclosing range
  uint64_t records_dropped = 0;     // CUPTI had no buffer for them
  uint64_t enable_errors = 0;       // CUPTI refused to switch on
  uint64_t last_capture_tag = 0;    // the tag of the latest capture that started
  uint64_t cupti_detaches = 0;      // Config::gpu_trace_detach: CUPTI detached (process-wide)
  uint64_t cupti_reattaches = 0;    // ... and attached again for a later window
  uint64_t cupti_detach_errors = 0;
};

// [SECTION] Config
struct INFERSCOPE_API Config {
  // "tcp://127.0.0.1:7431", "unix:///run/inferscope.sock", or "" to record nothing.
  std::string collector = "tcp://127.0.0.1:7431";
  std::string service = "inferscope";
  std::string instance;  // default: host:pid
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::string auth_token;
  wire::ModelDescription model;

  double span_sample_rate = 1.0;          // fraction of CPU ranges kept
  size_t thread_buffer_bytes = 1u << 20;  // per producing thread
  size_t max_threads = 256;               // beyond this, records are dropped and counted
  size_t max_pending_bytes = 64u << 20;   // encoded but unsent, while the collector is away
  std::chrono::milliseconds flush_interval{20};
  std::chrono::milliseconds reconnect_max_backoff{2000};
  std::chrono::milliseconds shutdown_timeout{2000};
  // A peer that accepts the connection but never acknowledges what it is sent
  // within ack_timeout (or answers with bytes that are not an acknowledgement:
  // an HTTP server, say) is not a collector: the agent says so once on stderr,
  // counts it in Stats::protocol_errors and retries only every
  // protocol_error_backoff instead of hammering it.
  std::chrono::milliseconds ack_timeout{10000};
  std::chrono::milliseconds protocol_error_backoff{10000};
  bool nvtx = true;    // emit NVTX ranges (when built with NVTX headers)
  bool cupti = false;  // legacy switch: true means gpu_trace = kFull
  // GPU tracing (CUPTI, when built with CUDA and a GPU is present): see
  // GpuTraceMode. The sampled default, a 20 ms burst every 10 s, is 0.2 % of
  // the time traced; even at the +50 % per-kernel cost measured in full mode
  // that averages 0.1 %, well under the 1 % budget (docs/gpu.md).
  GpuTraceMode gpu_trace = GpuTraceMode::kOff;
  std::chrono::milliseconds gpu_trace_burst{20};
  std::chrono::milliseconds gpu_trace_period{10'000};
  uint32_t gpu_trace_kinds = kGpuTraceDefaultKinds;
  // Detach CUPTI (cuptiFinalize) at the end of every burst and capture (and
  // right after loading it, in a mode that does not trace at once), and attach
  // it again at the next window. On by default: an attached CUPTI costs per
  // launch about what tracing does even with every kind off, and only a detach
  // gives that back. Measured on the H100 (agent_gpu_bench, 1000 small kernels,
  // us per iteration): never traced 4237, attached and idle 6802, detached
  // after tracing 4739 (~81 % of the idle cost given back); one attach ~6.6 ms.
  // So sampled (a 20 ms burst every 10 s) pays one attach per period, ~0.07 %,
  // and triggered pays nothing until a capture. full never ends a window, so it
  // stays attached; a switch away from full ends it like any other.
  // INFERSCOPE_GPU_TRACE_DETACH=0 keeps CUPTI attached between windows (then
  // graph nodes created between windows stay attributed: docs/gpu.md).
  bool gpu_trace_detach = true;
  // A capture (request_gpu_capture or the collector) counted in steps ends
  // after this long even if the host never reports step boundaries.
  std::chrono::milliseconds gpu_capture_max{2'000};
  // The next capture is refused until this long after the previous one ended.
  std::chrono::milliseconds gpu_capture_cooldown{30'000};
  bool compress = false;  // zstd-compress frames (worth it over slow links)

  // Reads INFERSCOPE_COLLECTOR, INFERSCOPE_SERVICE, INFERSCOPE_INSTANCE,
  // INFERSCOPE_RANK, INFERSCOPE_WORLD_SIZE, INFERSCOPE_TOKEN,
  // INFERSCOPE_SPAN_SAMPLE_RATE, INFERSCOPE_BUFFER_BYTES, INFERSCOPE_NVTX,
  // INFERSCOPE_CUPTI, INFERSCOPE_GPU_TRACE (off|sampled|triggered|full),
  // INFERSCOPE_GPU_TRACE_BURST_MS, INFERSCOPE_GPU_TRACE_PERIOD_S,
  // INFERSCOPE_GPU_TRACE_KINDS, INFERSCOPE_GPU_CAPTURE_MAX_MS,
  // INFERSCOPE_GPU_CAPTURE_COOLDOWN_S, INFERSCOPE_GPU_TRACE_DETACH over the values in base.
  // (Two overloads rather than a default argument: a class with default
  // member initializers cannot use itself as a default argument inside it.)
  static Config from_environment(Config base);
  static Config from_environment();
};

// The books of one agent. Every record the host hands over ends in exactly one
// of: delivered (a collector acknowledged it: processed, and persisted where it
// keeps a trace store), dropped (counted by kind and reason), unconfirmed (written
// to a collector that neither acknowledged it nor could be given it again: it
// may or may not have arrived), or undelivered (still in the agent when it shut
// down: the collector was unreachable). Before shutdown() the rest is in flight.
struct Stats {
  uint64_t records_recorded = 0;   // accepted into thread buffers
  uint64_t records_sent = 0;       // written to a collector at least once
  uint64_t records_delivered = 0;  // acknowledged by a collector
  uint64_t records_dropped = 0;
  uint64_t dropped_by_kind[wire::kRecordKindSlots] = {};  // indexed by wire::RecordKind
  uint64_t bytes_sent = 0;
  uint64_t reconnects = 0;
  uint64_t buffer_high_water_bytes = 0;
  bool connected = false;
  uint64_t pending_bytes = 0;             // encoded frames waiting for the collector
  uint64_t pending_high_water_bytes = 0;  // at most max_pending_bytes + one frame
  uint64_t unacknowledged_bytes = 0;      // written frames kept until acknowledged (for re-sending)
  uint64_t cupti_records_dropped = 0;     // GPU activity CUPTI could not buffer
  GpuTraceStats gpu;                      // modes, bursts, captures (also shipped in AgentHealth)
  // Written, then given up before the collector acknowledged them (the kept
  // copies exceeded max_pending_bytes, or shutdown came first): in doubt.
  uint64_t records_unconfirmed = 0;
  // After shutdown(): never written anywhere (no collector could be reached).
  uint64_t records_undelivered = 0;
  // Connections to a peer that did not speak the collector's protocol.
  uint64_t protocol_errors = 0;
};

// [SECTION] Agent
class INFERSCOPE_API Agent {
 public:
  explicit Agent(Config config);
  ~Agent();  // flushes, waiting at most config.shutdown_timeout
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Spans on the calling thread's CPU track.
  void span(uint32_t name_id, int64_t start_ns, int64_t end_ns,
            wire::SpanCategory category = wire::SpanCategory::kCpuRange, uint64_t request_id = 0,
            uint16_t depth = 0);

  // One MoE layer's routing result for one batch step: routed[e] assignments to
  // expert e, `tokens` tokens in the batch, `dropped` assignments over capacity.
  void expert_load(uint64_t step, uint32_t layer, std::span<const uint32_t> routed, uint32_t tokens,
                   uint32_t dropped, uint32_t rerouted = 0);
  // One MoE layer of one step on this expert-parallel rank: all-to-all and
  // expert compute times and row counts. A zero timestamp_ns is filled with now.
  void ep_step(const wire::ExpertParallelStep& s);
  // The same with this rank's dispatch traffic row (rows sent to each rank, own
  // included; s.rows_to_rank is ignored) without copying it into s. A row longer
  // than wire::kMaxEpRanks is left out; the totals still go.
  void ep_step(const wire::ExpertParallelStep& s, std::span<const uint32_t> rows_to_rank);
  void memory(wire::MemoryKind kind, uint64_t used_bytes, uint64_t capacity_bytes);
  // Deltas since the previous call.
  void prefix_cache(uint64_t attention_queried, uint64_t attention_hit, uint64_t ssm_queried,
                    uint64_t ssm_hit);
  void stage(uint64_t request_id, wire::Stage stage, int64_t start_ns, int64_t end_ns,
             wire::Device device = wire::Device::kCpu, int64_t gpu_ns = 0);
  void request(const wire::RequestEvent& event);
  void counter(uint32_t name_id, double delta);
  void gauge(uint32_t name_id, double value);

  // Replaces the model description and re-sends the hello record.
  void set_model(const wire::ModelDescription& model);

  // Waits until everything recorded so far is sent, or the timeout passes.
  bool flush(std::chrono::milliseconds timeout);
  // Stops shipping (a last drain and flush within config.shutdown_timeout) and
  // returns the final books, records_undelivered included. Later calls record
  // nothing more; the destructor does this when it was not called.
  Stats shutdown();
  Stats stats() const;
  const Config& config() const;

  // True when CUPTI is loaded for this agent (any mode but off, GPU present).
  bool cupti_active() const;

  // [SECTION] GPU tracing at run time (docs/gpu.md). None of these blocks on
  // CUPTI: the switch happens on the agent's GPU-trace thread.
  void set_gpu_trace_mode(GpuTraceMode mode);
  GpuTraceMode gpu_trace_mode() const;
  // Marks a step boundary (e.g. the end of a decode step): step-counted
  // captures start and end on these. An atomic increment; optional.
  void gpu_step();
  enum class CaptureResult : uint8_t {
    kStarted = 0,
    kRefusedBusy = 1,
    kRefusedCooldown = 2,
    kRefusedOff = 3,  // mode off, or CUPTI unavailable
  };
  // Traces the next `steps` step boundaries (steps > 0; capped by
  // gpu_capture_max) or the next `duration` (steps == 0). The tag (e.g. an
  // episode id) is put on every GPU span of the capture as the arg "capture".
  CaptureResult request_gpu_capture(uint32_t steps, std::chrono::milliseconds duration,
                                    uint64_t tag = 0);

  // GPU kernel time (ns) per enclosing range, keyed by the range's name id,
  // summed since the agent started; from CUPTI's kernel records (so only
  // kernels that completed and were flushed: call flush() first for an
  // up-to-date figure). Empty without CUPTI. The engine can fill
  // StageTiming::gpu_ns from differences of it; the collector can do the same
  // attribution from each kernel span's "range" arg.
  std::map<uint32_t, int64_t> gpu_time_by_range() const;

  struct INFERSCOPE_LOCAL Impl;  // internals: not exported from the shared library

 private:
  friend class ScopedRange;
  friend class DeviceExpertCounter;  // agent_cuda.hpp: counts its drops
  std::unique_ptr<Impl> impl_;
  hot::Gate gate_;  // what ScopedRange's inline path reads (hot_path.hpp)
};

// [SECTION] ScopedRange
// Records a CPU span from construction to destruction, pushes an NVTX range in
// the "inferscope" domain, and (with CUPTI on) an external correlation id so
// that kernels launched inside are attributed to this range.
//
// The common case (shipping, every range kept, no NVTX, no CUPTI, this
// thread's ring known) is inline: a clock read and a depth bump on open; a
// clock read and a 32-byte store into the thread's ring on close. With the
// agent off (collector "", no NVTX, no CUPTI) it is one load and a branch.
// Everything else goes through open_slow()/close_slow() in the library.
class INFERSCOPE_API ScopedRange {
 public:
  // No ScopedRange's address is ever taken (the slow paths are static, see
  // SlowOpen), so its members live in registers and the compiler sees, where
  // the agent is off, that the destructor has nothing to do: the off path is
  // the gate's load and a branch. The fast path keeps what its close needs in
  // state_'s bits (the clock, whether there is a request id), so the close
  // reads no agent.
  INFERSCOPE_FORCE_INLINE ScopedRange(Agent& agent, uint32_t name_id, uint64_t request_id = 0) {
    const uint8_t mode = agent.gate_.mode.load(std::memory_order_relaxed);
    state_ = kNone;
    agent_ = &agent;  // registers only (see SlowOpen), set here so no path reads it unset
    flags_ = 0;
    if (mode == hot::kGateOff) return;
    name_id_ = name_id;
    hot::ThreadCache& t = hot::tl_thread;
    if ((mode & hot::kGateFastBit) && t.serial == agent.gate_.serial) [[likely]] {
      ring_ = t.ring;
      depth_ = t.depth++;
      const bool tsc = mode & hot::kGateTscBit;
      state_ = static_cast<uint8_t>(kFast | (tsc ? kFastTsc : 0) | (request_id ? kFastRequest : 0));
      if (request_id != 0) request_id_ = request_id;  // (a constant 0 stores nothing)
      start_ = hot::read_clock(tsc);
      return;
    }
    request_id_ = request_id;
    const SlowOpen o = open_slow(agent, name_id, request_id);
    start_ = o.start;
    depth_ = o.depth;
    flags_ = o.flags;
    state_ = kSlow;
  }
  INFERSCOPE_FORCE_INLINE ~ScopedRange() {
    if (state_ & kFast) [[likely]] {
      const uint64_t end = hot::read_clock(state_ & kFastTsc);
      --hot::tl_thread.depth;
      ring_->put_range(start_, end, name_id_, (state_ & kFastRequest) ? request_id_ : 0, depth_);
    } else if (state_ != kNone) {
      close_slow(*agent_, start_, name_id_, request_id_, depth_, flags_);
    }
  }
  ScopedRange(const ScopedRange&) = delete;
  ScopedRange& operator=(const ScopedRange&) = delete;

 private:
  // The slow paths are static and take and return the range's fields by value, so no
  // ScopedRange's address is ever taken: the compiler keeps its members in registers, and
  // where the agent is off it sees that the destructor has nothing to do (the off path is
  // then a load and a branch). What open_slow() returns fits in two registers.
  struct SlowOpen {
    uint64_t start;  // clock ticks; 0 when the range is not recorded
    uint16_t depth;
    uint8_t flags;  // what it pushed (kNvtxPushed, ...), so close_slow() pops the same
  };
  static SlowOpen open_slow(Agent& agent, uint32_t name_id, uint64_t request_id);
  static void close_slow(Agent& agent, uint64_t start, uint32_t name_id, uint64_t request_id,
                         uint16_t depth, uint8_t flags);

  Agent* agent_;           // kSlow only
  hot::ThreadRing* ring_;  // kFast only
  uint64_t start_;         // clock ticks (hot::read_clock)
  uint64_t request_id_;
  uint32_t name_id_;
  uint16_t depth_;
  uint8_t state_;
  uint8_t flags_;  // kSlow: SlowOpen::flags
  // state_: kNone, kSlow, or kFast with its two bits (the TSC clock, a request id).
  static constexpr uint8_t kNone = 0, kFast = 1, kSlow = 2, kFastTsc = 4, kFastRequest = 8;
  static constexpr uint8_t kNvtxPushed = 1;
  static constexpr uint8_t kCuptiPushed = 2;  // a CUPTI external correlation id
  static constexpr uint8_t kRangePushed = 4;  // the GPU tracer's thread-local range stack
  static constexpr uint8_t kSampled = 8;      // this range is recorded
};

}  // namespace inferscope::agent

// A range named by a string literal, interned once per call site (a
// function-local static), for the rest of this scope:
//   { INFERSCOPE_RANGE(agent, "decode_step"); ... }
#define INFERSCOPE_RANGE_CAT2(a, b) a##b
#define INFERSCOPE_RANGE_CAT(a, b) INFERSCOPE_RANGE_CAT2(a, b)
#define INFERSCOPE_RANGE(agent, literal)                                              \
  static const uint32_t INFERSCOPE_RANGE_CAT(inferscope_range_id_, __LINE__) =        \
      ::inferscope::agent::intern(literal);                                           \
  ::inferscope::agent::ScopedRange INFERSCOPE_RANGE_CAT(inferscope_range_, __LINE__)( \
      (agent), INFERSCOPE_RANGE_CAT(inferscope_range_id_, __LINE__))
