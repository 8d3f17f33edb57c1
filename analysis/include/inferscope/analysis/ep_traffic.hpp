// inferscope analysis: the expert-parallel dispatch traffic matrix of one MoE layer.
//
// matrix[src * ranks + dst] = assignment rows rank src sent to rank dst's experts
// in dispatch (summed over steps). Combine returns every row to its sender, so
// the combine matrix is this one transposed: in combine rank r receives its
// row (what it sent in dispatch) and sends its column (what it received).
// The diagonal is rows kept local (no transfer); it is excluded from totals and pairs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace inferscope::analysis {

struct TrafficPair {
  uint32_t src = 0, dst = 0;
  uint64_t rows = 0;
  friend bool operator==(const TrafficPair&, const TrafficPair&) = default;
};

// The k heaviest off-diagonal pairs with rows > 0, heaviest first; ties by
// (src, dst) ascending, so the answer does not depend on iteration order.
// matrix.size() must be ranks * ranks (else empty).
std::vector<TrafficPair> top_traffic_pairs(std::span<const uint64_t> matrix, uint32_t ranks,
                                           uint32_t k);

struct TrafficTotals {
  std::vector<uint64_t> out;  // per rank: rows sent to other ranks (row sum minus diagonal)
  std::vector<uint64_t> in;  // per rank: rows received from other ranks (column sum minus diagonal)
};
TrafficTotals traffic_totals(std::span<const uint64_t> matrix, uint32_t ranks);

}  // namespace inferscope::analysis
