// The burst state machine (burst_scheduler.hpp says what it decides).
#include "burst_scheduler.hpp"

#include <algorithm>
#include <climits>

namespace inferscope::agent::detail {

namespace {
// A step-counted sampled burst ends by time at the latest after this many burst lengths.
constexpr int64_t kStepBurstTimeCap = 10;
}  // namespace

BurstScheduler::BurstScheduler(GpuTraceMode mode, const BurstPolicy& policy, int64_t now_ns)
    : mode_(GpuTraceMode::kOff), policy_(policy) {
  policy_.burst_ns = std::max<int64_t>(policy_.burst_ns, 1);
  policy_.period_ns = std::max(policy_.period_ns, policy_.burst_ns);
  policy_.capture_max_ns = std::max<int64_t>(policy_.capture_max_ns, 1);
  policy_.cooldown_ns = std::max<int64_t>(policy_.cooldown_ns, 0);
  set_mode(mode, now_ns);
}

void BurstScheduler::set_mode(GpuTraceMode mode, int64_t now_ns) {
  if (mode == mode_) return;
  // A running capture survives a change between modes that allow captures;
  // anything else closes the open window first.
  const bool keep_capture = capturing() && mode != GpuTraceMode::kOff;
  if (!keep_capture && state_ != State::kIdle) end_window(now_ns);
  mode_ = mode;
  next_burst_ns_ = INT64_MAX;
  if (mode == GpuTraceMode::kSampled) schedule_next_burst(now_ns);
  if (!keep_capture) state_ = mode == GpuTraceMode::kFull ? State::kFull : State::kIdle;
}

BurstScheduler::Result BurstScheduler::request_capture(uint32_t steps, int64_t duration_ns,
                                                       uint64_t tag, int64_t now_ns) {
  ++counters_.captures_requested;
  if (mode_ == GpuTraceMode::kOff) {
    ++counters_.captures_refused_off;
    return Result::kRefusedOff;
  }
  if (capturing()) {
    ++counters_.captures_refused_busy;
    return Result::kRefusedBusy;
  }
  if (now_ns < cooldown_until_ns_) {
    ++counters_.captures_refused_cooldown;
    return Result::kRefusedCooldown;
  }
  if (state_ == State::kBurst) end_window(now_ns);  // the capture takes the burst over
  ++counters_.captures_started;
  capture_tag_ = tag;
  capture_steps_ = steps;
  if (steps > 0) {
    window_end_ns_ = now_ns + policy_.capture_max_ns;
    // Whole steps when the host reports them: count from the next boundary.
    state_ = steps_seen_ ? State::kCapturePending : State::kCapture;
    window_end_steps_ = steps_seen_ ? UINT64_MAX : steps_ + steps;
  } else {
    window_end_ns_ = now_ns + (duration_ns > 0 ? duration_ns : policy_.burst_ns);
    window_end_steps_ = UINT64_MAX;
    state_ = State::kCapture;
  }
  return Result::kStarted;
}

void BurstScheduler::advance(int64_t now_ns, uint64_t steps) {
  if (steps != steps_) {
    const bool boundary = steps > steps_;
    steps_ = steps;
    if (boundary) {
      steps_seen_ = true;
      if (state_ == State::kCapturePending) {
        state_ = State::kCapture;
        window_end_steps_ = steps_ + capture_steps_;
      }
    }
  }
  switch (state_) {
    case State::kBurst:
    case State::kCapture:
    case State::kCapturePending:
      if (now_ns >= window_end_ns_ || steps_ >= window_end_steps_) end_window(now_ns);
      break;
    case State::kIdle:
    case State::kFull:
      break;
  }
  if (state_ == State::kIdle && mode_ == GpuTraceMode::kSampled && now_ns >= next_burst_ns_)
    start_burst(now_ns, steps_);
}

int64_t BurstScheduler::next_deadline_ns() const {
  switch (state_) {
    case State::kBurst:
    case State::kCapture:
    case State::kCapturePending:
      return window_end_ns_;
    case State::kIdle:
      return mode_ == GpuTraceMode::kSampled ? next_burst_ns_ : INT64_MAX;
    case State::kFull:
      return INT64_MAX;
  }
  return INT64_MAX;
}

bool BurstScheduler::waiting_for_steps() const {
  return state_ == State::kCapturePending || window_end_steps_ != UINT64_MAX;
}

void BurstScheduler::start_burst(int64_t now_ns, uint64_t steps) {
  ++counters_.bursts_started;
  state_ = State::kBurst;
  if (policy_.burst_steps > 0) {
    window_end_ns_ = now_ns + policy_.burst_ns * kStepBurstTimeCap;
    window_end_steps_ = steps + policy_.burst_steps;
  } else {
    window_end_ns_ = now_ns + policy_.burst_ns;
    window_end_steps_ = UINT64_MAX;
  }
  // Periods are counted from the burst's scheduled start, not from when the
  // controller got to it, so the duty cycle does not drift; a start missed by
  // a whole period (the process was stopped, say) restarts the count from now.
  schedule_next_burst(now_ns - next_burst_ns_ >= policy_.period_ns ? now_ns : next_burst_ns_);
}

void BurstScheduler::end_window(int64_t now_ns) {
  switch (state_) {
    case State::kBurst:
      ++counters_.bursts_finished;
      break;
    case State::kCapture:
    case State::kCapturePending:
      ++counters_.captures_completed;
      cooldown_until_ns_ = now_ns + policy_.cooldown_ns;
      break;
    case State::kIdle:
    case State::kFull:
      break;
  }
  window_end_ns_ = INT64_MAX;
  window_end_steps_ = UINT64_MAX;
  capture_steps_ = 0;
  state_ = mode_ == GpuTraceMode::kFull ? State::kFull : State::kIdle;
}

void BurstScheduler::schedule_next_burst(int64_t from_ns) {
  next_burst_ns_ =
      from_ns > INT64_MAX - policy_.period_ns ? INT64_MAX : from_ns + policy_.period_ns;
}

}  // namespace inferscope::agent::detail
