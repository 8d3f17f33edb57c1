// The end-of-run summary: throughput, latency percentiles, per-layer routing
// (imbalance, drops, the hottest experts with their share), memory, prefix
// cache and stage times. Built as JSON (written with --summary-json) and
// printed as text from the same JSON. "hot_experts" lists experts whose
// cumulative share is at least the analysis options' hot_clear_threshold (1.5)
// times the fair share 1/E: the level a collector's hot episode would not clear on.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inferscope/engine/config.hpp"
#include "inferscope/engine/engine.hpp"

namespace inferscope::engine {

nlohmann::json make_summary(const ModelConfig& config, const MemoryFootprint& memory,
                            const EngineStats& stats, const std::vector<RequestResult>& results,
                            double wall_seconds);
std::string format_summary(const nlohmann::json& summary);

}  // namespace inferscope::engine
