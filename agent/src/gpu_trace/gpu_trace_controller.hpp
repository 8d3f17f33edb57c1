// The GPU-trace controller: one thread that runs the BurstScheduler on the
// real clock and switches CUPTI (CuptiTracer::enable/disable) to match.
//
// Host threads only touch it through set_mode(), request_capture() and step():
// a short lock or an atomic, never a CUPTI call (enabling and flushing CUPTI
// can take milliseconds; that happens on this thread). The thread sleeps until
// the scheduler's next deadline, or polls every kStepPoll while a window counts
// steps. CUPTI is loaded the first time a mode other than off is set (in the
// constructor, or in set_mode: a one-time dlopen on the caller's thread). When
// CUPTI is absent the scheduler still runs and counts (cupti_available false),
// so collector-triggered captures can be checked on a machine without a GPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "../agent_impl.hpp"
#include "burst_scheduler.hpp"

namespace inferscope::agent::detail {

class CuptiTracer;

class GpuTraceController {
 public:
  explicit GpuTraceController(Agent::Impl& impl);
  ~GpuTraceController();  // stop()
  GpuTraceController(const GpuTraceController&) = delete;
  GpuTraceController& operator=(const GpuTraceController&) = delete;

  void set_mode(GpuTraceMode mode);
  GpuTraceMode mode() const { return mode_.load(std::memory_order_relaxed); }
  Agent::CaptureResult request_capture(uint32_t steps, std::chrono::milliseconds duration,
                                       uint64_t tag);
  void step() { steps_.fetch_add(1, std::memory_order_relaxed); }
  GpuTraceStats stats() const;

  // Loaded CUPTI, or nullptr (mode never left off, or no CUPTI/GPU). Stable
  // once set: ScopedRange reads it on every range.
  CuptiTracer* tracer() const { return impl_.tracer.load(std::memory_order_acquire); }
  // Tracing off and the last activity flushed into the rings; idempotent.
  void stop();

 private:
  void ensure_loaded(GpuTraceMode mode);  // mu_ not held; mode: the one being switched to
  void run();
  void apply(std::unique_lock<std::mutex>& lock);

  Agent::Impl& impl_;
  std::atomic<GpuTraceMode> mode_;
  std::atomic<uint64_t> steps_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  BurstScheduler scheduler_;           // guarded by mu_
  bool stopping_ = false;              // guarded by mu_
  bool on_ = false;                    // CUPTI enabled (controller thread)
  uint64_t on_tag_ = 0;                // the tag it was enabled with
  std::atomic<bool> cupti_on_{false};  // CUPTI enable() returned and no disable() since
  uint64_t last_tag_ = 0;              // guarded by mu_
  std::mutex load_mu_;                 // one CUPTI load
  bool load_tried_ = false;            // guarded by load_mu_
  std::unique_ptr<CuptiTracer> tracer_;
  std::thread thread_;
};

}  // namespace inferscope::agent::detail
