// When GPU tracing is on: a pure state machine, fed times and step boundaries.
//
// It owns no thread, no clock and no CUPTI: the GPU-trace controller
// (gpu_trace_controller.hpp) feeds it now_ns() and the host's step count and
// switches CUPTI to match tracing(); tests feed it an injected clock.
//
//  - off        never traces; capture requests are refused (kRefusedOff).
//  - full       always traces; a capture is still accepted and counted (its
//               tag goes on the spans of its window), tracing just stays on.
//  - sampled    a burst of policy.burst_ns every policy.period_ns, the first
//               one a full period after the mode was set (a process that
//               starts is not traced while it warms up). With
//               policy.burst_steps > 0 a burst instead ends after that many
//               step boundaries (or burst_ns * 10, whichever first).
//  - triggered  traces only during captures.
// Captures (sampled, triggered, full): one at a time (a second one while one
// runs is refused kRefusedBusy) and not again before policy.cooldown_ns after
// the previous one ended (kRefusedCooldown). A capture of N steps starts at
// the next step boundary when the host reports steps (so it covers whole
// steps), at once otherwise, and ends after N boundaries or capture_max_ns
// after the request, whichever first; a capture of T ns ends T ns after it
// started. A capture that starts during a sampled burst takes the burst over
// (the burst counts as finished).
#pragma once

#include <cstdint>

#include "inferscope/agent.hpp"

namespace inferscope::agent::detail {

struct BurstPolicy {
  int64_t burst_ns = 20'000'000;           // sampled: burst length
  int64_t period_ns = 10'000'000'000;      // sampled: burst start to burst start
  uint32_t burst_steps = 0;                // sampled: > 0 ends a burst by steps instead
  int64_t capture_max_ns = 2'000'000'000;  // step-counted capture cap
  int64_t cooldown_ns = 30'000'000'000;    // end of a capture to the next one
};

struct BurstCounters {
  uint64_t bursts_started = 0;
  uint64_t bursts_finished = 0;
  uint64_t captures_requested = 0;
  uint64_t captures_started = 0;
  uint64_t captures_refused_busy = 0;
  uint64_t captures_refused_cooldown = 0;
  uint64_t captures_refused_off = 0;
  uint64_t captures_completed = 0;
};

class BurstScheduler {
 public:
  BurstScheduler(GpuTraceMode mode, const BurstPolicy& policy, int64_t now_ns);

  void set_mode(GpuTraceMode mode, int64_t now_ns);
  GpuTraceMode mode() const { return mode_; }

  using Result = Agent::CaptureResult;
  // steps > 0: a step-counted capture; else duration_ns (> 0, else burst_ns).
  Result request_capture(uint32_t steps, int64_t duration_ns, uint64_t tag, int64_t now_ns);

  // Brings the state up to now_ns; steps is the host's cumulative count of step
  // boundaries (monotonic; a larger value than last time means that many
  // boundaries passed since). Call it at least at next_deadline_ns().
  void advance(int64_t now_ns, uint64_t steps);

  bool tracing() const { return state_ != State::kIdle; }
  bool capturing() const { return state_ == State::kCapture || state_ == State::kCapturePending; }
  // The tag of the capture running now (0 when none).
  uint64_t tag() const { return capturing() ? capture_tag_ : 0; }
  // When advance() next has something to do by time alone (INT64_MAX: never).
  // While a step-counted window is open the caller should also advance on steps.
  int64_t next_deadline_ns() const;
  bool waiting_for_steps() const;
  const BurstCounters& counters() const { return counters_; }

 private:
  enum class State : uint8_t {
    kIdle,            // not tracing
    kBurst,           // a sampled burst
    kCapturePending,  // a step-counted capture waits for the next boundary (traces already)
    kCapture,         // a capture
    kFull,            // full mode, no capture running
  };
  void start_burst(int64_t now_ns, uint64_t steps);
  void end_window(int64_t now_ns);
  void schedule_next_burst(int64_t from_ns);

  GpuTraceMode mode_;
  BurstPolicy policy_;
  State state_ = State::kIdle;
  BurstCounters counters_;
  uint64_t steps_ = 0;       // last step count seen
  bool steps_seen_ = false;  // the host reports step boundaries
  int64_t next_burst_ns_ = INT64_MAX;
  int64_t window_end_ns_ = INT64_MAX;       // time cap of the open window
  uint64_t window_end_steps_ = UINT64_MAX;  // step cap of the open window
  uint32_t capture_steps_ = 0;
  uint64_t capture_tag_ = 0;
  int64_t cooldown_until_ns_ = INT64_MIN;
};

}  // namespace inferscope::agent::detail
