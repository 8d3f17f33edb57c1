// inferscope viewer: expert parallelism, per EP rank, over a time window.
//
// From the ranks' expert_parallel records: each rank's share of the rows
// computed, its dispatch / expert compute / combine time per step and its idle
// time (joined on (step, layer): the slowest rank's compute minus its own, as
// the collector does). From expert_load records and the hello's placement:
// each rank's load now and under an EPLB-style re-placement (the collector's
// planner), and which experts make a hot rank hot. The arithmetic is the analysis
// library's, the collector's own: a replicated expert's load is split among its replicas.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/analysis/eplb_advisor.hpp"
#include "inferscope/analysis/hot_rank.hpp"
#include "inferscope/analysis/options.hpp"
#include "inferscope/viewer/trace_model.hpp"

namespace inferscope::viewer {

struct EpRankRow {
  uint32_t rank = 0;
  uint64_t steps = 0;  // distinct steps with a record from this rank
  uint64_t rows_computed = 0, rows_sent = 0;
  double rows_share = 0;        // of all ranks' rows computed
  double rows_utilization = 0;  // rows_share x ranks (1.0 = fair)
  // Per step (summed over the MoE layers), milliseconds.
  double dispatch_ms = 0, compute_ms = 0, combine_ms = 0, idle_ms = 0;
  uint64_t straggler = 0;  // joined (step, layer) pairs where it was the slowest
  double load_now = 0;     // utilization under the current placement (expert loads)
  double load_eplb = 0;    // ... under the EPLB what-if
};

struct EpHotRank {
  using Layer = analysis::HotRankLayer;
  using Expert = analysis::HotRankExpert;  // share: of the layer's assignments (all ranks)
  uint32_t rank = 0;
  double utilization = 0;
  std::vector<Layer> layers;    // where the rank is over the threshold
  std::vector<Expert> experts;  // on the rank, in those layers, largest first (3 per layer)
};

// One MoE layer's dispatch traffic over the window (expert_parallel revision 2):
// matrix[src * ranks + dst] = rows src sent to dst's experts; the diagonal is
// kept local. Combine is the transpose.
struct EpTrafficLayer {
  uint32_t layer = 0;
  std::vector<uint64_t> matrix;
  uint64_t max_pair = 0;  // largest off-diagonal cell: the heatmap's scale
};

struct EpReport {
  uint32_t ranks = 0;   // world size (hellos) or highest rank seen + 1
  uint64_t joined = 0;  // (step, layer) pairs every rank reported
  bool has_ep_records = false;
  bool has_placement = false;
  double balancedness_now = 0, balancedness_eplb = 0;  // mean / max rank load, all MoE layers
  uint32_t eplb_redundant = 0;
  std::vector<EpRankRow> rows;          // by rank
  std::vector<EpHotRank> hot;           // hottest first
  std::vector<EpTrafficLayer> traffic;  // by layer; worlds up to 256 ranks
  // The EPLB advisor on the window (needs records and a placement; the expert
  // size is unknown here, so only the saving, not the cost or the horizon).
  bool has_advice = false;
  analysis::Advice advice;
};

// One MoE layer's dispatch traffic over time: the window cut into `buckets` equal
// slices; sent[rank * buckets + b] = rows the rank sent to OTHER ranks' experts in
// slice b (what the all-to-all carries; rows kept local are not traffic). The EP
// view draws it as a rank x time strip under the matrix, so a rank whose traffic
// jumps when an episode opens stands out.
struct EpTrafficOverTime {
  uint32_t layer = 0;
  uint32_t ranks = 0;
  uint32_t buckets = 0;
  int64_t t0 = 0, t1 = 0;
  std::vector<uint64_t> sent;
  uint64_t max_cell = 0;  // the strip's scale
};
// Empty (ranks == 0) when the layer has no traffic rows in [t0, t1]. buckets: 1..1024.
EpTrafficOverTime ep_traffic_over_time(const TraceModel& m, int64_t t0, int64_t t1, uint32_t layer,
                                       uint32_t buckets);

// hot_threshold: rank utilization (rows, else placement load) that makes it hot,
// by default the analysis options' (the collector's) hot_rank_threshold;
// eplb_redundant < 0: one redundant slot per rank.
EpReport ep_report(const TraceModel& m, int64_t t0, int64_t t1,
                   double hot_threshold = analysis::AnalysisOptions{}.hot_rank_threshold,
                   int eplb_redundant = -1);

}  // namespace inferscope::viewer
