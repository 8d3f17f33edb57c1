// The GPU-trace burst scheduler on an injected clock: when bursts and captures
// start and end, what is refused and why. Times are numbers handed in, so
// nothing here depends on how fast the machine is.
#include "../../agent/src/gpu_trace/burst_scheduler.hpp"

#include <gtest/gtest.h>

namespace inferscope::agent::detail {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kS = 1'000 * kMs;
using Result = Agent::CaptureResult;

BurstPolicy policy() {
  BurstPolicy p;
  p.burst_ns = 20 * kMs;
  p.period_ns = 10 * kS;
  p.capture_max_ns = 2 * kS;
  p.cooldown_ns = 30 * kS;
  return p;
}

TEST(BurstScheduler, OffNeverTracesAndRefusesCaptures) {
  BurstScheduler s(GpuTraceMode::kOff, policy(), 0);
  for (int64_t t = 0; t < 60 * kS; t += kS) {
    s.advance(t, 0);
    EXPECT_FALSE(s.tracing());
  }
  EXPECT_EQ(s.request_capture(5, 0, 7, 61 * kS), Result::kRefusedOff);
  EXPECT_EQ(s.counters().captures_refused_off, 1u);
  EXPECT_EQ(s.next_deadline_ns(), INT64_MAX);
}

TEST(BurstScheduler, SampledBurstsLastBurstNsEveryPeriod) {
  BurstScheduler s(GpuTraceMode::kSampled, policy(), 0);
  s.advance(0, 0);
  EXPECT_FALSE(s.tracing()) << "no burst while the process warms up";
  EXPECT_EQ(s.next_deadline_ns(), 10 * kS);
  s.advance(10 * kS - 1, 0);
  EXPECT_FALSE(s.tracing());
  s.advance(10 * kS, 0);
  EXPECT_TRUE(s.tracing());
  EXPECT_EQ(s.next_deadline_ns(), 10 * kS + 20 * kMs);
  s.advance(10 * kS + 19 * kMs, 0);
  EXPECT_TRUE(s.tracing());
  s.advance(10 * kS + 20 * kMs, 0);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.next_deadline_ns(), 20 * kS);
  // A controller that wakes late does not shift the schedule.
  s.advance(20 * kS + 5 * kMs, 0);
  EXPECT_TRUE(s.tracing());
  s.advance(20 * kS + 25 * kMs, 0);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.next_deadline_ns(), 30 * kS);
  EXPECT_EQ(s.counters().bursts_started, 2u);
  EXPECT_EQ(s.counters().bursts_finished, 2u);
}

TEST(BurstScheduler, SampledDutyCycleOverAnHourIsBurstOverPeriod) {
  BurstScheduler s(GpuTraceMode::kSampled, policy(), 0);
  int64_t traced = 0;
  const int64_t step = kMs;
  for (int64_t t = 0; t < 3600 * kS; t += step) {
    s.advance(t, 0);
    if (s.tracing()) traced += step;
  }
  // 20 ms of every 10 s: 0.2 % (docs/gpu.md: the default's budget).
  EXPECT_NEAR(static_cast<double>(traced) / (3600.0 * kS), 0.002, 0.0001);
  EXPECT_EQ(s.counters().bursts_started, 359u);
}

TEST(BurstScheduler, MissedWholePeriodRestartsTheCountFromNow) {
  BurstScheduler s(GpuTraceMode::kSampled, policy(), 0);
  s.advance(100 * kS, 0);  // asleep for ten periods
  EXPECT_TRUE(s.tracing());
  s.advance(100 * kS + 20 * kMs, 0);
  EXPECT_FALSE(s.tracing()) << "one burst, not ten back to back";
  EXPECT_EQ(s.next_deadline_ns(), 110 * kS);
}

TEST(BurstScheduler, StepCountedBurst) {
  BurstPolicy p = policy();
  p.burst_steps = 3;
  BurstScheduler s(GpuTraceMode::kSampled, p, 0);
  s.advance(10 * kS, 100);
  ASSERT_TRUE(s.tracing());
  EXPECT_TRUE(s.waiting_for_steps());
  s.advance(10 * kS + 50 * kMs, 102);
  EXPECT_TRUE(s.tracing()) << "past burst_ns, but steps decide";
  s.advance(10 * kS + 60 * kMs, 103);
  EXPECT_FALSE(s.tracing());
  // Without steps, the time cap (10 x burst_ns) ends it.
  s.advance(20 * kS, 103);
  ASSERT_TRUE(s.tracing());
  s.advance(20 * kS + 200 * kMs, 103);
  EXPECT_FALSE(s.tracing());
}

TEST(BurstScheduler, TriggeredCaptureOfStepsCountsWholeStepsFromTheNextBoundary) {
  BurstScheduler s(GpuTraceMode::kTriggered, policy(), 0);
  s.advance(1 * kS, 10);  // the host reports steps
  s.advance(1 * kS + kMs, 11);
  EXPECT_FALSE(s.tracing());
  ASSERT_EQ(s.request_capture(2, 0, 42, 2 * kS), Result::kStarted);
  EXPECT_TRUE(s.tracing()) << "on at once, so the first whole step is traced from its start";
  EXPECT_EQ(s.tag(), 42u);
  s.advance(2 * kS + kMs, 11);
  EXPECT_TRUE(s.tracing());
  s.advance(2 * kS + 2 * kMs, 12);  // boundary: the 2 counted steps start here
  EXPECT_TRUE(s.tracing());
  s.advance(2 * kS + 3 * kMs, 13);
  EXPECT_TRUE(s.tracing());
  s.advance(2 * kS + 4 * kMs, 14);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.tag(), 0u);
  EXPECT_EQ(s.counters().captures_started, 1u);
  EXPECT_EQ(s.counters().captures_completed, 1u);
}

TEST(BurstScheduler, StepCaptureWithoutStepsEndsAtTheCap) {
  BurstScheduler s(GpuTraceMode::kTriggered, policy(), 0);
  ASSERT_EQ(s.request_capture(5, 0, 1, kS), Result::kStarted);
  s.advance(kS + 2 * kS - 1, 0);
  EXPECT_TRUE(s.tracing());
  s.advance(kS + 2 * kS, 0);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.counters().captures_completed, 1u);
}

TEST(BurstScheduler, OneCaptureAtATimeThenCooldown) {
  BurstScheduler s(GpuTraceMode::kTriggered, policy(), 0);
  ASSERT_EQ(s.request_capture(0, 100 * kMs, 1, kS), Result::kStarted);
  EXPECT_EQ(s.request_capture(0, 100 * kMs, 2, kS + kMs), Result::kRefusedBusy);
  s.advance(kS + 100 * kMs, 0);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.request_capture(0, 100 * kMs, 3, kS + 200 * kMs), Result::kRefusedCooldown);
  EXPECT_EQ(s.request_capture(0, 100 * kMs, 4, kS + 100 * kMs + 30 * kS - 1),
            Result::kRefusedCooldown);
  EXPECT_EQ(s.request_capture(0, 100 * kMs, 5, kS + 100 * kMs + 30 * kS), Result::kStarted);
  const BurstCounters& c = s.counters();
  EXPECT_EQ(c.captures_requested, 5u);
  EXPECT_EQ(c.captures_started, 2u);
  EXPECT_EQ(c.captures_refused_busy, 1u);
  EXPECT_EQ(c.captures_refused_cooldown, 2u);
  EXPECT_EQ(c.captures_completed, 1u);
}

TEST(BurstScheduler, CaptureTakesASampledBurstOver) {
  BurstScheduler s(GpuTraceMode::kSampled, policy(), 0);
  s.advance(10 * kS, 0);
  ASSERT_TRUE(s.tracing());
  ASSERT_EQ(s.request_capture(0, 500 * kMs, 9, 10 * kS + 5 * kMs), Result::kStarted);
  EXPECT_EQ(s.counters().bursts_finished, 1u);
  s.advance(10 * kS + 100 * kMs, 0);
  EXPECT_TRUE(s.tracing()) << "the burst's 20 ms no longer ends it";
  EXPECT_EQ(s.tag(), 9u);
  s.advance(10 * kS + 505 * kMs, 0);
  EXPECT_FALSE(s.tracing());
  s.advance(20 * kS, 0);
  EXPECT_TRUE(s.tracing()) << "sampling goes on after the capture";
}

TEST(BurstScheduler, FullTracesAlwaysAndStillCountsCaptures) {
  BurstScheduler s(GpuTraceMode::kFull, policy(), 0);
  s.advance(kS, 0);
  EXPECT_TRUE(s.tracing());
  ASSERT_EQ(s.request_capture(0, 50 * kMs, 5, kS), Result::kStarted);
  EXPECT_EQ(s.tag(), 5u);
  s.advance(kS + 50 * kMs, 0);
  EXPECT_TRUE(s.tracing());
  EXPECT_EQ(s.tag(), 0u);
  EXPECT_EQ(s.counters().captures_completed, 1u);
}

TEST(BurstScheduler, ModeChangesAtRunTime) {
  BurstScheduler s(GpuTraceMode::kFull, policy(), 0);
  s.advance(kS, 0);
  ASSERT_TRUE(s.tracing());
  s.set_mode(GpuTraceMode::kOff, 2 * kS);
  EXPECT_FALSE(s.tracing());
  s.set_mode(GpuTraceMode::kSampled, 3 * kS);
  s.advance(12 * kS, 0);
  EXPECT_FALSE(s.tracing());
  s.advance(13 * kS, 0);
  EXPECT_TRUE(s.tracing());
  // A capture survives triggered <-> sampled, not a switch to off.
  s.set_mode(GpuTraceMode::kTriggered, 13 * kS + kMs);
  EXPECT_FALSE(s.tracing()) << "the sampled burst ends with its mode";
  ASSERT_EQ(s.request_capture(0, kS, 1, 14 * kS), Result::kStarted);
  s.set_mode(GpuTraceMode::kSampled, 14 * kS + kMs);
  EXPECT_TRUE(s.tracing());
  s.set_mode(GpuTraceMode::kOff, 14 * kS + 2 * kMs);
  EXPECT_FALSE(s.tracing());
  EXPECT_EQ(s.counters().captures_completed, 1u);
}

}  // namespace
}  // namespace inferscope::agent::detail
