#include "inferscope/collector/metrics.hpp"

namespace inferscope::collector {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

template <typename Builder>
auto& reg(Builder&& b, prometheus::Registry& r, const char* name, const char* help) {
  return b.Name(name).Help(help).Register(r);
}

}  // namespace

const prometheus::Histogram::BucketBoundaries& utilization_buckets() {
  static const prometheus::Histogram::BucketBoundaries b{0,   0.1, 0.25, 0.5, 0.75, 1,
                                                         1.5, 2,   3,    5,   10};
  return b;
}

CollectorMetrics::CollectorMetrics(std::shared_ptr<prometheus::Registry> r)
    : registry(std::move(r)),
      routed_tokens(
          reg(BuildCounter(), *registry, "inferscope_moe_routed_tokens_total",
              "Token-to-expert assignments made by the router (after top-k, before capacity).")),
      dropped_tokens(reg(BuildCounter(), *registry, "inferscope_moe_dropped_tokens_total",
                         "Assignments dropped because the expert was over capacity.")),
      rerouted_tokens(reg(BuildCounter(), *registry, "inferscope_moe_rerouted_tokens_total",
                          "Assignments moved to a later expert choice because of capacity.")),
      batch_tokens(reg(BuildCounter(), *registry, "inferscope_moe_batch_tokens_total",
                       "Tokens in the batches that passed through the MoE layer.")),
      imbalance(reg(BuildGauge(), *registry, "inferscope_moe_layer_imbalance_ratio",
                    "Max over mean expert load in the last window (1 = perfectly balanced).")),
      load_cv(reg(BuildGauge(), *registry, "inferscope_moe_layer_load_cv",
                  "Coefficient of variation of expert load in the last window.")),
      max_utilization(reg(BuildGauge(), *registry, "inferscope_moe_layer_max_utilization_ratio",
                          "Highest expert utilization (load / ideal load) in the last window.")),
      min_utilization(reg(BuildGauge(), *registry, "inferscope_moe_layer_min_utilization_ratio",
                          "Lowest expert utilization (load / ideal load) in the last window.")),
      layer_experts(reg(BuildGauge(), *registry, "inferscope_moe_layer_experts",
                        "Experts of the layer currently in a hot, cold or dead episode.")),
      expert_utilization(
          reg(BuildHistogram(), *registry, "inferscope_moe_expert_utilization_ratio",
              "Per-expert utilization ratios, one observation per expert per window.")),
      episodes_total(reg(BuildCounter(), *registry, "inferscope_moe_expert_episodes_total",
                         "Hot / cold / dead expert and drop-burst episodes started.")),
      layer_gpu_seconds(reg(BuildCounter(), *registry, "inferscope_moe_layer_gpu_seconds_total",
                            "GPU kernel time attributed to the MoE layer's range.")),
      gpu_kernel_seconds(reg(BuildCounter(), *registry, "inferscope_gpu_kernel_seconds_total",
                             "GPU kernel time traced (CUPTI), by whether a range of the host "
                             "enclosed the kernel's launch (attributed).")),
      expert_episode(reg(
          BuildGauge(), *registry, "inferscope_moe_expert_episode",
          "1 while the expert is in an episode of this kind; the series is removed when it ends.")),
      expert_utilization_current(reg(BuildGauge(), *registry,
                                     "inferscope_moe_expert_utilization_current_ratio",
                                     "Utilization of an expert in an episode, last window.")),
      expert_tokens(reg(BuildCounter(), *registry, "inferscope_moe_expert_tokens_total",
                        "Assignments per expert (only with --per-expert-metrics).")),
      expert_load_share(reg(BuildGauge(), *registry, "inferscope_moe_expert_load_share",
                            "Expert's share of the layer's assignments, last window (only with "
                            "--per-expert-metrics).")),
      ep_rank_utilization(reg(BuildGauge(), *registry, "inferscope_moe_ep_rank_utilization_ratio",
                              "Load of a physical EP rank under the expert placement over the mean "
                              "rank load, last window.")),
      ep_balancedness(
          reg(BuildGauge(), *registry, "inferscope_moe_ep_balancedness_ratio",
              "Mean over max EP rank load under the placement, last window (1 = balanced).")),
      eplb_rank_utilization(reg(BuildGauge(), *registry,
                                "inferscope_moe_ep_eplb_rank_utilization_ratio",
                                "What-if: EP rank load over the mean under an EPLB re-placement "
                                "planned from the last window (redundant slots).")),
      eplb_balancedness(
          reg(BuildGauge(), *registry, "inferscope_moe_ep_eplb_balancedness_ratio",
              "What-if: mean over max EP rank load under the EPLB re-placement, last window.")),
      ep_dispatch_seconds(reg(
          BuildCounter(), *registry, "inferscope_ep_dispatch_seconds_total",
          "Time in the dispatch all-to-all of the MoE layer (includes waiting for other ranks).")),
      ep_compute_seconds(reg(BuildCounter(), *registry,
                             "inferscope_ep_expert_compute_seconds_total",
                             "Time this rank's experts computed the rows they hold.")),
      ep_combine_seconds(reg(BuildCounter(), *registry, "inferscope_ep_combine_seconds_total",
                             "Time in the combine all-to-all of the MoE layer (includes waiting "
                             "for the slowest rank).")),
      ep_idle_seconds(reg(BuildCounter(), *registry, "inferscope_ep_idle_seconds_total",
                          "Slowest rank's expert compute minus this rank's, summed over joined "
                          "(step, layer) pairs.")),
      ep_rows_computed(reg(BuildCounter(), *registry, "inferscope_ep_rows_computed_total",
                           "Assignment rows this rank's experts computed (its own and received).")),
      ep_rows_sent(reg(BuildCounter(), *registry, "inferscope_ep_rows_sent_total",
                       "Assignment rows this rank sent to experts on other ranks.")),
      ep_layer_steps(reg(BuildCounter(), *registry, "inferscope_ep_layer_steps_total",
                         "expert_parallel records: MoE layer passes of this rank.")),
      ep_straggler_steps(
          reg(BuildCounter(), *registry, "inferscope_ep_straggler_steps_total",
              "Joined (step, layer) pairs in which this rank's expert compute was the slowest.")),
      ep_joined_steps(reg(BuildCounter(), *registry, "inferscope_ep_joined_steps_total",
                          "(step, layer) pairs for which every rank of the model reported.")),
      ep_unjoined_steps(reg(BuildCounter(), *registry, "inferscope_ep_unjoined_steps_total",
                            "expert_parallel pairs not joined, by reason (incomplete, duplicate, "
                            "rank_out_of_world).")),
      ep_rank_load_utilization(reg(BuildGauge(), *registry, "inferscope_ep_rank_utilization_ratio",
                                   "EP rank's rows computed (else its load under the placement) "
                                   "over the mean rank's, last window.")),
      ep_rank_hot(reg(BuildGauge(), *registry, "inferscope_ep_rank_hot",
                      "1 while the EP rank is in a hot-rank episode.")),
      ep_hot_rank_episodes(reg(BuildCounter(), *registry, "inferscope_ep_hot_rank_episodes_total",
                               "Hot-rank episodes started.")),
      ep_traffic_rows_out(
          reg(BuildCounter(), *registry, "inferscope_ep_traffic_rows_out_total",
              "Dispatch rows this rank sent to other ranks (its traffic matrix row, diagonal "
              "left out); it receives as many back in combine.")),
      ep_traffic_rows_in(
          reg(BuildCounter(), *registry, "inferscope_ep_traffic_rows_in_total",
              "Dispatch rows other ranks sent this rank (its traffic matrix column); it sends as "
              "many back in combine.")),
      ep_traffic_bytes_out(reg(BuildCounter(), *registry, "inferscope_ep_traffic_bytes_out_total",
                               "Bytes of the dispatch rows this rank sent to other ranks.")),
      ep_traffic_bytes_in(reg(BuildCounter(), *registry, "inferscope_ep_traffic_bytes_in_total",
                              "Bytes of the dispatch rows other ranks sent this rank.")),
      ep_traffic_top_pair(
          reg(BuildGauge(), *registry, "inferscope_ep_traffic_top_pair_rows_per_second",
              "Dispatch rows per second from src to dst, last window; only the layer's top-K "
              "pairs (--ep-top-pairs) have a series.")),
      eplb_saving(reg(BuildGauge(), *registry, "inferscope_ep_eplb_saving_seconds_per_step",
                      "EPLB advisor: predicted MoE time saved per step by a re-placement "
                      "(straggler compute minus predicted), last window.")),
      eplb_layer_saving(reg(BuildGauge(), *registry,
                            "inferscope_ep_eplb_layer_saving_seconds_per_step",
                            "EPLB advisor: the same per MoE layer pass.")),
      eplb_move_bytes(reg(BuildGauge(), *registry, "inferscope_ep_eplb_move_bytes",
                          "EPLB advisor: expert weight bytes the busiest rank must load "
                          "(--eplb-expert-bytes; absent when unknown).")),
      eplb_move_stall(reg(BuildGauge(), *registry, "inferscope_ep_eplb_move_stall_seconds",
                          "EPLB advisor: stall while moving them (--eplb-move-bandwidth).")),
      eplb_break_even(reg(BuildGauge(), *registry, "inferscope_ep_eplb_break_even_seconds",
                          "EPLB advisor: serving time at the current step rate after which the "
                          "re-placement has paid for its stall (+Inf: it saves nothing).")),
      memory_used(
          reg(BuildGauge(), *registry, "inferscope_memory_used_bytes", "Memory in use by kind.")),
      memory_capacity(reg(BuildGauge(), *registry, "inferscope_memory_capacity_bytes",
                          "Memory reserved for the kind.")),
      prefix_queried(reg(BuildCounter(), *registry, "inferscope_prefix_cache_queried_tokens_total",
                         "Prompt tokens looked up in the prefix cache, by layer kind.")),
      prefix_hit(reg(BuildCounter(), *registry, "inferscope_prefix_cache_hit_tokens_total",
                     "Prompt tokens served from the prefix cache, by layer kind.")),
      stage_duration(reg(BuildHistogram(), *registry, "inferscope_stage_duration_seconds",
                         "Wall time of a multimodal stage per request.")),
      stage_gpu_seconds(reg(BuildCounter(), *registry, "inferscope_stage_gpu_seconds_total",
                            "GPU kernel time attributed to the stage (only stages whose "
                            "GPU time is measured).")),
      ssm_checkpoint_evictions(
          reg(BuildCounter(), *registry, "inferscope_ssm_checkpoint_evictions_total",
              "SSM state checkpoints evicted from a full pool, by whether they were ever "
              "restored.")),
      ttft(reg(BuildHistogram(), *registry, "inferscope_request_ttft_seconds",
               "Time to first token.")),
      tpot(reg(BuildHistogram(), *registry, "inferscope_request_time_per_output_token_seconds",
               "(finish - first token) / (output tokens - 1).")),
      e2e(reg(BuildHistogram(), *registry, "inferscope_request_e2e_seconds", "Arrival to finish.")),
      requests(reg(BuildCounter(), *registry, "inferscope_requests_total",
                   "Finished requests by status.")),
      request_tokens(reg(BuildCounter(), *registry, "inferscope_request_tokens_total",
                         "Tokens of finished requests by kind (prompt, output, image, cached).")),
      frames(reg(BuildCounter(), *registry, "inferscope_collector_frames_total",
                 "Frames accepted from agents.")
                 .Add({})),
      duplicate_frames(
          reg(BuildCounter(), *registry, "inferscope_collector_duplicate_frames_total",
              "Frames an agent wrote again after a reconnect that were already applied: "
              "skipped, so no record is counted twice.")
              .Add({})),
      records(reg(BuildCounter(), *registry, "inferscope_collector_records_total",
                  "Records accepted from agents, by kind.")),
      bytes_received(reg(BuildCounter(), *registry, "inferscope_collector_bytes_received_total",
                         "Bytes read from agent connections.")
                         .Add({})),
      rejected_frames(reg(BuildCounter(), *registry, "inferscope_collector_rejected_frames_total",
                          "Frames or connections rejected, by reason; the connection is closed.")),
      connections(reg(BuildGauge(), *registry, "inferscope_collector_connections",
                      "Agent connections open now.")
                      .Add({})),
      connections_total(reg(BuildCounter(), *registry, "inferscope_collector_connections_total",
                            "Agent connections accepted.")
                            .Add({})),
      trace_bytes(reg(BuildGauge(), *registry, "inferscope_collector_trace_bytes",
                      "Bytes of trace segments on disk.")
                      .Add({})),
      trace_write_errors(
          reg(BuildCounter(), *registry, "inferscope_collector_trace_write_errors_total",
              "Frames that could not be written to the trace store (disk full, I/O error).")
              .Add({})),
      trace_segments(reg(BuildGauge(), *registry, "inferscope_collector_trace_segments",
                         "Trace segment files on disk.")
                         .Add({})),
      trace_oldest_timestamp(
          reg(BuildGauge(), *registry, "inferscope_collector_trace_oldest_timestamp_seconds",
              "Time of the oldest stored record (agents' monotonic clock); 0 when empty.")
              .Add({})),
      trace_max_bytes(reg(BuildGauge(), *registry, "inferscope_collector_trace_max_bytes",
                          "Size bound of the trace store (--trace-max-bytes).")
                          .Add({})),
      trace_max_age(reg(BuildGauge(), *registry, "inferscope_collector_trace_max_age_seconds",
                        "Age bound of the trace store (--trace-max-age); 0 = none.")
                        .Add({})),
      trace_deleted_segments(reg(BuildCounter(), *registry,
                                 "inferscope_collector_trace_deleted_segments_total",
                                 "Trace segments deleted by retention, by reason (size, age).")),
      trace_blocks_written(reg(BuildCounter(), *registry,
                               "inferscope_collector_trace_blocks_written_total",
                               "Compressed blocks appended to trace segments.")
                               .Add({})),
      trace_torn_tails_cut(
          reg(BuildCounter(), *registry, "inferscope_collector_trace_torn_tails_cut_total",
              "Segments whose torn last block (a crash mid-write) was cut at start.")
              .Add({})),
      label_overflow(
          reg(BuildCounter(), *registry, "inferscope_collector_label_overflow_total",
              "Records or series not exported because a cardinality bound was reached.")),
      viewer_dropped_frames(reg(BuildCounter(), *registry,
                                "inferscope_collector_viewer_dropped_frames_total",
                                "Frames not sent to a slow viewer (its queue was full).")),
      agent_dropped(reg(BuildCounter(), *registry, "inferscope_agent_records_dropped_total",
                        "Records the agent dropped (buffers full, collector away), by kind.")),
      agent_sent(reg(BuildCounter(), *registry, "inferscope_agent_records_sent_total",
                     "Records the agent sent.")),
      agent_reconnects(reg(BuildCounter(), *registry, "inferscope_agent_reconnects_total",
                           "Times the agent reconnected to the collector.")),
      agent_unconfirmed(
          reg(BuildCounter(), *registry, "inferscope_agent_records_unconfirmed_total",
              "Records the agent sent on a connection that broke before the collector "
              "acknowledged them (kill -9, crash): they may or may not have been processed.")),
      agent_connected(reg(BuildGauge(), *registry, "inferscope_agent_connected",
                          "Agent connections of this model and rank open now.")),
      agent_gpu_cupti_events(reg(
          BuildCounter(), *registry, "inferscope_agent_gpu_cupti_events_total",
          "CUPTI detached after a GPU trace window (detach), attached again for a later one "
          "(reattach), or a detach or re-attach that failed (detach_error), as the agent reports "
          "(process-wide in the agent).")) {
  viewer_dropped_frames.Add({{"reason", "queue_full"}});
}

size_t count_series(prometheus::Registry& registry) {
  size_t n = 0;
  for (const auto& family : registry.Collect()) {
    for (const auto& m : family.metric) {
      if (family.type == prometheus::MetricType::Histogram)
        n += m.histogram.bucket.size() + 2;  // buckets incl. +Inf, _sum, _count
      else
        n += 1;
    }
  }
  return n;
}

}  // namespace inferscope::collector
