// The one class that talks to CUPTI (as Kineto's CuptiActivityApi does). The
// rest of the agent sees only inferscope's own records: GPU activity arrives in
// the rings as wire::Span records on GPU tracks.
//
// Built from cupti_tracer.cpp when INFERSCOPE_HAVE_CUDA, from cupti_stub.cpp
// otherwise (start() then returns nullptr and the agent runs without CUPTI).
//
// Lifetime: start() loads CUPTI and sets it up (clock, buffers, a callback
// subscriber) but records nothing; enable() switches the activity kinds (and
// launch callbacks) on, disable() switches every one of them off again, so
// between bursts CUPTI costs nothing per launch (docs/gpu.md). The GPU-trace
// controller calls enable/disable; only one thread at a time does.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "../agent_impl.hpp"

namespace inferscope::agent::detail {

struct CuptiCounters {
  uint64_t kernels = 0;     // kernel records turned into spans
  uint64_t attributed = 0;  // ... that carry an enclosing range
  uint64_t dropped = 0;     // records CUPTI had no buffer for
  uint64_t enable_errors = 0;
  // Dynamic detach (Config::gpu_trace_detach): process-wide, like CUPTI itself.
  uint64_t detaches = 0;        // cuptiFinalize() done at the end of a window
  uint64_t reattaches = 0;      // CUPTI set up again at the start of the next one
  uint64_t detach_errors = 0;   // cuptiFinalize() or the re-attach failed
  bool detach_pending = false;  // asked for, waiting for the next CUDA API call to return
};

class CuptiTracer {
 public:
  // Nullptr when CUPTI is not built in, no GPU is present, or CUPTI refuses
  // (e.g. another profiler owns it); the reason goes to stderr. kinds:
  // GpuTraceKind bits (agent.hpp).
  static std::unique_ptr<CuptiTracer> start(Agent::Impl& impl, uint32_t kinds);
  // True when this build has CUPTI compiled in (cupti_tracer.cpp, not the stub).
  static bool built_in();
  virtual ~CuptiTracer() = default;

  // Switches recording on; tag (non-zero) goes on every GPU span as the arg
  // "capture". False when CUPTI refused the kernel kind (counted).
  virtual bool enable(uint64_t tag) = 0;
  // Switches every kind and callback off and flushes (forced) what was
  // recorded into the rings. Idempotent. With Config::gpu_trace_detach it then
  // asks for CUPTI to be detached (cuptiFinalize), which happens at the exit of
  // the next CUDA API call on any thread; enable() attaches again.
  virtual void disable() = 0;
  virtual bool enabled() const = 0;
  // Called once, right after start(), when the mode does not trace at once
  // (sampled, triggered, off): with Config::gpu_trace_detach, asks for the
  // detach that disable() would, so that a process waiting for its first burst
  // or capture does not pay for an attached, idle CUPTI (as costly per launch as
  // tracing: docs/gpu.md). start() attaches anyway, which proves that CUPTI works.
  virtual void park() = 0;

  // Flushes CUPTI's buffers so that completed GPU activity reaches the rings.
  virtual void flush() = 0;
  virtual void stop() = 0;

  // Kernels launched between push and pop (on this thread) are attributed to
  // name_id. A thread-local stack (no CUPTI call) unless the old external
  // correlation path is on; the return value says whether pop_range() must
  // undo a CUPTI push.
  virtual bool push_range(uint32_t name_id, uint64_t request_id) = 0;
  virtual void pop_range(bool cupti_pushed) = 0;

  // GPU kernel time per enclosing range name, summed since start (ns).
  virtual std::map<uint32_t, int64_t> gpu_time_by_range() = 0;
  virtual CuptiCounters counters() = 0;
  // Records CUPTI dropped (no buffer free in the pool, or its own limits).
  uint64_t dropped_records() { return counters().dropped; }
};

}  // namespace inferscope::agent::detail
