// inferscope agent, CUDA part: per-expert token counts computed on the GPU.
//
// Available when the agent is built with CUDA (INFERSCOPE_AGENT_HAVE_CUDA).
// Include it from host C++20 code (a .cpp), not from a .cu file.
// The router's top-k index tensor stays on the device: a small kernel turns it
// into per-expert counts, an async copy moves only those counts into pinned host
// memory, and an event marks when they are there. Nothing synchronises the
// router's stream; poll() (cudaEventQuery, never blocking) hands finished
// counts to Agent::expert_load().
//
//   DeviceExpertCounter counter(agent, /*experts=*/64);
//   router<<<...>>>(..., d_topk);                       // tokens x k int32 ids
//   counter.count(step, layer, d_topk, tokens, k, stream);
//   counter.poll();                                     // e.g. once per step
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "inferscope/agent.hpp"

namespace inferscope::agent {

class INFERSCOPE_API DeviceExpertCounter {
 public:
  // experts: routed experts per MoE layer (at most wire::kMaxExperts).
  // slots: how many counts may be in flight at once (pinned memory is
  // slots x experts x 4 bytes); beyond that count() drops and counts.
  DeviceExpertCounter(Agent& agent, uint32_t experts, uint32_t slots = 64);
  ~DeviceExpertCounter();  // drain()s, then frees
  DeviceExpertCounter(const DeviceExpertCounter&) = delete;
  DeviceExpertCounter& operator=(const DeviceExpertCounter&) = delete;

  // Queues the count of topk[0 .. tokens*k) (int32 expert ids; ids outside
  // [0, experts) are ignored) on stream. Never blocks. False when every slot is
  // in flight or CUDA refused; the record is then dropped and counted.
  bool count(uint64_t step, uint32_t layer, const int32_t* topk, uint32_t tokens, uint32_t k,
             cudaStream_t stream, uint32_t dropped = 0, uint32_t rerouted = 0);

  // Sends every finished count to the agent, oldest first; never blocks.
  size_t poll();
  // Waits for all counts in flight, then sends them. For shutdown and tests.
  size_t drain();

  uint32_t experts() const;
  bool ok() const;  // false when the device buffers could not be allocated

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// The counting kernel on its own, for callers that manage memory themselves:
// counts[e] += number of i in [0, n) with ids[i] == e (counts not zeroed).
INFERSCOPE_API cudaError_t count_experts_async(const int32_t* ids, uint32_t n, uint32_t experts,
                                               uint32_t* counts, cudaStream_t stream);

}  // namespace inferscope::agent
