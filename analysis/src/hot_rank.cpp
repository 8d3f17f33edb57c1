#include "inferscope/analysis/hot_rank.hpp"

#include <algorithm>

#include "inferscope/analysis/classify.hpp"

namespace inferscope::analysis {

namespace {

bool by_share(const HotRankExpert& a, const HotRankExpert& b) {
  return a.share > b.share;
}

// The experts with a replica on `rank`, largest share of the layer first.
void experts_on_rank(uint32_t rank, const RankLayerInput& in, size_t limit,
                     std::vector<HotRankExpert>& out) {
  if (in.placement == nullptr || in.expert_load.empty()) return;
  uint64_t layer_total = 0;
  for (uint64_t x : in.expert_load) layer_total += x;
  if (layer_total == 0) return;
  std::vector<HotRankExpert> on_rank;
  const size_t n = std::min(in.expert_load.size(), in.placement->size());
  for (uint32_t e = 0; e < n; ++e) {
    const auto& holders = (*in.placement)[e];
    if (in.expert_load[e] == 0 || std::find(holders.begin(), holders.end(), rank) == holders.end())
      continue;
    const double part =
        static_cast<double>(in.expert_load[e]) / static_cast<double>(holders.size());
    on_rank.push_back({in.layer, e, part / static_cast<double>(layer_total)});
  }
  std::stable_sort(on_rank.begin(), on_rank.end(), by_share);
  if (on_rank.size() > limit) on_rank.resize(limit);
  out.insert(out.end(), on_rank.begin(), on_rank.end());
}

}  // namespace

HotRankCause hot_rank_cause(uint32_t rank, std::span<const RankLayerInput> layers,
                            const AnalysisOptions& options) {
  HotRankCause cause;
  for (const RankLayerInput& in : layers) {
    const size_t ranks = in.rank_load.size();
    if (rank >= ranks) continue;
    double sum = 0.0;
    for (double x : in.rank_load) sum += x;
    if (sum <= 0.0) continue;
    const double u = in.rank_load[rank] / (sum / static_cast<double>(ranks));
    if (!is_hot_rank(u, options)) continue;
    cause.layers.push_back({in.layer, u});
    experts_on_rank(rank, in, options.experts_per_hot_layer, cause.experts);
  }
  std::stable_sort(cause.experts.begin(), cause.experts.end(), by_share);
  return cause;
}

}  // namespace inferscope::analysis
