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
#include "inferscope/wire/records.hpp"

namespace inferscope::agent {

// Nanoseconds of CLOCK_MONOTONIC: the one time base of every record.
INFERSCOPE_API int64_t now_ns();

// Interns a name process-wide and returns its id (never 0). Thread-safe; takes
// a lock, so call it once per name (e.g. into a static) and keep the id.
INFERSCOPE_API uint32_t intern(std::string_view name);

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
  bool nvtx = true;       // emit NVTX ranges (when built with NVTX headers)
  bool cupti = false;     // CUPTI activity tracing (when built with CUDA and a GPU is present)
  bool compress = false;  // zstd-compress frames (worth it over slow links)

  // Reads INFERSCOPE_COLLECTOR, INFERSCOPE_SERVICE, INFERSCOPE_INSTANCE,
  // INFERSCOPE_RANK, INFERSCOPE_WORLD_SIZE, INFERSCOPE_TOKEN,
  // INFERSCOPE_SPAN_SAMPLE_RATE, INFERSCOPE_BUFFER_BYTES, INFERSCOPE_NVTX,
  // INFERSCOPE_CUPTI over the values in base.
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

  // True when CUPTI activity tracing is running in this process.
  bool cupti_active() const;
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
};

// [SECTION] ScopedRange
// Records a CPU span from construction to destruction, pushes an NVTX range in
// the "inferscope" domain, and (with CUPTI on) an external correlation id so
// that kernels launched inside are attributed to this range.
class INFERSCOPE_API ScopedRange {
 public:
  ScopedRange(Agent& agent, uint32_t name_id, uint64_t request_id = 0);
  ~ScopedRange();
  ScopedRange(const ScopedRange&) = delete;
  ScopedRange& operator=(const ScopedRange&) = delete;

 private:
  Agent* agent_;
  uint32_t name_id_;
  uint64_t request_id_;
  int64_t start_ns_;
  uint16_t depth_;
  bool sampled_;
  uint8_t flags_ = 0;  // what the constructor pushed, so the destructor pops the same
  static constexpr uint8_t kNvtxPushed = 1;
  static constexpr uint8_t kCuptiPushed = 2;
};

}  // namespace inferscope::agent
