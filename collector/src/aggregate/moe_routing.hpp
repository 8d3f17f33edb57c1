// Consumer: MoE routing per (model, rank, layer) from expert_load records.
// Routed / dropped / rerouted / batch token counters; per window the layer's
// statistics (analysis::compute_layer_stats: imbalance, CV, utilization) and the
// expert detector's hot / cold / dead / drop-burst episodes, as gauges, per-expert
// series while in an episode (bounded by max_episode_series) and alerts.
#pragma once

#include <array>

#include "consumer.hpp"
#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/collector/detector.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"

namespace inferscope::collector {

class MoeRouting final : public RecordConsumer {
 public:
  MoeRouting(const AggregatorOptions& options, CollectorMetrics& metrics, AlertOut alerts);
  ~MoeRouting() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;
  void close_window(ModelState& model, int64_t start_ns, int64_t end_ns) override;
  void on_rank_left(const ModelState& model, const RankState& rank, int64_t end_ns) override;

  // Whether the rank has sent expert_load records for the layer (kernel time
  // is kept only for such layers).
  bool has_layer(const ModelState& model, const RankState& rank, uint32_t layer) const;

  struct Snapshot {
    uint32_t experts = 0;
    uint64_t windows = 0;
    analysis::LayerStats last;
  };
  std::optional<Snapshot> layer(const ModelState& model, const RankState& rank,
                                uint32_t layer) const;

 private:
  struct Layer;
  struct Rank {
    std::vector<std::unique_ptr<Layer>> layers;  // by layer index; null: none seen
  };
  Layer* make_layer(const ModelState& model, const RankState& rank, uint32_t index,
                    uint32_t experts);
  void close_layer(const ModelState& model, const RankState& rank, uint32_t index, Layer& layer,
                   int64_t start_ns, int64_t end_ns);
  void publish(const ModelState& model, const RankState& rank, Layer& layer, uint32_t index,
               const EpisodeEvent& ev);

  const AggregatorOptions& options_;
  CollectorMetrics& metrics_;
  AlertOut alerts_;
  RankTable<Rank> ranks_;
  size_t episode_series_ = 0;
};

}  // namespace inferscope::collector
