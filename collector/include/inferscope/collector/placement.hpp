// inferscope collector: expert placement for expert parallelism (EP).
//
// Maps every routed expert of a layer to the rank(s) that hold it. An expert
// with several replicas (EPLB-style redundancy) has its load split evenly over
// them, which is what a balancing dispatcher aims for.
//
// File format (--placement FILE):
//   {"ranks": 8,                                  // optional; default max rank + 1
//    "expert_to_ranks": [[0], [1], [2, 6], ...],  // per expert, the ranks with a replica
//    "layers": {"12": [[...], ...]}}              // optional per-layer overrides
// "expert_to_rank": [0, 1, 2, ...] (one rank per expert) is accepted too.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace inferscope::collector {

struct Placement {
  uint32_t ranks = 0;
  std::vector<std::vector<uint32_t>> expert_to_ranks;             // default for every layer
  std::map<uint32_t, std::vector<std::vector<uint32_t>>> layers;  // overrides

  const std::vector<std::vector<uint32_t>>& for_layer(uint32_t layer) const;
  // From a hello's expert_to_rank (one replica per expert).
  static Placement from_single(const std::vector<uint32_t>& expert_to_rank);
};

// Parses the JSON text above. False with error set on bad input.
bool parse_placement(const std::string& json_text, Placement& out, std::string& error);
bool load_placement_file(const std::string& path, Placement& out, std::string& error);

}  // namespace inferscope::collector
