// The GPU-trace thread (gpu_trace_controller.hpp says what it does and why).
#include "gpu_trace_controller.hpp"

#include <algorithm>
#include <climits>

#include "../cupti/cupti_tracer.hpp"

namespace inferscope::agent::detail {

namespace {
// While a window is counted in steps, how often the thread looks at the count.
constexpr int64_t kStepPollNs = 2'000'000;

BurstPolicy policy_of(const Config& c) {
  BurstPolicy p;
  p.burst_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(c.gpu_trace_burst).count();
  p.period_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(c.gpu_trace_period).count();
  p.capture_max_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(c.gpu_capture_max).count();
  p.cooldown_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(c.gpu_capture_cooldown).count();
  return p;
}
}  // namespace

GpuTraceController::GpuTraceController(Agent::Impl& impl)
    : impl_(impl),
      mode_(impl.config.gpu_trace),
      scheduler_(impl.config.gpu_trace, policy_of(impl.config), now_ns()) {
  if (impl.config.gpu_trace != GpuTraceMode::kOff) ensure_loaded(impl.config.gpu_trace);
}

GpuTraceController::~GpuTraceController() {
  stop();
}

void GpuTraceController::ensure_loaded(GpuTraceMode mode) {
  std::lock_guard lock(load_mu_);
  if (load_tried_) return;
  load_tried_ = true;
  tracer_ = CuptiTracer::start(impl_, impl_.config.gpu_trace_kinds);
  // Full traces at once (it stays attached); every other mode waits for a
  // window, and with gpu_trace_detach CUPTI is let go until then. Before the
  // thread starts: park() reads what only that thread writes afterwards.
  if (tracer_ && mode != GpuTraceMode::kFull) tracer_->park();
  impl_.tracer.store(tracer_.get(), std::memory_order_release);
  impl_.refresh_gate();  // ScopedRange now takes the slow path (CUPTI range push)
  thread_ = std::thread([this] { run(); });
}

void GpuTraceController::set_mode(GpuTraceMode mode) {
  if (mode != GpuTraceMode::kOff) ensure_loaded(mode);
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    scheduler_.set_mode(mode, now_ns());
    mode_.store(mode, std::memory_order_relaxed);
  }
  cv_.notify_one();
}

Agent::CaptureResult GpuTraceController::request_capture(uint32_t steps,
                                                         std::chrono::milliseconds duration,
                                                         uint64_t tag) {
  Agent::CaptureResult r;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Agent::CaptureResult::kRefusedOff;
    const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(duration).count();
    // The scheduler must know about steps already taken, so the capture counts from the next one.
    scheduler_.advance(now_ns(), steps_.load(std::memory_order_relaxed));
    r = scheduler_.request_capture(steps, ns, tag, now_ns());
    if (r == Agent::CaptureResult::kStarted) last_tag_ = tag;
  }
  cv_.notify_one();
  return r;
}

GpuTraceStats GpuTraceController::stats() const {
  GpuTraceStats s;
  {
    std::lock_guard lock(mu_);
    const BurstCounters& c = scheduler_.counters();
    s.mode = scheduler_.mode();
    s.tracing = scheduler_.tracing();
    s.bursts_started = c.bursts_started;
    s.bursts_finished = c.bursts_finished;
    s.captures_requested = c.captures_requested;
    s.captures_started = c.captures_started;
    s.captures_refused_busy = c.captures_refused_busy;
    s.captures_refused_cooldown = c.captures_refused_cooldown;
    s.captures_refused_off = c.captures_refused_off;
    s.captures_completed = c.captures_completed;
    s.last_capture_tag = last_tag_;
  }
  if (CuptiTracer* t = tracer()) {
    s.cupti_available = true;
    s.tracing = cupti_on_.load(std::memory_order_relaxed);  // enabled, not just scheduled
    const CuptiCounters c = t->counters();
    s.kernels_captured = c.kernels;
    s.kernels_attributed = c.attributed;
    s.records_dropped = c.dropped;
    s.enable_errors = c.enable_errors;
    s.cupti_detaches = c.detaches;
    s.cupti_reattaches = c.reattaches;
    s.cupti_detach_errors = c.detach_errors;
  }
  return s;
}

// Makes CUPTI follow the scheduler. CUPTI calls run with mu_ released, so a
// host thread calling request_capture() never waits for a flush.
void GpuTraceController::apply(std::unique_lock<std::mutex>& lock) {
  const bool want = scheduler_.tracing();
  const uint64_t tag = scheduler_.tag();
  if (want == on_ && (!want || tag == on_tag_)) return;
  CuptiTracer* t = tracer();
  lock.unlock();
  bool enabled = false;
  if (t) {
    if (want)
      enabled = t->enable(tag);  // also ends the previous window (a new tag) with a flush;
                                 // false (counted in enable_errors) when CUPTI refused
    else
      t->disable();
  }
  lock.lock();
  on_ = want;  // not retried on failure: the next window tries again
  on_tag_ = tag;
  cupti_on_.store(enabled, std::memory_order_relaxed);
}

void GpuTraceController::run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const int64_t now = now_ns();
    scheduler_.advance(now, steps_.load(std::memory_order_relaxed));
    apply(lock);
    if (stopping_) break;
    int64_t wake = scheduler_.next_deadline_ns();
    if (scheduler_.waiting_for_steps()) wake = std::min(wake, now_ns() + kStepPollNs);
    if (wake == INT64_MAX) {
      cv_.wait(lock);
    } else {
      const int64_t delay = std::max<int64_t>(wake - now_ns(), 0);
      cv_.wait_for(lock, std::chrono::nanoseconds(delay));
    }
  }
}

void GpuTraceController::stop() {
  std::lock_guard load(load_mu_);  // no load after this, none half-done now
  load_tried_ = true;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  if (tracer_) tracer_->stop();  // disables and flushes the last activity into the rings
}

}  // namespace inferscope::agent::detail
