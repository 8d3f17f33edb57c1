// On-device expert counting (agent_cuda.hpp). A ring of slots, each with a
// device count buffer, a pinned host buffer and an event: count() fills the
// newest slot asynchronously, poll() retires the oldest ones whose event has
// completed. Errors are never thrown: a failed slot is dropped and counted.
#include <algorithm>
#include <cstdio>
#include <span>
#include <vector>

#include "../agent_impl.hpp"
#include "count_experts.hpp"
#include "inferscope/agent_cuda.hpp"

namespace inferscope::agent {

static_assert(kCountMaxExperts == wire::kMaxExperts);

struct DeviceExpertCounter::State {
  struct Slot {
    uint32_t* device = nullptr;
    uint32_t* host = nullptr;  // pinned
    cudaEvent_t done = nullptr;
    uint64_t step = 0;
    uint32_t layer = 0, tokens = 0, dropped = 0, rerouted = 0;
  };
  Agent* agent = nullptr;
  uint32_t experts = 0;
  std::vector<Slot> slots;
  size_t head = 0;       // next slot to fill
  size_t in_flight = 0;  // slots between tail and head
  bool ok = false;

  void drop() {
    if (auto* impl = agent->impl_.get())
      impl->overflow_dropped[static_cast<size_t>(wire::RecordKind::kExpertLoad)].fetch_add(1);
  }
  size_t retire(bool wait) {
    size_t n = 0;
    while (in_flight > 0) {
      Slot& s = slots[(head + slots.size() - in_flight) % slots.size()];
      const cudaError_t e = wait ? cudaEventSynchronize(s.done) : cudaEventQuery(s.done);
      if (e == cudaErrorNotReady) break;
      if (e == cudaSuccess) {
        agent->expert_load(s.step, s.layer, std::span<const uint32_t>(s.host, experts), s.tokens,
                           s.dropped, s.rerouted);
        ++n;
      } else {
        drop();
      }
      --in_flight;
    }
    return n;
  }
};

DeviceExpertCounter::DeviceExpertCounter(Agent& agent, uint32_t experts, uint32_t slots)
    : s_(std::make_unique<State>()) {
  s_->agent = &agent;
  s_->experts = std::min(experts, wire::kMaxExperts);
  s_->slots.resize(std::max<uint32_t>(slots, 1));
  bool ok = s_->experts > 0;
  for (auto& s : s_->slots) {
    if (!ok) break;
    ok = cudaMalloc(reinterpret_cast<void**>(&s.device), s_->experts * sizeof(uint32_t)) ==
             cudaSuccess &&
         cudaMallocHost(reinterpret_cast<void**>(&s.host), s_->experts * sizeof(uint32_t)) ==
             cudaSuccess &&
         cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming) == cudaSuccess;
  }
  s_->ok = ok;
  if (!ok) {
    cudaGetLastError();  // clear the sticky-free error so the host's next call is not confused
    std::fprintf(stderr,
                 "inferscope agent: DeviceExpertCounter could not allocate; counts are dropped\n");
  }
}

DeviceExpertCounter::~DeviceExpertCounter() {
  if (s_->ok) drain();
  for (auto& s : s_->slots) {
    if (s.done) cudaEventDestroy(s.done);
    if (s.host) cudaFreeHost(s.host);
    if (s.device) cudaFree(s.device);
  }
}

bool DeviceExpertCounter::count(uint64_t step, uint32_t layer, const int32_t* topk, uint32_t tokens,
                                uint32_t k, cudaStream_t stream, uint32_t dropped,
                                uint32_t rerouted) {
  State& st = *s_;
  if (!st.ok) {
    st.drop();
    return false;
  }
  if (st.in_flight == st.slots.size()) st.retire(false);
  if (st.in_flight == st.slots.size()) {
    st.drop();
    return false;
  }
  State::Slot& s = st.slots[st.head];
  s.step = step;
  s.layer = layer;
  s.tokens = tokens;
  s.dropped = dropped;
  s.rerouted = rerouted;
  const size_t bytes = st.experts * sizeof(uint32_t);
  cudaError_t e = cudaMemsetAsync(s.device, 0, bytes, stream);
  if (e == cudaSuccess) e = count_experts_async(topk, tokens * k, st.experts, s.device, stream);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(s.host, s.device, bytes, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaEventRecord(s.done, stream);
  if (e != cudaSuccess) {
    st.drop();
    return false;
  }
  st.head = (st.head + 1) % st.slots.size();
  ++st.in_flight;
  return true;
}

size_t DeviceExpertCounter::poll() {
  return s_->ok ? s_->retire(false) : 0;
}
size_t DeviceExpertCounter::drain() {
  return s_->ok ? s_->retire(true) : 0;
}
uint32_t DeviceExpertCounter::experts() const {
  return s_->experts;
}
bool DeviceExpertCounter::ok() const {
  return s_->ok;
}

}  // namespace inferscope::agent
