// inferscope wire: the counter names a collector turns into metrics of its own.
//
// A CounterSample names its counter with an interned string. The names below
// have a meaning the collector knows, each feeding one metric (docs/metrics.md);
// any other counter is stored in traces and shown by the viewer, not exported.
// Producers and the collector both take the names from here.
#pragma once

#include <string_view>

namespace inferscope::wire::counter_names {

// SSM state checkpoints evicted from a full pool that were never restored since
// they were saved: memory spent on state nobody reused.
inline constexpr std::string_view kSsmCheckpointsEvictedUnused = "ssm.checkpoints.evicted_unused";
// SSM state checkpoints evicted after being restored at least once.
inline constexpr std::string_view kSsmCheckpointsEvictedReused = "ssm.checkpoints.evicted_reused";

}  // namespace inferscope::wire::counter_names
