// inferscope collector: observing expert parallelism, per model.
//
// From the ranks' ExpertParallelStep records: all-to-all (dispatch, combine),
// expert compute and row counters per (rank, MoE layer); idle time and
// stragglers from joining the ranks on (step, layer) (ep_join.hpp).
//
// Hot ranks: each window, a rank's load is its rows computed summed over the
// MoE layers (without EP records: the load the expert placement gives it from
// the expert_load records). Utilization = load / mean rank load. A rank whose
// utilization stays >= hot_rank_threshold for `windows` windows opens a hot-rank
// episode (the expert detector's hysteresis: it closes below
// hot_rank_clear_threshold). The episode names the layers where the rank is
// over the threshold and, in those layers, the experts on the rank that carry
// the largest share of the layer's assignments (expert_load + placement); the
// join, the idle arithmetic and the attribution are the analysis library's
// (inferscope/analysis/{ep_join,hot_rank}.hpp), this class adds the metrics and episodes.
//
// Traffic (issue 24): each record's rows_to_rank is its rank's row of the layer's
// dispatch matrix. Per (rank, layer) counters take the in/out totals; the window's
// full matrix per layer (bounded: worlds up to ep_matrix_max_ranks) only feeds the
// top-K pairs gauge and is then dropped (the records themselves are in the trace
// store). The EPLB advisor (analysis/eplb_advisor.hpp) runs at window close on the
// window's per-expert loads, the planned re-placement and the measured compute.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "inferscope/analysis/ep_join.hpp"
#include "inferscope/analysis/ep_traffic.hpp"
#include "inferscope/analysis/eplb_advisor.hpp"
#include "inferscope/analysis/hot_rank.hpp"
#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/collector/detector.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

// A hot rank and who is responsible, for logs, tests and the viewer API.
struct HotRank {
  using Expert = analysis::HotRankExpert;  // share: of the layer's assignments in the window
  using Layer = analysis::HotRankLayer;    // utilization: peak over the episode
  uint32_t rank = 0;
  int64_t start_ns = 0;
  double utilization = 0.0;     // peak over the episode
  std::vector<Layer> layers;    // where it was over the threshold, by layer
  std::vector<Expert> experts;  // largest first, at most 3 per hot layer, last hot window
};

// What the aggregator knows about one MoE layer when a window closes.
struct EpLayerWindow {
  uint32_t layer = 0;
  std::span<const uint64_t> expert_load;                          // all ranks summed; may be empty
  const std::vector<std::vector<uint32_t>>* placement = nullptr;  // expert -> ranks; may be null
  const analysis::RankLoad* rank_load = nullptr;                // under the placement; may be null
  const std::vector<std::vector<uint32_t>>* planned = nullptr;  // EPLB what-if; may be null
};

class EpRanks {
 public:
  EpRanks(const AggregatorOptions& options, CollectorMetrics& metrics, std::string model);
  ~EpRanks();

  // One record from `rank` of a world of world_size ranks.
  void on_step(uint32_t world_size, uint32_t rank, const wire::ExpertParallelStep& s);

  // Closes the window [start_ns, end_ns); hot-rank openings and closings go to alerts.
  void close_window(int64_t start_ns, int64_t end_ns, const std::vector<EpLayerWindow>& layers,
                    uint32_t placement_ranks, std::vector<wire::AlertEpisode>& alerts);

  std::vector<HotRank> hot_ranks() const;
  // The last closed window's heaviest dispatch pairs of `layer` (<= ep_top_pairs).
  std::vector<analysis::TrafficPair> top_pairs(uint32_t layer) const;
  // The last closed window's advice (empty layers: no window with EP records and placement yet).
  const analysis::Advice& advice() const { return advice_; }
  uint64_t joined() const { return joined_; }
  const analysis::EpStepJoin& join() const { return join_; }

 private:
  struct Cell;  // per (rank, layer) counters
  struct RankSeries;
  Cell& cell(uint32_t rank, uint32_t layer);
  RankSeries& rank_series(uint32_t rank);

  AggregatorOptions options_;
  AggregatorOptions rank_options_;  // the detector's thresholds for ranks
  CollectorMetrics& metrics_;
  std::string model_;
  analysis::EpStepJoin join_;
  std::map<std::pair<uint32_t, uint32_t>, std::unique_ptr<Cell>> cells_;
  std::map<uint32_t, std::unique_ptr<RankSeries>> ranks_;
  std::map<uint32_t, std::vector<uint64_t>>
      rows_acc_;  // rank -> rows computed per layer, this window
  bool rows_seen_ = false;
  std::unique_ptr<LayerDetector> detector_;  // "experts" are ranks
  std::map<uint32_t, HotRank> open_;         // rank -> open episode
  std::map<uint32_t, wire::AlertEpisode> open_alert_;
  uint64_t joined_ = 0;
  uint64_t reported_evicted_ = 0;

  // [SECTION] Traffic and advisor state, per window
  struct LayerAcc {
    std::vector<uint64_t> matrix;     // matrix_ranks_^2, src-major; empty above the bound
    std::vector<int64_t> compute_ns;  // per rank
    std::vector<uint64_t> passes;     // per rank
  };
  void close_traffic(int64_t start_ns, int64_t end_ns);
  void close_advice(int64_t start_ns, int64_t end_ns, const std::vector<EpLayerWindow>& layers,
                    uint32_t placement_ranks);
  uint32_t matrix_ranks_ = 0;  // the world the accumulators are sized for
  std::map<uint32_t, LayerAcc> layer_acc_;
  struct PairSeries {
    analysis::TrafficPair pair;
    prometheus::Gauge* gauge = nullptr;
  };
  std::map<uint32_t, std::vector<PairSeries>> pair_series_;  // layer -> <= K
  std::map<uint32_t, std::vector<analysis::TrafficPair>> last_pairs_;
  std::map<uint32_t, prometheus::Gauge*> layer_saving_;
  analysis::Advice advice_;
};

}  // namespace inferscope::collector
