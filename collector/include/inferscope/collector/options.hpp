// inferscope collector: configuration shared by the daemon, the tests and the benchmark.
//
// Every limit that bounds memory, label cardinality or disk lives here with its
// default, so docs/collector.md and the CLI describe one set of numbers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "inferscope/analysis/options.hpp"
#include "inferscope/collector/placement.hpp"

namespace inferscope::collector {

// Sliding-window aggregation and episode detection (hot / cold / dead experts, drop bursts).
// The thresholds (hot_threshold, hot_clear_threshold, cold_*, windows (--hot-windows),
// drop_burst_threshold, hot_rank_*) are the analysis library's, shared with the viewer
// and the engine's summary: this struct adds the collector's window, placement and bounds.
struct AggregatorOptions : analysis::AnalysisOptions {
  int64_t window_ns = 10'000'000'000;  // --window
  bool per_expert_metrics = false;     // export every expert's series (small models only)
  std::optional<Placement> placement;  // --placement FILE; overrides the hello's expert_to_rank

  // Expert parallelism (docs/expert-parallel.md, "Observing it").
  int64_t eplb_redundant = -1;    // --eplb-redundant: EPLB what-if extra slots; -1 = one per rank
  uint64_t ep_join_steps = 1024;  // steps held while waiting for every rank's record
  uint32_t ep_top_pairs = 8;      // --ep-top-pairs: traffic pairs exported per layer (<= 64)
  uint32_t ep_matrix_max_ranks = 256;        // larger worlds: in/out totals only, no pairs
  uint64_t eplb_expert_bytes = 0;            // --eplb-expert-bytes: one expert's weights; 0 unknown
  double eplb_move_bytes_per_second = 25e9;  // --eplb-move-bandwidth

  // Label-cardinality bounds: records beyond them are counted, not exported.
  size_t max_models = 16;
  size_t max_ranks = 1024;           // per model
  size_t max_episode_series = 4096;  // experts with per-expert episode series at once
  size_t max_recent_alerts = 256;    // replayed to a viewer that connects
};

// Per-connection limits on what one agent may make the collector hold.
struct ConnectionLimits {
  uint32_t max_frame_bytes = 4u << 20;
  size_t max_strings = 65536;           // interned strings per connection
  size_t max_string_bytes = 16u << 20;  // their total size
  // Slow-loris guard: a connection must send its hello within hello_timeout, and a
  // frame whose first byte arrived must be complete within frame_timeout.
  std::chrono::milliseconds hello_timeout{10'000};
  std::chrono::milliseconds frame_timeout{10'000};
  // Memory for frames still arriving (docs/security.md). Before its hello a
  // connection may send frames of at most this size: an agent's first frame is
  // its hello plus interned strings, within the agent's 256 KiB frame budget.
  uint32_t max_frame_bytes_before_hello = 512u << 10;
  // All connections together may hold this much for frames still arriving
  // (--max-frame-buffer-bytes) ...
  size_t max_buffered_bytes = 64u << 20;
  // ... of which connections that have not completed a hello this much.
  size_t max_buffered_bytes_before_hello = 16u << 20;
};

// GPU captures the collector asks agents for (docs/gpu.md): when it opens a
// hot-expert, hot-rank, dead-expert or token-drop episode, and on
// POST /capture at the loopback-only capture endpoint.
struct CaptureOptions {
  std::string http;         // --capture-http 127.0.0.1:PORT (loopback only); "" = no endpoint
  bool on_episodes = true;  // --no-capture-on-episodes turns the automatic ones off
  uint32_t steps = 8;       // --capture-steps: steps per capture when none are asked for
  int64_t cooldown_ns = 30'000'000'000;  // --capture-cooldown: per agent, collector side
  int64_t busy_ns = 2'000'000'000;       // a sent capture counts as running this long
  // A capture not in the trace store this long after its episode opened is counted in
  // inferscope_collector_capture_not_landed_total; at most this many are tracked at once.
  int64_t landing_timeout_ns = 60'000'000'000;
  size_t max_pending_landings = 256;
};

struct CollectorOptions {
  std::vector<std::string> listen;  // tcp://host:port or unix:///path; default tcp://127.0.0.1:7431
  std::string metrics = "127.0.0.1:9464";  // "" = no Prometheus exposer
  std::string viewer = "127.0.0.1:7433";   // "" = no viewer API
  std::string trace_dir;                   // "" = no trace store
  uint64_t trace_max_bytes = 1ull << 30;
  uint64_t trace_segment_bytes = 0;            // 0: max_bytes / 8, clamped to [64 KiB, 64 MiB]
  int64_t trace_max_age_ns = 0;                // 0 = no age bound (--trace-max-age 24h)
  uint32_t trace_block_bytes = 256u << 10;     // a block closes at this much raw frame data ...
  int64_t trace_block_age_ns = 1'000'000'000;  // ... or this long after its first frame
  std::string auth_token;                      // "" = no authentication
  size_t max_connections = 256;                // agent connections at once
  size_t max_viewers = 16;
  size_t viewer_queue_bytes = 16u << 20;  // per viewer; beyond it frames are dropped
  std::chrono::milliseconds tick{200};    // window clock and trace flush timer; 0 = off
  ConnectionLimits limits;
  AggregatorOptions aggregation;
  CaptureOptions capture;
};

// "10s", "200ms", "1m", "500us", "3" (seconds). nullopt when malformed or <= 0.
std::optional<int64_t> parse_duration_ns(std::string_view text);

}  // namespace inferscope::collector
