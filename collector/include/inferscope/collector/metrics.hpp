// inferscope collector: every Prometheus family the collector exports.
//
// Names and labels are the catalog in docs/metrics.md; the dashboards and the
// recording rules depend on them, so they change only together. The families
// live in one prometheus::Registry that the exposer serves (and that tests and
// the benchmark can Collect() directly).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>

namespace inferscope::collector {

struct CollectorMetrics {
  explicit CollectorMetrics(
      std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>());

  std::shared_ptr<prometheus::Registry> registry;

  // [SECTION] MoE routing, per layer (constant size per model x rank x layer)
  prometheus::Family<prometheus::Counter>& routed_tokens;
  prometheus::Family<prometheus::Counter>& dropped_tokens;
  prometheus::Family<prometheus::Counter>& rerouted_tokens;
  prometheus::Family<prometheus::Counter>& batch_tokens;
  prometheus::Family<prometheus::Gauge>& imbalance;
  prometheus::Family<prometheus::Gauge>& load_cv;
  prometheus::Family<prometheus::Gauge>& max_utilization;
  prometheus::Family<prometheus::Gauge>& min_utilization;
  prometheus::Family<prometheus::Gauge>& layer_experts;  // state=hot|cold|dead
  prometheus::Family<prometheus::Histogram>& expert_utilization;
  prometheus::Family<prometheus::Counter>& episodes_total;
  prometheus::Family<prometheus::Counter>& layer_gpu_seconds;
  prometheus::Family<prometheus::Counter>& gpu_kernel_seconds;  // by attributed="true|false"

  // [SECTION] Per expert: only while in an episode (or all with --per-expert-metrics)
  prometheus::Family<prometheus::Gauge>& expert_episode;
  prometheus::Family<prometheus::Gauge>& expert_utilization_current;
  prometheus::Family<prometheus::Counter>& expert_tokens;
  prometheus::Family<prometheus::Gauge>& expert_load_share;

  // [SECTION] Placement
  prometheus::Family<prometheus::Gauge>& ep_rank_utilization;
  prometheus::Family<prometheus::Gauge>& ep_balancedness;
  prometheus::Family<prometheus::Gauge>& eplb_rank_utilization;  // what-if: EPLB re-placement
  prometheus::Family<prometheus::Gauge>& eplb_balancedness;

  // [SECTION] Expert parallelism, from the ranks' expert_parallel records
  prometheus::Family<prometheus::Counter>& ep_dispatch_seconds;  // model, rank, layer
  prometheus::Family<prometheus::Counter>& ep_compute_seconds;
  prometheus::Family<prometheus::Counter>& ep_combine_seconds;
  prometheus::Family<prometheus::Counter>& ep_idle_seconds;
  prometheus::Family<prometheus::Counter>& ep_rows_computed;
  prometheus::Family<prometheus::Counter>& ep_rows_sent;
  prometheus::Family<prometheus::Counter>& ep_layer_steps;
  prometheus::Family<prometheus::Counter>& ep_straggler_steps;      // model, rank
  prometheus::Family<prometheus::Counter>& ep_joined_steps;         // model
  prometheus::Family<prometheus::Counter>& ep_unjoined_steps;       // model, reason
  prometheus::Family<prometheus::Gauge>& ep_rank_load_utilization;  // model, rank
  prometheus::Family<prometheus::Gauge>& ep_rank_hot;
  prometheus::Family<prometheus::Counter>& ep_hot_rank_episodes;
  // Dispatch traffic (issue 24): per (model, rank, layer) in/out to other ranks,
  // and only the top-K pairs per (model, layer) (docs/metrics.md).
  prometheus::Family<prometheus::Counter>& ep_traffic_rows_out;  // model, rank, layer
  prometheus::Family<prometheus::Counter>& ep_traffic_rows_in;
  prometheus::Family<prometheus::Counter>& ep_traffic_bytes_out;
  prometheus::Family<prometheus::Counter>& ep_traffic_bytes_in;
  prometheus::Family<prometheus::Gauge>& ep_traffic_top_pair;  // model, layer, src, dst (<= K)
  // EPLB advisor (analysis/eplb_advisor.hpp), per model and per (model, layer).
  prometheus::Family<prometheus::Gauge>& eplb_saving;        // model
  prometheus::Family<prometheus::Gauge>& eplb_layer_saving;  // model, layer
  prometheus::Family<prometheus::Gauge>& eplb_move_bytes;    // model
  prometheus::Family<prometheus::Gauge>& eplb_move_stall;    // model
  prometheus::Family<prometheus::Gauge>& eplb_break_even;    // model

  // [SECTION] Memory, prefix cache, stages, requests
  prometheus::Family<prometheus::Gauge>& memory_used;
  prometheus::Family<prometheus::Gauge>& memory_capacity;
  prometheus::Family<prometheus::Counter>& prefix_queried;
  prometheus::Family<prometheus::Counter>& prefix_hit;
  prometheus::Family<prometheus::Histogram>& stage_duration;
  prometheus::Family<prometheus::Counter>& stage_gpu_seconds;  // only stages with measured GPU time
  prometheus::Family<prometheus::Counter>& ssm_checkpoint_evictions;  // model, rank, reused
  prometheus::Family<prometheus::Histogram>& ttft;
  prometheus::Family<prometheus::Histogram>& tpot;
  prometheus::Family<prometheus::Histogram>& e2e;
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& request_tokens;

  // [SECTION] Health of the collector and of the agents
  prometheus::Counter& frames;
  prometheus::Counter& duplicate_frames;
  prometheus::Family<prometheus::Counter>& records;
  prometheus::Counter& bytes_received;
  prometheus::Family<prometheus::Counter>& rejected_frames;
  prometheus::Gauge& connections;
  prometheus::Counter& connections_total;
  prometheus::Gauge& trace_bytes;
  prometheus::Counter& trace_write_errors;
  prometheus::Gauge& trace_segments;
  prometheus::Gauge& trace_oldest_timestamp;
  prometheus::Gauge& trace_max_bytes;
  prometheus::Gauge& trace_max_age;
  prometheus::Family<prometheus::Counter>& trace_deleted_segments;  // reason=size|age
  prometheus::Counter& trace_blocks_written;
  prometheus::Counter& trace_torn_tails_cut;
  prometheus::Family<prometheus::Counter>& label_overflow;  // reason=models|ranks|episode_series
  prometheus::Family<prometheus::Counter>& viewer_dropped_frames;
  prometheus::Family<prometheus::Counter>& agent_dropped;
  prometheus::Family<prometheus::Counter>& agent_sent;
  prometheus::Family<prometheus::Counter>& agent_reconnects;
  prometheus::Family<prometheus::Counter>& agent_unconfirmed;
  prometheus::Family<prometheus::Gauge>& agent_connected;
  prometheus::Family<prometheus::Counter>& agent_gpu_cupti_events;  // event=detach|reattach|...

  prometheus::Counter& rejected(const std::string& reason) {
    return rejected_frames.Add({{"reason", reason}});
  }
  prometheus::Counter& overflow(const std::string& reason) {
    return label_overflow.Add({{"reason", reason}});
  }
};

// Bucket bounds used by the histograms (documented in docs/metrics.md).
const prometheus::Histogram::BucketBoundaries& utilization_buckets();

// Number of time series the registry would expose now (histograms count their
// buckets, +Inf, _sum and _count), the figure operators budget for.
size_t count_series(prometheus::Registry& registry);

}  // namespace inferscope::collector
