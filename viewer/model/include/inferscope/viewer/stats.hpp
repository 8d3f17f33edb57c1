// inferscope viewer: statistics and derived series for the non-timeline views.
//
// Everything here is a pure function of the TraceModel and a time window, so
// each view recomputes only when the window or model generation changes, and
// the numbers are unit-tested against the records they came from.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/analysis/options.hpp"
#include "inferscope/viewer/trace_model.hpp"

namespace inferscope::viewer {

inline constexpr uint32_t kAllRanks = std::numeric_limits<uint32_t>::max();

// Nearest-rank percentile (p in [0, 100]) of unsorted values; 0 for none.
double percentile(std::vector<double> values, double p);

struct Percentiles {
  double p50 = 0, p95 = 0, p99 = 0;
  size_t count = 0;
};
Percentiles percentiles(std::vector<double> values);

// [SECTION] Expert load
struct HeatmapLayer {
  uint32_t layer = 0;                 // model layer index
  std::vector<uint64_t> assignments;  // per expert
  uint64_t total = 0;
  uint64_t dropped = 0;
  uint64_t tokens = 0;
  double imbalance = 0;      // max / mean load (analysis::compute_layer_stats)
  double cv = 0;             // coefficient of variation of the load
  std::vector<uint8_t> hot;  // per expert: in a hot-expert episode in the window
  double share(size_t e) const { return total ? double(assignments[e]) / double(total) : 0.0; }
  // Share relative to a fair share (1.0 = exactly fair).
  double utilization(size_t e) const { return share(e) * double(assignments.size()); }
};

struct Heatmap {
  uint32_t experts = 0;              // widest layer
  std::vector<HeatmapLayer> layers;  // MoE layers with data, by layer index
  double max_share = 0;
};

// Layer x expert loads over [t0, t1] for one rank (or kAllRanks). A cell is
// marked hot if an open-in-window hot_expert alert names it, or, without any
// alerts for the layer, if it is hot by the analysis options (utilization >= hot_threshold).
Heatmap expert_heatmap(const TraceModel& m, int64_t t0, int64_t t1, uint32_t rank = kAllRanks,
                       const analysis::AnalysisOptions& options = {});

// Load per EP rank under the placement (expert_to_rank, one rank per expert), one
// entry per heatmap layer in the same order; utilization 1.0 = the rank's fair part.
std::vector<analysis::RankLoad> rank_loads(const Heatmap& h,
                                           const std::vector<uint32_t>& expert_to_rank);

struct Series {
  std::vector<double> t;  // seconds relative to the model's min_ns
  std::vector<double> v;
};
// An expert's share of its layer's assignments in `bins` equal bins over [t0, t1]
// (NaN where the layer had no assignments in a bin).
Series expert_share_series(const TraceModel& m, uint32_t layer, uint32_t expert, int64_t t0,
                           int64_t t1, int bins, uint32_t rank = kAllRanks);

// [SECTION] Memory and cache
struct MemorySeries {
  std::vector<double> t;                                         // seconds from min_ns
  std::array<std::vector<double>, wire::kMemoryKindCount> used;  // bytes, summed over ranks
  std::array<std::vector<double>, wire::kMemoryKindCount> capacity;
  bool has_kind[wire::kMemoryKindCount] = {};
};
// Step-function samples at `points` instants over [t0, t1] (last value at or before).
MemorySeries memory_series(const TraceModel& m, int64_t t0, int64_t t1, int points,
                           uint32_t rank = kAllRanks);

struct HitRateSeries {
  std::vector<double> t;
  std::vector<double> attention, ssm;  // hit / queried per bin, NaN where nothing queried
  uint64_t attention_queried = 0, attention_hit = 0, ssm_queried = 0, ssm_hit = 0;  // totals
};
HitRateSeries prefix_hit_rate(const TraceModel& m, int64_t t0, int64_t t1, int bins,
                              uint32_t rank = kAllRanks);

// [SECTION] Stages and requests
struct RequestRow {
  uint32_t source = 0;
  uint32_t rank = 0;
  uint64_t request_id = 0;
  int64_t arrival_ns = 0, finish_ns = 0;
  double ttft_s = std::numeric_limits<double>::quiet_NaN();  // no first token
  double tpot_s = std::numeric_limits<double>::quiet_NaN();  // fewer than 2 output tokens
  double e2e_s = 0;
  uint32_t prompt = 0, output = 0, images = 0, cached = 0;
  wire::RequestStatus status = wire::RequestStatus::kOk;
  std::array<double, wire::kStageCount> stage_s{};  // summed stage time
};
std::vector<RequestRow> request_rows(const TraceModel& m, int64_t t0 = INT64_MIN,
                                     int64_t t1 = INT64_MAX);

struct StageStats {
  std::array<Percentiles, wire::kStageCount> per_stage;  // seconds per request
  Percentiles ttft, tpot, e2e;
};
StageStats stage_stats(const std::vector<RequestRow>& rows);

}  // namespace inferscope::viewer
