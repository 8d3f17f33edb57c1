// inferscope analysis: why an expert-parallel rank is hot.
//
// A rank is hot when its load (rows computed, else the load its placement gives
// it) over the mean rank load is at least hot_rank_threshold (classify.hpp's
// is_hot_rank). hot_rank_cause() names the MoE layers where the rank is over
// that threshold and, in each, the experts placed on the rank that carry the
// largest share of the layer's assignments. A replicated expert counts with its
// load split evenly among its replicas, as compute_rank_load() splits it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "inferscope/analysis/options.hpp"

namespace inferscope::analysis {

struct HotRankLayer {
  uint32_t layer = 0;
  double utilization = 0.0;  // the rank's load in this layer over the mean rank's
};

struct HotRankExpert {
  uint32_t layer = 0;
  uint32_t expert = 0;
  double share = 0.0;  // of the layer's assignments (all ranks)
};

// One MoE layer as the attribution sees it.
struct RankLayerInput {
  uint32_t layer = 0;
  std::span<const double> rank_load;                              // per rank; size = ranks
  std::span<const uint64_t> expert_load;                          // all ranks summed; may be empty
  const std::vector<std::vector<uint32_t>>* placement = nullptr;  // expert -> ranks; may be null
};

struct HotRankCause {
  std::vector<HotRankLayer> layers;    // over the threshold, in input order
  std::vector<HotRankExpert> experts;  // largest share first; experts_per_hot_layer per layer
};

HotRankCause hot_rank_cause(uint32_t rank, std::span<const RankLayerInput> layers,
                            const AnalysisOptions& options);

}  // namespace inferscope::analysis
