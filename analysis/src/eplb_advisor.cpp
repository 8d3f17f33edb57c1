#include "inferscope/analysis/eplb_advisor.hpp"

#include <algorithm>

#include "inferscope/analysis/layer_stats.hpp"

namespace inferscope::analysis {
namespace {

bool holds(const std::vector<std::vector<uint32_t>>& placement, size_t expert, uint32_t rank) {
  if (expert >= placement.size()) return false;
  const auto& rs = placement[expert];
  return std::find(rs.begin(), rs.end(), rank) != rs.end();
}

}  // namespace

Advice advise_eplb(std::span<const AdvisorLayerInput> layers, uint32_t ranks,
                   const AdvisorOptions& options) {
  Advice a;
  if (ranks == 0) return a;
  a.bytes_in.assign(ranks, 0);
  a.cost_known = options.expert_bytes > 0;
  std::vector<uint32_t> moved(ranks, 0);
  for (const AdvisorLayerInput& in : layers) {
    if (in.current == nullptr || in.planned == nullptr || in.passes == 0 ||
        in.compute_ns.size() != ranks)
      continue;
    const RankLoad now = compute_rank_load(in.expert_load, *in.current, ranks);
    const RankLoad after = compute_rank_load(in.expert_load, *in.planned, ranks);
    if (now.balancedness <= 0.0 || after.balancedness <= 0.0) continue;  // idle layer

    AdvisorLayer l;
    l.layer = in.layer;
    const double passes = static_cast<double>(in.passes);
    double sum = 0.0;
    for (int64_t c : in.compute_ns) {
      l.straggler_ns = std::max(l.straggler_ns, static_cast<double>(c) / passes);
      sum += static_cast<double>(c) / passes;
    }
    l.mean_ns = sum / ranks;
    l.after_ns = l.mean_ns / after.balancedness;
    l.saving_ns = std::max(0.0, l.straggler_ns - l.after_ns);
    l.idle_now_ns = ranks * l.straggler_ns - sum;
    l.idle_after_ns = ranks * (l.after_ns - l.mean_ns);
    l.balancedness_now = now.balancedness;
    l.balancedness_after = after.balancedness;
    a.saving_ns_per_step += l.saving_ns;
    a.layers.push_back(l);

    // Weights to move: replicas the plan puts on a rank that does not hold the expert.
    for (size_t e = 0; e < in.planned->size(); ++e)
      for (uint32_t r : (*in.planned)[e])
        if (r < ranks && !holds(*in.current, e, r)) ++moved[r];
  }
  for (uint32_t r = 0; r < ranks; ++r) {
    a.experts_moved += moved[r];
    a.bytes_in[r] = static_cast<uint64_t>(moved[r]) * options.expert_bytes;
    a.max_bytes_in = std::max(a.max_bytes_in, a.bytes_in[r]);
  }
  if (options.move_bytes_per_second > 0.0)
    a.stall_s = static_cast<double>(a.max_bytes_in) / options.move_bytes_per_second;
  if (!a.cost_known) {  // no expert size: the saving stands, the horizon is unknown
    a.break_even_steps = a.break_even_s = std::numeric_limits<double>::quiet_NaN();
  } else if (a.saving_ns_per_step > 0.0) {
    a.break_even_steps = a.stall_s * 1e9 / a.saving_ns_per_step;
    if (options.steps_per_second > 0.0)
      a.break_even_s = a.break_even_steps / options.steps_per_second;
  }
  return a;
}

}  // namespace inferscope::analysis
