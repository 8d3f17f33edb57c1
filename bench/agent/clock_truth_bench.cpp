// clock_truth_bench: the long run of the clock truth check (issue 22 part 2;
// the CI test is tests/agent/clock_truth_test.cpp). For --seconds (default
// 600) it does what the agent does, on this thread: read ticks the way
// ScopedRange does, recalibrate the way a shipper does before each drain
// (every 10 ms here), convert with the map it gets, and add the
// realtime_minus_monotonic_ns a hello carries (measured once, at start, as for
// a connection that lasts the whole run). Each probe brackets CLOCK_REALTIME
// read by another process. Per 10 s it prints the tightest bracket's width and
// midpoint error and how far any bracket under --tight ns missed the child's
// reading; at the end, the maxima over the run.
//
//   clock_truth_bench [--seconds N] [--tight NS]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../../agent/src/agent_impl.hpp"  // realtime_minus_monotonic_ns(), as a hello measures it
#include "../../agent/src/clock/tick_clock.hpp"
#include "../../tests/agent/realtime_probe.hpp"
#include "inferscope/hot_path.hpp"

namespace hot = inferscope::agent::hot;
using inferscope::agent::detail::realtime_minus_monotonic_ns;
using inferscope::agent::detail::TickClock;
using inferscope::agent::detail::TickMap;

int main(int argc, char** argv) {
  int64_t seconds = 600, tight = 2'000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atoll(argv[++i]);
    } else if (a == "--tight" && i + 1 < argc) {
      tight = std::atoll(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: clock_truth_bench [--seconds N] [--tight NS]\n");
      return 2;
    }
  }
  if (seconds < 1 || tight < 1) {
    std::fprintf(stderr, "clock_truth_bench: --seconds and --tight must be positive\n");
    return 2;
  }
  inferscope::agent::testing::RealtimeProbe probe;  // forks: before anything else
  TickClock& clock = TickClock::instance();
  const bool tsc = clock.tsc();
  const int64_t offset = realtime_minus_monotonic_ns();
  std::printf("clock: %s\n", clock.description().c_str());
  std::printf("%8s %10s %12s %14s %16s\n", "t (s)", "probes", "tightest ns", "its error ns",
              "worst miss ns");

  const int64_t start = hot::monotonic_ns();
  const int64_t end = start + seconds * 1'000'000'000;
  int64_t next_report = start + 10'000'000'000;
  int64_t max_mid_error = 0, max_miss = 0, total = 0, judged = 0;
  // This interval's tightest bracket, and how far a tight one missed.
  int64_t best_width = INT64_MAX, best_error = 0, worst_miss = 0, probes = 0;
  for (int64_t now = start; now < end; now = hot::monotonic_ns()) {
    clock.recalibrate();  // what a shipper does before it drains
    const TickMap map = clock.map();
    for (int i = 0; i < 50; ++i) {
      const uint64_t t0 = hot::read_clock(tsc);
      const int64_t rt = probe.read();
      const uint64_t t1 = hot::read_clock(tsc);
      const int64_t lo = map.to_ns(t0) + offset, hi = map.to_ns(t1) + offset;
      ++probes;
      if (hi - lo < best_width) {
        best_width = hi - lo;
        best_error = rt - (lo + (hi - lo) / 2);
      }
      if (hi - lo <= tight) {
        ++judged;
        worst_miss = std::max({worst_miss, lo - rt, rt - hi});
      }
    }
    // Sleep off the rest of the 10 ms, as a shipper waits for its tick.
    timespec ts{0, 10'000'000};
    nanosleep(&ts, nullptr);
    if (hot::monotonic_ns() >= next_report) {
      std::printf("%8.0f %10lld %12lld %14lld %16lld\n",
                  static_cast<double>(hot::monotonic_ns() - start) / 1e9,
                  static_cast<long long>(probes), static_cast<long long>(best_width),
                  static_cast<long long>(best_error), static_cast<long long>(worst_miss));
      std::fflush(stdout);
      max_mid_error = std::max<int64_t>(max_mid_error, std::llabs(best_error));
      max_miss = std::max(max_miss, worst_miss);
      total += probes;
      best_width = INT64_MAX;
      best_error = worst_miss = probes = 0;
      next_report += 10'000'000'000;
    }
  }
  // The last, partial interval counts too.
  if (probes > 0) {
    max_mid_error = std::max<int64_t>(max_mid_error, std::llabs(best_error));
    max_miss = std::max(max_miss, worst_miss);
    total += probes;
  }
  const int64_t drift = realtime_minus_monotonic_ns() - offset;
  std::printf(
      "run: %lld s, %lld probes, %lld judged (bracket <= %lld ns); max |midpoint error| of the "
      "per-interval tightest %lld ns; worst miss of a judged bracket %lld ns; clock steps %llu; "
      "realtime - monotonic moved %lld ns\n",
      static_cast<long long>(seconds), static_cast<long long>(total),
      static_cast<long long>(judged), static_cast<long long>(tight),
      static_cast<long long>(max_mid_error), static_cast<long long>(max_miss),
      static_cast<unsigned long long>(clock.steps()), static_cast<long long>(drift));
  std::printf("%s\n", max_miss <= 1'000 ? "PASS: within 1 us" : "FAIL: more than 1 us off");
  return max_miss <= 1'000 ? 0 : 1;
}
