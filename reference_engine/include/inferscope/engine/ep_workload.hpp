// The expert-parallel skew: which bytes make a chosen rank hot.
//
// The seeded topics (weights.hpp) give each topic one hot expert per MoE
// layer, but with top-k > 1 a token's other choices spread over the other
// ranks, so a topic alone does not make one *rank* hot. ep_hot_bytes() reads
// the model's embedding, post-attention norms and routers and scores every
// printable byte by the share of its top-k choices (embedding only, as the
// residual stream starts) that land on `rank`'s expert shard over all MoE
// layers; the skewed-ep workload writes its dominant-topic text with the best
// `count` of them (WorkloadSpec::alphabet).
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/engine/model.hpp"

namespace inferscope::engine {

struct HotByte {
  int32_t byte = 0;
  double share = 0.0;  // of its top-k choices over MoE layers on the rank's shard
};

// The `count` printable bytes (33..126) with the highest share on `rank`'s
// shard under an `ranks`-way placement, best first.
std::vector<HotByte> ep_hot_bytes(Model& model, int32_t ranks, int32_t rank, int32_t count);

}  // namespace inferscope::engine
