// inferscope analysis: would an EPLB re-placement pay for itself?
//
// Inputs per MoE layer, from the last window: every expert's assignments (all
// ranks summed), the placement now and the planned one (plan_eplb), and each
// rank's measured expert compute (ns, summed over the window's passes of the layer).
//
// Saving per step (docs/expert-parallel.md, "How the advisor computes"): the
// MoE layer ends when its slowest rank's experts finish, so a layer pass costs
// the straggler's compute; the others wait (idle). Per pass, with S passes in
// the window and c_r = compute_r / S:
//   straggler = max_r c_r, mean = mean_r c_r                       (measured)
//   after     = mean / balancedness_after                           (predicted)
// The prediction assumes compute proportional to rows (a layer's total rows do
// not change, so the mean does not; the heaviest rank after is mean_load /
// balancedness_after of it). saving = max(0, straggler - after); the others'
// idle per pass is sum_r (straggler - c_r) now and ranks * (after - mean) after.
// The step saving is the sum over the layers.
//
// Cost: a rank must load every expert the plan gives it that it does not hold
// now: bytes_in[r] = expert_bytes * that count. The ranks load in parallel, so
// the stall is max_r bytes_in[r] / move_bytes_per_second (serving pauses while
// weights move). Break-even: stall / saving per step steps, i.e. that / step rate
// seconds; infinite when nothing is saved, NaN when the expert size is unknown.
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace inferscope::analysis {

struct AdvisorLayerInput {
  uint32_t layer = 0;
  std::span<const uint64_t> expert_load;                        // per expert, all ranks
  const std::vector<std::vector<uint32_t>>* current = nullptr;  // expert -> ranks now
  const std::vector<std::vector<uint32_t>>* planned = nullptr;  // expert -> ranks after
  std::span<const int64_t> compute_ns;  // per rank, summed over the window's passes
  uint64_t passes = 0;                  // passes of this layer in the window (per rank)
};

struct AdvisorOptions {
  uint64_t expert_bytes = 0;            // weights of one expert; 0 = unknown (no cost)
  double move_bytes_per_second = 25e9;  // while re-placing
  double steps_per_second = 0.0;        // measured step rate (0 = no horizon in seconds)
};

struct AdvisorLayer {
  uint32_t layer = 0;
  double straggler_ns = 0.0;  // per pass, measured
  double mean_ns = 0.0;       // per pass, measured
  double after_ns = 0.0;      // per pass, predicted straggler after re-placement
  double saving_ns = 0.0;     // per pass: max(0, straggler - after)
  double idle_now_ns = 0.0;   // per pass, all ranks' wait for the straggler
  double idle_after_ns = 0.0;
  double balancedness_now = 0.0, balancedness_after = 0.0;
};

struct Advice {
  std::vector<AdvisorLayer> layers;
  double saving_ns_per_step = 0.0;  // sum over layers
  std::vector<uint64_t> bytes_in;   // per rank: expert weights it must load
  uint64_t max_bytes_in = 0;
  uint32_t experts_moved = 0;  // (expert, rank) replicas the plan adds somewhere new
  double stall_s = 0.0;        // max_bytes_in / bandwidth
  double break_even_steps = std::numeric_limits<double>::infinity();
  double break_even_s = std::numeric_limits<double>::infinity();  // at the step rate
  bool cost_known = false;                                        // expert_bytes > 0
};

// ranks >= 1. Layers with no passes, no load or sizes that do not match are skipped.
Advice advise_eplb(std::span<const AdvisorLayerInput> layers, uint32_t ranks,
                   const AdvisorOptions& options);

}  // namespace inferscope::analysis
