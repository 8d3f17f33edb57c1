#include "inferscope/analysis/ep_traffic.hpp"

#include <algorithm>

namespace inferscope::analysis {

std::vector<TrafficPair> top_traffic_pairs(std::span<const uint64_t> matrix, uint32_t ranks,
                                           uint32_t k) {
  std::vector<TrafficPair> all;
  if (k == 0 || matrix.size() != static_cast<size_t>(ranks) * ranks) return all;
  for (uint32_t s = 0; s < ranks; ++s)
    for (uint32_t d = 0; d < ranks; ++d) {
      const uint64_t v = matrix[static_cast<size_t>(s) * ranks + d];
      if (s != d && v > 0) all.push_back({s, d, v});
    }
  auto heavier = [](const TrafficPair& a, const TrafficPair& b) {
    if (a.rows != b.rows) return a.rows > b.rows;
    return a.src != b.src ? a.src < b.src : a.dst < b.dst;
  };
  const size_t n = std::min<size_t>(k, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<ptrdiff_t>(n), all.end(), heavier);
  all.resize(n);
  return all;
}

TrafficTotals traffic_totals(std::span<const uint64_t> matrix, uint32_t ranks) {
  TrafficTotals t;
  if (matrix.size() != static_cast<size_t>(ranks) * ranks) return t;
  t.out.assign(ranks, 0);
  t.in.assign(ranks, 0);
  for (uint32_t s = 0; s < ranks; ++s)
    for (uint32_t d = 0; d < ranks; ++d) {
      if (s == d) continue;
      const uint64_t v = matrix[static_cast<size_t>(s) * ranks + d];
      t.out[s] += v;
      t.in[d] += v;
    }
  return t;
}

}  // namespace inferscope::analysis
