// Clock truth (issue 22 part 2): what ScopedRange records (TSC ticks where the
// TSC is usable, converted by the shipper) lands on the wire as CLOCK_MONOTONIC
// ns that, with the hello's realtime_minus_monotonic_ns, agree with
// CLOCK_REALTIME read by another process within 1 us. No bound on how long
// anything takes: each comparison is bracketed (the child's reading happens
// inside the range), and only the tightest brackets are judged, so a
// preempted sample is discarded, never failed.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "../../agent/src/clock/tick_clock.hpp"
#include "inferscope/agent.hpp"
#include "realtime_probe.hpp"
#include "test_collector.hpp"

namespace inferscope::agent {
namespace {

using detail::TickClock;
using detail::TickMap;
using detail::TickSample;
using testing::only;
using testing::RealtimeProbe;
using testing::TestCollector;
using namespace std::chrono_literals;

constexpr int64_t kTolerance = 1'000;  // ns: the 1 us

TEST(TickClock, FitRecoversALineFromItsSamples) {
  // ticks at 3 GHz starting far from zero; ns = 5 s + ticks / 3.
  std::vector<TickSample> samples;
  for (uint64_t k = 0; k < 50; ++k) {
    const uint64_t ticks = 1'000'000'000'000ull + k * 30'000'000ull;
    samples.push_back({ticks, 5'000'000'000 + static_cast<int64_t>(k) * 10'000'000, 0});
  }
  const TickMap m = detail::fit_tick_map(samples);
  EXPECT_NEAR(m.ns_per_tick, 1.0 / 3.0, 1e-12);
  for (const auto& s : samples) EXPECT_NEAR(m.to_ns(s.ticks), s.ns, 1);
  // Extrapolated a minute past the last sample, still on the line.
  EXPECT_NEAR(m.to_ns(samples.back().ticks + 180'000'000'000ull),
              samples.back().ns + 60'000'000'000, 2);
  // Before the first sample too (a tick delta below the anchor is negative).
  EXPECT_NEAR(m.to_ns(samples.front().ticks - 3'000'000), samples.front().ns - 1'000'000, 1);
}

TEST(TickClock, ARefitSlewsWithoutAJumpAndSnapsOnlyWhenFarOff) {
  TickMap current;
  current.identity = false;
  current.base_ticks = 1'000'000;
  current.base_ns = 0;
  current.ns_per_tick = 0.5;  // 2 GHz
  TickMap fitted = current;
  fitted.base_ns = 300;  // the new line is 300 ns later everywhere
  const uint64_t now = current.base_ticks + 2'000'000'000ull;  // 1 s after the base
  const int64_t horizon = 200'000'000;
  const TickMap m = detail::slew_toward(current, fitted, now, horizon);
  // Continuous now, so records converted before and after the refit agree...
  EXPECT_NEAR(m.to_ns(now), current.to_ns(now), 1);
  // ...also for a record taken 20 ms earlier (what one drain can hold): the
  // rate changed by 300 ns per 200 ms, so 20 ms back they differ by ~30 ns.
  EXPECT_NEAR(m.to_ns(now - 40'000'000), current.to_ns(now - 40'000'000), 31);
  // ...and on the fitted line one horizon later.
  EXPECT_NEAR(m.to_ns(now + 400'000'000), fitted.to_ns(now + 400'000'000), 1);
  // Monotonic across the refit: a tick later never converts earlier.
  EXPECT_LE(current.to_ns(now - 1), m.to_ns(now));
  // Farther off than kSnapNs (start-up, a step): the fitted line at once.
  fitted.base_ns = TickClock::kSnapNs + 1;
  const TickMap snapped = detail::slew_toward(current, fitted, now, horizon);
  EXPECT_EQ(snapped.to_ns(now), fitted.to_ns(now));
}

TEST(TickClock, TheTscIsCalibratedOnlyWhenInvariantAndTrustedByTheKernel) {
  EXPECT_EQ(detail::tsc_unusable(true, "tsc"), "");
  EXPECT_EQ(detail::tsc_unusable(true, "kvm-clock"), "");  // a VM: the start-up fit decides
  EXPECT_EQ(detail::tsc_unusable(true, ""), "");           // /sys unreadable: likewise
  EXPECT_EQ(detail::tsc_unusable(false, "tsc"), "TSC not invariant");
  EXPECT_NE(detail::tsc_unusable(true, "hpet").find("does not trust the TSC"), std::string::npos);
  EXPECT_NE(detail::tsc_unusable(true, "acpi_pm"), "");
}

TEST(TickClock, OsModeIsTheIdentityOnMonotonicNs) {
  TickClock os("os");
  EXPECT_FALSE(os.tsc());
  EXPECT_EQ(os.description(), "os (INFERSCOPE_CLOCK=os)");
  const TickMap m = os.map();
  EXPECT_TRUE(m.identity);
  EXPECT_EQ(m.to_ns(123'456'789), 123'456'789);
  os.recalibrate();  // nothing to do, no effect
  EXPECT_TRUE(os.map().identity);
}

TEST(TickClock, AutoFollowsTheCpuAndKernelAndLandsOnItsLine) {
  TickClock clock("auto");
  ASSERT_FALSE(clock.description().empty());
  const std::string no =
      detail::tsc_unusable(detail::cpu_has_invariant_tsc(), detail::kernel_clocksource());
  if (!no.empty()) {
    EXPECT_FALSE(clock.tsc());
    EXPECT_EQ(clock.description(), "os (" + no + ")");
    return;
  }
  if (!clock.tsc()) GTEST_SKIP() << "TSC not used here: " << clock.description();
  // A fresh sample lands on the start-up line, within its bracket and 1 us.
  const TickSample s = detail::take_tick_sample();
  EXPECT_LE(std::llabs(clock.map().to_ns(s.ticks) - s.ns), s.width / 2 + kTolerance)
      << clock.description();
}

// The real path: ranges recorded by an Agent, converted by its shipper,
// decoded by a collector; the child's CLOCK_REALTIME read inside each range.
TEST(ClockTruth, RangesAgreeWithAnotherProcessRealtimeWithin1us) {
  RealtimeProbe probe;  // forks: before any agent thread exists
  TestCollector collector;
  Config cfg;
  cfg.collector = collector.address();
  cfg.flush_interval = 5ms;
  cfg.nvtx = false;
  cfg.thread_buffer_bytes = 16u << 20;
  const uint32_t name = intern("clock_truth.probe");
  constexpr uint64_t kProbes = 20'000;
  std::vector<int64_t> realtime(kProbes + 1);
  {
    Agent agent(cfg);
    for (uint64_t i = 1; i <= kProbes; ++i) {
      ScopedRange r(agent, name, i);
      realtime[i] = probe.read();
    }
    ASSERT_TRUE(agent.flush(30s));
    EXPECT_EQ(agent.stats().records_dropped, 0u);
  }
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  const auto records = collector.records();
  const auto hellos = only<wire::Hello>(records);
  ASSERT_FALSE(hellos.empty());
  const int64_t offset = hellos.front().clock.realtime_minus_monotonic_ns;

  struct Bracket {
    int64_t lo, hi, realtime;
  };
  std::vector<Bracket> brackets;
  for (const auto& s : only<wire::Span>(records)) {
    if (s.name_id != name || s.request_id == 0 || s.request_id > kProbes) continue;
    ASSERT_LE(s.start_ns, s.end_ns);
    brackets.push_back({s.start_ns + offset, s.end_ns + offset, realtime[s.request_id]});
  }
  ASSERT_EQ(brackets.size(), kProbes);
  // Judge the tightest: a wide bracket (preempted) tells little either way.
  std::sort(brackets.begin(), brackets.end(),
            [](const Bracket& a, const Bracket& b) { return a.hi - a.lo < b.hi - b.lo; });
  constexpr int64_t kTight = 20'000;  // ns; the round trip is well under 1 us when undisturbed
  brackets.resize(std::min<size_t>(brackets.size(), 500));
  std::erase_if(brackets, [](const Bracket& b) { return b.hi - b.lo > kTight; });
  if (brackets.size() < 20)
    GTEST_SKIP() << "only " << brackets.size() << " brackets under " << kTight
                 << " ns: this machine is too busy to judge";
  int64_t worst = 0;
  for (const auto& b : brackets) {
    const int64_t outside = std::max({b.lo - b.realtime, b.realtime - b.hi, int64_t{0}});
    worst = std::max(worst, outside);
    EXPECT_LE(outside, kTolerance) << "child realtime " << b.realtime << " outside [" << b.lo
                                   << ", " << b.hi << "] (" << range_clock_description() << ")";
  }
  std::printf(
      "clock truth: %zu tightest brackets (%lld..%lld ns wide), worst %lld ns outside; %s\n",
      brackets.size(), static_cast<long long>(brackets.front().hi - brackets.front().lo),
      static_cast<long long>(brackets.back().hi - brackets.back().lo),
      static_cast<long long>(worst), range_clock_description().c_str());
}

}  // namespace
}  // namespace inferscope::agent
