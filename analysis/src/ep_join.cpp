#include "inferscope/analysis/ep_join.hpp"

#include <algorithm>

namespace inferscope::analysis {

RankIdle rank_idle(std::span<const int64_t> compute_ns) {
  RankIdle r;
  if (compute_ns.empty()) return r;
  const auto slowest = std::max_element(compute_ns.begin(), compute_ns.end());
  r.slowest = static_cast<uint32_t>(slowest - compute_ns.begin());
  r.idle_ns.reserve(compute_ns.size());
  for (int64_t ns : compute_ns) r.idle_ns.push_back(*slowest - ns);
  return r;
}

void EpStepJoin::evict_before(uint64_t step) {
  while (!pending_.empty() && pending_.begin()->first.first < step) {
    pending_.erase(pending_.begin());
    ++evicted_;
  }
}

EpStepJoin::Result EpStepJoin::add(uint32_t world_size, uint32_t rank, uint64_t step,
                                   uint32_t layer, int64_t compute_ns, Joined& out) {
  world_size = std::max<uint32_t>(world_size, 1);
  if (rank >= world_size) return Result::kOutOfWorld;
  if (!any_ || step > newest_) {
    newest_ = step;
    any_ = true;
    if (newest_ >= max_steps_) evict_before(newest_ - max_steps_ + 1);
  } else if (newest_ - step >= max_steps_) {
    // Far behind: the ranks restarted their step counter. Start over.
    evicted_ += pending_.size();
    pending_.clear();
    newest_ = step;
  }
  const auto key = std::make_pair(step, layer);
  auto it = pending_.find(key);
  if (it == pending_.end()) {
    if (pending_.size() >= max_pending_) {
      pending_.erase(pending_.begin());
      ++evicted_;
    }
    it = pending_.emplace(key, Entry{}).first;
  }
  Entry& e = it->second;
  if (e.compute_ns.size() < world_size) {  // the world grew since the pair opened
    e.compute_ns.resize(world_size, 0);
    e.seen.resize(world_size, false);
  }
  if (e.seen[rank]) return Result::kDuplicate;
  e.seen[rank] = true;
  e.compute_ns[rank] = compute_ns;
  if (++e.count < world_size) return Result::kPending;
  out.step = step;
  out.layer = layer;
  out.compute_ns = std::move(e.compute_ns);
  out.compute_ns.resize(world_size);
  out.slowest = rank_idle(out.compute_ns).slowest;
  pending_.erase(it);
  return Result::kJoined;
}

}  // namespace inferscope::analysis
