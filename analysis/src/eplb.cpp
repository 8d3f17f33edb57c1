#include "inferscope/analysis/eplb.hpp"

#include <algorithm>
#include <numeric>

#include "inferscope/analysis/layer_stats.hpp"

namespace inferscope::analysis {

namespace {

bool holds(const std::vector<uint32_t>& holders, uint32_t rank) {
  return std::find(holders.begin(), holders.end(), rank) != holders.end();
}

// [SECTION] Refinement: single moves and swaps off the heaviest rank

// Greedy packing can leave the heaviest rank a little over what a swap would
// give. Repeatedly take the most loaded rank and apply the single move (to a
// rank with a free slot) or swap (with a replica on another rank) that lowers
// the larger of the two ranks' loads the most; stop when none helps. Bounded.
void refine(EplbPlan& plan, std::span<const uint64_t> load, const std::vector<uint32_t>& copies,
            std::vector<double>& rank_load, std::vector<uint32_t>& used) {
  const auto ranks = static_cast<uint32_t>(rank_load.size());
  const auto experts = static_cast<uint32_t>(plan.expert_to_ranks.size());
  auto weight = [&](uint32_t e) { return static_cast<double>(load[e]) / copies[e]; };
  std::vector<std::vector<uint32_t>> on_rank(ranks);  // experts with a replica on the rank
  for (uint32_t e = 0; e < experts; ++e)
    for (uint32_t r : plan.expert_to_ranks[e]) on_rank[r].push_back(e);
  auto relocate = [&](uint32_t e, uint32_t from, uint32_t to) {
    auto& h = plan.expert_to_ranks[e];
    *std::find(h.begin(), h.end(), from) = to;
    auto& src = on_rank[from];
    src.erase(std::find(src.begin(), src.end(), e));
    on_rank[to].push_back(e);
    rank_load[from] -= weight(e);
    rank_load[to] += weight(e);
    --used[from];
    ++used[to];
  };
  for (int iteration = 0; iteration < 64; ++iteration) {
    const auto a = static_cast<uint32_t>(std::max_element(rank_load.begin(), rank_load.end()) -
                                         rank_load.begin());
    double best = rank_load[a] - 1e-9;  // must lower the pair's maximum below a's load
    int64_t move_e = -1, swap_f = -1;
    uint32_t target = 0;
    for (uint32_t e : on_rank[a]) {
      const double w = weight(e);
      for (uint32_t b = 0; b < ranks; ++b) {
        if (b == a || holds(plan.expert_to_ranks[e], b)) continue;
        if (used[b] < plan.slots_per_rank) {
          const double pair = std::max(rank_load[a] - w, rank_load[b] + w);
          if (pair < best) best = pair, move_e = e, swap_f = -1, target = b;
        }
        for (uint32_t f : on_rank[b]) {
          if (holds(plan.expert_to_ranks[f], a)) continue;
          const double wf = weight(f);
          const double pair = std::max(rank_load[a] - w + wf, rank_load[b] - wf + w);
          if (pair < best) best = pair, move_e = e, swap_f = f, target = b;
        }
      }
    }
    if (move_e < 0) return;
    relocate(static_cast<uint32_t>(move_e), a, target);
    if (swap_f >= 0) relocate(static_cast<uint32_t>(swap_f), target, a);
  }
}

}  // namespace

namespace {

// [SECTION] The greedy plan: replicate, then pack heaviest first

EplbPlan greedy_plan(std::span<const uint64_t> load, uint32_t ranks, uint32_t redundant) {
  EplbPlan plan;
  const uint32_t experts = static_cast<uint32_t>(load.size());
  if (ranks == 0 || experts == 0) return plan;
  const uint32_t at_least = (experts + ranks - 1) / ranks;
  plan.slots_per_rank =
      std::max(at_least, static_cast<uint32_t>((uint64_t{experts} + redundant) / ranks));
  const uint64_t free_slots = uint64_t{plan.slots_per_rank} * ranks - experts;
  const uint64_t extra = std::min<uint64_t>(redundant, free_slots);

  // Replicate: each step gives one more replica to the expert whose load per
  // replica is highest (ties: the lower expert id), at most one per rank.
  std::vector<uint32_t> copies(experts, 1);
  auto per_replica = [&](uint32_t e) { return static_cast<double>(load[e]) / copies[e]; };
  for (uint64_t i = 0; i < extra; ++i) {
    int64_t best = -1;
    for (uint32_t e = 0; e < experts; ++e) {
      if (copies[e] >= ranks) continue;
      if (best < 0 || per_replica(e) > per_replica(static_cast<uint32_t>(best))) best = e;
    }
    if (best < 0) break;
    ++copies[static_cast<size_t>(best)];
    ++plan.replicas_added;
  }

  // Pack: heaviest replica first onto the least-loaded rank with a free slot.
  struct Replica {
    uint32_t expert;
    double weight;
  };
  std::vector<Replica> replicas;
  for (uint32_t e = 0; e < experts; ++e)
    for (uint32_t c = 0; c < copies[e]; ++c) replicas.push_back({e, per_replica(e)});
  std::stable_sort(replicas.begin(), replicas.end(),
                   [](const Replica& a, const Replica& b) { return a.weight > b.weight; });
  std::vector<double> rank_load(ranks, 0.0);
  std::vector<uint32_t> used(ranks, 0);
  plan.expert_to_ranks.assign(experts, {});
  for (const Replica& r : replicas) {
    auto& holders = plan.expert_to_ranks[r.expert];
    int64_t best = -1, fallback = -1;
    for (uint32_t k = 0; k < ranks; ++k) {
      if (used[k] >= plan.slots_per_rank) continue;
      if (fallback < 0 || rank_load[k] < rank_load[static_cast<size_t>(fallback)]) fallback = k;
      if (std::find(holders.begin(), holders.end(), k) != holders.end()) continue;
      if (best < 0 || rank_load[k] < rank_load[static_cast<size_t>(best)]) best = k;
    }
    const int64_t pick = best >= 0 ? best : fallback;  // slots suffice by construction
    if (pick < 0) break;
    const auto k = static_cast<uint32_t>(pick);
    holders.push_back(k);
    rank_load[k] += r.weight;
    ++used[k];
  }
  refine(plan, load, copies, rank_load, used);
  return plan;
}

// [SECTION] The incremental plan: the current placement plus replicas

// The current placement with up to `redundant` replicas added the same way
// (highest load per replica first, onto the least-loaded rank without one, at
// most ceil(redundant / ranks) new replicas per rank), each only if it does not
// raise the heaviest rank's load.
EplbPlan incremental_plan(std::span<const uint64_t> load, uint32_t ranks, uint32_t redundant,
                          const std::vector<std::vector<uint32_t>>& current) {
  EplbPlan plan;
  plan.expert_to_ranks = current;
  plan.expert_to_ranks.resize(load.size());
  std::vector<uint32_t> count(ranks, 0);
  for (const auto& holders : plan.expert_to_ranks)
    for (uint32_t r : holders)
      if (r < ranks) ++count[r];
  const uint32_t per_rank_extra = (redundant + ranks - 1) / ranks;
  std::vector<uint32_t> extra(ranks, 0);
  auto loads = [&] { return compute_rank_load(load, plan.expert_to_ranks, ranks).load; };
  for (uint32_t i = 0; i < redundant; ++i) {
    int64_t best = -1;
    double best_w = -1.0;
    for (uint32_t e = 0; e < plan.expert_to_ranks.size(); ++e) {
      const auto& h = plan.expert_to_ranks[e];
      if (h.empty() || h.size() >= ranks) continue;
      const double w = static_cast<double>(load[e]) / h.size();
      if (w > best_w) best = e, best_w = w;
    }
    if (best < 0) break;
    auto before = loads();
    int64_t target = -1;
    for (uint32_t r = 0; r < ranks; ++r) {
      if (extra[r] >= per_rank_extra || holds(plan.expert_to_ranks[static_cast<size_t>(best)], r))
        continue;
      if (target < 0 || before[r] < before[static_cast<size_t>(target)]) target = r;
    }
    if (target < 0) break;
    auto& holders = plan.expert_to_ranks[static_cast<size_t>(best)];
    holders.push_back(static_cast<uint32_t>(target));
    auto after = loads();
    if (*std::max_element(after.begin(), after.end()) >
        *std::max_element(before.begin(), before.end())) {
      holders.pop_back();
      break;
    }
    ++extra[static_cast<size_t>(target)];
    ++count[static_cast<size_t>(target)];
    ++plan.replicas_added;
  }
  plan.slots_per_rank = *std::max_element(count.begin(), count.end());
  plan.kept_current = true;
  return plan;
}

}  // namespace

// [SECTION] The what-if: whichever plan balances better

EplbPlan plan_eplb(std::span<const uint64_t> load, uint32_t ranks, uint32_t redundant,
                   const std::vector<std::vector<uint32_t>>* current) {
  EplbPlan greedy = greedy_plan(load, ranks, redundant);
  if (current == nullptr || greedy.expert_to_ranks.empty()) return greedy;
  EplbPlan incremental = incremental_plan(load, ranks, redundant, *current);
  const double g = compute_rank_load(load, greedy.expert_to_ranks, ranks).balancedness;
  const double i = compute_rank_load(load, incremental.expert_to_ranks, ranks).balancedness;
  return i > g ? incremental : greedy;
}

}  // namespace inferscope::analysis
