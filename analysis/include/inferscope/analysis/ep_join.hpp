// inferscope analysis: joins the expert-parallel ranks of one model on
// (step, MoE layer), so that each rank's wait for the slowest can be derived.
//
// Every rank reports its expert compute time for each (step, layer) in an
// ExpertParallelStep record. Once all world_size ranks have reported a pair,
// it is complete: idle[r] = max over ranks of compute - compute[r] is the time
// rank r spent in the combine all-to-all waiting for the slowest rank, and the
// slowest rank is the straggler.
//
// Bounded: at most max_steps distinct steps behind the newest one and at most
// max_pending pairs are held. A pair that cannot complete (a rank is gone, or
// its record was dropped) is evicted when it falls behind either bound and
// counted. A step far behind the newest (more than max_steps) means the ranks
// restarted their step counter: everything pending is evicted (counted) and
// the join starts over from that step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <utility>
#include <vector>

namespace inferscope::analysis {

// One complete (step, layer): the slowest rank (the lowest rank with the highest
// compute time) and each rank's wait for it, idle_ns[r] = max compute - compute[r].
struct RankIdle {
  uint32_t slowest = 0;
  std::vector<int64_t> idle_ns;  // per rank, index = rank
};
RankIdle rank_idle(std::span<const int64_t> compute_ns);

class EpStepJoin {
 public:
  struct Joined {
    uint64_t step = 0;
    uint32_t layer = 0;
    std::vector<int64_t> compute_ns;  // per rank, index = rank
    uint32_t slowest = 0;             // the lowest rank with the highest compute time
  };
  enum class Result : uint8_t { kPending, kJoined, kDuplicate, kOutOfWorld };

  explicit EpStepJoin(uint64_t max_steps = 1024, size_t max_pending = 16384)
      : max_steps_(max_steps), max_pending_(max_pending) {}

  // A rank's compute time for (step, layer). world_size is the number of ranks
  // to wait for (the model's world size now; >= 1). kJoined fills out.
  Result add(uint32_t world_size, uint32_t rank, uint64_t step, uint32_t layer, int64_t compute_ns,
             Joined& out);

  uint64_t evicted() const { return evicted_; }  // pairs given up, since the start
  size_t pending() const { return pending_.size(); }

 private:
  struct Entry {
    std::vector<int64_t> compute_ns;
    std::vector<bool> seen;
    uint32_t count = 0;
  };
  void evict_before(uint64_t step);

  uint64_t max_steps_;
  size_t max_pending_;
  std::map<std::pair<uint64_t, uint32_t>, Entry> pending_;
  uint64_t newest_ = 0;
  bool any_ = false;
  uint64_t evicted_ = 0;
};

}  // namespace inferscope::analysis
