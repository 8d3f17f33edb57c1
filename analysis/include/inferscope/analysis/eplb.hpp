// inferscope analysis: an EPLB-style re-placement of one MoE layer's experts,
// as a what-if next to the current placement.
//
// DeepSeek's expert-parallel load balancer, global policy: with `redundant`
// extra expert slots, replicate the expert with the highest load per replica,
// one replica at a time; then pack the replicas, heaviest first, each onto the
// least-loaded rank that still has a free slot (every rank has the same number
// of slots). Two small departures, both to keep the answer meaningful: an
// expert gets at most one replica per rank (a second copy on the same rank
// balances nothing), and a rank that already holds a replica of the expert is
// passed over while another rank has a free slot. A bounded move/swap pass then
// lowers the heaviest rank where one replica's move or swap can.
//
// Greedy packing is not optimal: on loads that the current placement already
// balances well it can come out slightly worse. Given the current placement,
// the planner therefore also tries it with the same redundant replicas added
// (each only where it does not raise the heaviest rank) and returns whichever
// is more balanced, so the what-if is never worse than leaving things as they are.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace inferscope::analysis {

struct EplbPlan {
  std::vector<std::vector<uint32_t>> expert_to_ranks;  // per expert, its replicas' ranks
  uint32_t slots_per_rank = 0;
  uint32_t replicas_added = 0;  // <= redundant: limited by free slots and one copy per rank
  bool kept_current = false;    // the current placement plus replicas won
};

// load[e]: expert e's assignments (over all ranks) in the window. ranks >= 1.
// Slots per rank = max(ceil(E / ranks), floor((E + redundant) / ranks)).
// current: the placement now (expert -> ranks), or null for the greedy plan alone.
EplbPlan plan_eplb(std::span<const uint64_t> load, uint32_t ranks, uint32_t redundant,
                   const std::vector<std::vector<uint32_t>>* current = nullptr);

}  // namespace inferscope::analysis
