// --ep-placement FILE: a non-contiguous expert placement for the engine
// (docs/expert-parallel.md, "Reproducing the incident").
//
// The file is the collector's placement format (collector/.../placement.hpp):
//   {"ranks": N,                              // optional; default max rank + 1
//    "expert_to_rank": [r0, r1, ...],         // logical expert -> rank, or
//    "expert_to_ranks": [[r0], [r1], ...],    // the same with one replica each
//    "layers": {"<layer>": [...]}}            // optional per-MoE-layer overrides
// Every rank must hold exactly E/N experts in every MoE layer (the engine's
// shards are equal-sized); replicas are not supported by the engine. The
// result relabels the experts so that rank r's physical slots
// [r*E/N, (r+1)*E/N) hold its logical experts in ascending order.
#pragma once

#include <cstdint>
#include <string>

#include "inferscope/engine/config.hpp"
#include "inferscope/engine/expert_parallel.hpp"

namespace inferscope::engine {

// `ranks` is --ep-size. With ranks > 1 the file's N must equal it. With
// ranks == 1 the file is still checked (against its own N) but not applied:
// one rank holds every expert, so the result is the plain single-rank
// placement. Throws std::invalid_argument naming `origin` on bad input.
ExpertPlacement parse_expert_placement(const std::string& json_text, const ModelConfig& config,
                                       int32_t ranks, int32_t rank,
                                       const std::string& origin = "placement");
ExpertPlacement load_expert_placement(const std::string& path, const ModelConfig& config,
                                      int32_t ranks, int32_t rank);

}  // namespace inferscope::engine
