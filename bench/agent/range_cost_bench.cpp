// range_cost_bench: what one range open + close costs, next to the floors it is
// made of, in one binary (issue 22 part 1). Tracy-free: the floors are what a
// Tracy zone costs at best (two inline rdtsc reads plus a queue store).
//
//   rdtsc pair            two __rdtsc() reads: the floor of any TSC profiler
//   clock_gettime pair    two vDSO clock_gettime(CLOCK_MONOTONIC)
//   steady_clock pair     two std::chrono::steady_clock::now()
//   inferscope shipping   ScopedRange on an Agent shipping to a loopback sink
//                         that reads and discards (the shipper thread runs)
//   inferscope off        ScopedRange on an Agent with collector "" (no NVTX)
//
// Each variant runs a loop of --iters ranges; the variants take turns
// (interleaved), --reps times, and the table shows the median ns per
// open+close, measured two ways: this thread's CPU time
// (CLOCK_THREAD_CPUTIME_ID: what the host pays, immune to being descheduled on
// a shared VM) and wall time. "ratio" is the CPU-time median over the rdtsc
// pair's. The shipping agent's drops (ring full because a tight loop outruns
// the shipper) are reported too: a dropped range costs about what a kept one does.
//
// The shipping agent's ring is the agent's default (Config::thread_buffer_bytes,
// 1 MiB) and a repetition writes less than it holds (20,000 ranges x 32 bytes),
// drained between repetitions off the clock: what a host thread meets, a ring
// that stays in its core's caches. --ring-mib 64 --iters 200000 is the earlier
// setup: each repetition then streams 6.4 MB through memory it has not touched
// for ten repetitions, so every cache line of the ring is a write miss
// (docs/agent.md has both setups side by side).
//
//   range_cost_bench [--iters N] [--reps R] [--ring-mib M] [--json FILE]
#include <time.h>
#include <x86intrin.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../common/discard_sink.hpp"
#include "inferscope/agent.hpp"

namespace ia = inferscope::agent;

namespace {

// Keeps a value alive without a memory round trip (google benchmark's
// DoNotOptimize, minus the dependency).
template <typename T>
inline void keep(const T& v) {
  asm volatile("" : : "r,m"(v) : "memory");
}

int64_t read_ns(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

using inferscope::bench::DiscardSink;

struct Variant {
  const char* name;
  void (*loop)(long iters);
  std::vector<double> cpu_ns, wall_ns;  // per open+close, one entry per repetition
};

ia::Agent* g_ship = nullptr;
ia::Agent* g_off = nullptr;
uint32_t g_name = 0;

void rdtsc_pair(long n) {
  for (long i = 0; i < n; ++i) {
    const uint64_t a = __rdtsc();
    const uint64_t b = __rdtsc();
    keep(a);
    keep(b);
  }
}

void clock_gettime_pair(long n) {
  for (long i = 0; i < n; ++i) {
    timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    keep(a.tv_nsec);
    keep(b.tv_nsec);
  }
}

void steady_clock_pair(long n) {
  for (long i = 0; i < n; ++i) {
    const auto a = std::chrono::steady_clock::now();
    const auto b = std::chrono::steady_clock::now();
    keep(a);
    keep(b);
  }
}

void range_shipping(long n) {
  ia::Agent& agent = *g_ship;
  for (long i = 0; i < n; ++i) {
    ia::ScopedRange r(agent, g_name);
    keep(i);
  }
}

void range_off(long n) {
  ia::Agent& agent = *g_off;
  for (long i = 0; i < n; ++i) {
    ia::ScopedRange r(agent, g_name);
    keep(i);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  long iters = 20'000;
  int reps = 101;
  size_t ring_mib = ia::Config{}.thread_buffer_bytes >> 20;
  const char* json = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      iters = std::atol(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (a == "--ring-mib" && i + 1 < argc) {
      ring_mib = static_cast<size_t>(std::atol(argv[++i]));
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: range_cost_bench [--iters N] [--reps R] [--ring-mib M] [--json FILE]\n");
      return 2;
    }
  }
  if (iters < 1000 || reps < 1 || ring_mib < 1) {
    std::fprintf(stderr, "range_cost_bench: --iters must be >= 1000, --reps and --ring-mib >= 1\n");
    return 2;
  }

  DiscardSink sink;
  g_name = ia::intern("bench.range");
  ia::Config ship;
  ship.collector = sink.address();
  ship.nvtx = false;
  ship.thread_buffer_bytes = ring_mib << 20;
  ia::Config off;
  off.collector = "";
  off.nvtx = false;
  ia::Agent agent_ship(ship);
  ia::Agent agent_off(off);
  g_ship = &agent_ship;
  g_off = &agent_off;
  agent_ship.flush(std::chrono::seconds(5));  // connected before the first measurement

  std::vector<Variant> variants = {
      {"rdtsc pair", rdtsc_pair, {}, {}},
      {"clock_gettime pair", clock_gettime_pair, {}, {}},
      {"steady_clock pair", steady_clock_pair, {}, {}},
      {"inferscope shipping", range_shipping, {}, {}},
      {"inferscope off", range_off, {}, {}},
  };
  for (auto& v : variants) v.loop(iters / 10);  // warm caches, register the thread's ring

  const ia::Stats before = agent_ship.stats();
  for (int r = 0; r < reps; ++r) {
    for (auto& v : variants) {
      const int64_t c0 = read_ns(CLOCK_THREAD_CPUTIME_ID), w0 = read_ns(CLOCK_MONOTONIC);
      v.loop(iters);
      const int64_t c1 = read_ns(CLOCK_THREAD_CPUTIME_ID), w1 = read_ns(CLOCK_MONOTONIC);
      v.cpu_ns.push_back(static_cast<double>(c1 - c0) / static_cast<double>(iters));
      v.wall_ns.push_back(static_cast<double>(w1 - w0) / static_cast<double>(iters));
    }
    // Let the shipper catch up between rounds, off the clock, so the ring's
    // fill level is the same at the start of every shipping loop.
    agent_ship.flush(std::chrono::seconds(5));
  }
  const ia::Stats after = agent_ship.stats();

  const double floor_cpu = median(variants[0].cpu_ns);
  std::printf(
      "ns per range open+close, median of %d interleaved repetitions of %ld, %zu MiB ring\n", reps,
      iters, ring_mib);
  std::printf("%-22s %12s %12s %8s\n", "variant", "thread CPU", "wall", "ratio");
  for (const auto& v : variants) {
    const double c = median(v.cpu_ns);
    std::printf("%-22s %12.2f %12.2f %7.2fx\n", v.name, c, median(v.wall_ns),
                floor_cpu > 0 ? c / floor_cpu : 0);
  }
  const double rec = static_cast<double>(after.records_recorded - before.records_recorded);
  const double drop = static_cast<double>(after.records_dropped - before.records_dropped);
  std::printf("shipping agent: %.0f recorded, %.0f dropped (%.2f%%)\n", rec, drop,
              rec + drop > 0 ? 100.0 * drop / (rec + drop) : 0.0);

  if (json) {
    FILE* f = std::fopen(json, "w");
    if (!f) {
      std::fprintf(stderr, "range_cost_bench: cannot write %s: %s\n", json, std::strerror(errno));
      return 1;
    }
    std::fprintf(f, "{\"iters\": %ld, \"reps\": %d, \"ring_mib\": %zu, \"variants\": [", iters,
                 reps, ring_mib);
    for (size_t i = 0; i < variants.size(); ++i)
      std::fprintf(f, "%s{\"name\": \"%s\", \"cpu_ns\": %.3f, \"wall_ns\": %.3f}", i ? ", " : "",
                   variants[i].name, median(variants[i].cpu_ns), median(variants[i].wall_ns));
    std::fprintf(f, "], \"recorded\": %.0f, \"dropped\": %.0f}\n", rec, drop);
    std::fclose(f);
  }
  return 0;
}
