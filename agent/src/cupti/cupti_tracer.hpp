// The one class that talks to CUPTI (as Kineto's CuptiActivityApi does). The
// rest of the agent sees only inferscope's own records: GPU activity arrives in
// the rings as wire::Span records on GPU tracks.
//
// Built from cupti_tracer.cpp when INFERSCOPE_HAVE_CUDA, from cupti_stub.cpp
// otherwise (start() then returns nullptr and the agent runs without CUPTI).
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "../agent_impl.hpp"

namespace inferscope::agent::detail {

class CuptiTracer {
 public:
  // Nullptr when CUPTI is not built in, no GPU is present, or CUPTI refuses
  // (e.g. another profiler owns it); the reason goes to stderr.
  static std::unique_ptr<CuptiTracer> start(Agent::Impl& impl);
  // True when this build has CUPTI compiled in (cupti_tracer.cpp, not the stub).
  static bool built_in();
  virtual ~CuptiTracer() = default;

  // Flushes CUPTI's buffers so that completed GPU activity reaches the rings.
  virtual void flush() = 0;
  virtual void stop() = 0;

  // Kernels launched between push and pop (on this thread) are attributed to
  // name_id: the external correlation id is name_id << 32 | low 32 bits of request_id.
  virtual void push_range(uint32_t name_id, uint64_t request_id) = 0;
  virtual void pop_range() = 0;

  // GPU kernel time per enclosing range name, summed since start (ns).
  virtual std::map<uint32_t, int64_t> gpu_time_by_range() = 0;
  // Records CUPTI dropped (no buffer free in the pool, or its own limits).
  virtual uint64_t dropped_records() = 0;
};

}  // namespace inferscope::agent::detail
