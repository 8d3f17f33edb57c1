#include "tick_clock.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "inferscope/hot_path.hpp"

namespace inferscope::agent::detail {

bool cpu_has_invariant_tsc() {
#ifdef INFERSCOPE_HAVE_TSC
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0x80000000u, nullptr) < 0x80000007u) return false;
  __cpuid(0x80000007u, eax, ebx, ecx, edx);
  return (edx >> 8) & 1u;
#else
  return false;
#endif
}

std::string kernel_clocksource() {
  std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string s;
  if (!(f >> s)) return {};
  return s;
}

TickSample take_tick_sample(int tries) {
  TickSample best;
  best.width = INT64_MAX;
  for (int i = 0; i < tries; ++i) {
    const int64_t a = hot::monotonic_ns();
    const uint64_t t = hot::read_clock(true);
    const int64_t b = hot::monotonic_ns();
    if (b - a < best.width) best = {t, a + (b - a) / 2, b - a};
  }
  return best;
}

TickMap fit_tick_map(const std::vector<TickSample>& samples) {
  // Centered on the first sample so the sums stay small enough for doubles
  // to hold them to well under a nanosecond.
  const uint64_t t0 = samples.front().ticks;
  const int64_t n0 = samples.front().ns;
  double mx = 0, my = 0;
  for (const auto& s : samples) {
    mx += static_cast<double>(static_cast<int64_t>(s.ticks - t0));
    my += static_cast<double>(s.ns - n0);
  }
  const double n = static_cast<double>(samples.size());
  mx /= n;
  my /= n;
  double sxy = 0, sxx = 0;
  for (const auto& s : samples) {
    const double dx = static_cast<double>(static_cast<int64_t>(s.ticks - t0)) - mx;
    const double dy = static_cast<double>(s.ns - n0) - my;
    sxy += dx * dy;
    sxx += dx * dx;
  }
  TickMap m;
  m.identity = false;
  m.ns_per_tick = sxx > 0 ? sxy / sxx : 1.0;
  // Anchor at the centroid, rounded to whole ticks.
  const auto cx = static_cast<int64_t>(std::llround(mx));
  m.base_ticks = t0 + static_cast<uint64_t>(cx);
  m.base_ns = n0 + std::llround(my + (static_cast<double>(cx) - mx) * m.ns_per_tick);
  return m;
}

std::string tsc_unusable(bool invariant, const std::string& clocksource) {
  if (!invariant) return "TSC not invariant";
  // The kernel falls back to these when it has marked the TSC unstable (it
  // drifts between sockets or stops in deep C-states). A hypervisor's clock
  // (kvm-clock, xen, hyperv) is itself built on the TSC and says nothing
  // against it: there the start-up fit decides.
  if (clocksource == "hpet" || clocksource == "acpi_pm")
    return "kernel clocksource " + clocksource + ": the kernel does not trust the TSC";
  return {};
}

namespace {

// Start-up calibration: samples ~0.4 ms apart over ~2 ms.
std::vector<TickSample> start_samples() {
  std::vector<TickSample> out;
  for (int i = 0; i < 6; ++i) {
    if (i) {
      const int64_t until = hot::monotonic_ns() + 400'000;
      while (hot::monotonic_ns() < until) {
      }
    }
    out.push_back(take_tick_sample());
  }
  return out;
}

// The worst distance of a sample from the line, beyond its own bracket.
int64_t worst_residual(const std::vector<TickSample>& samples, const TickMap& m) {
  int64_t worst = 0;
  for (const auto& s : samples) {
    const int64_t r = std::llabs(m.to_ns(s.ticks) - s.ns) - s.width / 2;
    worst = std::max(worst, r);
  }
  return worst;
}

}  // namespace

TickClock::TickClock(const std::string& mode) {
  const bool force_tsc = mode == "tsc", force_os = mode == "os";
  std::string why;
#ifndef INFERSCOPE_HAVE_TSC
  if (!force_os) why = "no TSC on this CPU";
#endif
  if (force_os) {
    description_ = "os (INFERSCOPE_CLOCK=os)";
    return;
  }
  if (!why.empty()) {
    description_ = "os (" + why + ")";
    return;
  }
  const bool invariant = cpu_has_invariant_tsc();
  const std::string source = kernel_clocksource();
  if (const std::string no = tsc_unusable(invariant, source); !no.empty() && !force_tsc) {
    description_ = "os (" + no + ")";
    return;
  }
  std::vector<TickSample> samples = start_samples();
  const TickMap m = fit_tick_map(samples);
  const int64_t residual = worst_residual(samples, m);
  // A TSC runs at 0.1 to 10 GHz; anything else is not a clock we understand.
  const bool plausible = m.ns_per_tick > 0.1 && m.ns_per_tick < 10.0;
  if (!force_tsc && (!plausible || residual > kMaxStartResidualNs)) {
    description_ =
        "os (TSC disagrees with CLOCK_MONOTONIC by " + std::to_string(residual) + " ns at start)";
    return;
  }
  if (force_tsc && !plausible) {
    description_ = "os (INFERSCOPE_CLOCK=tsc, but the TSC runs at an implausible rate)";
    std::fprintf(stderr, "inferscope agent: %s\n", description_.c_str());
    return;
  }
  tsc_ = true;
  window_ = std::move(samples);
  map_ = m;
  char ghz[32];
  std::snprintf(ghz, sizeof ghz, "%.3f GHz", 1.0 / m.ns_per_tick);
  description_ = std::string("tsc (") + (force_tsc ? "INFERSCOPE_CLOCK=tsc, " : "") +
                 (invariant ? "invariant" : "NOT invariant") + ", " + ghz +
                 ", kernel clocksource " + (source.empty() ? "unknown" : source) + ")";
  if (force_tsc && !invariant)
    std::fprintf(stderr, "inferscope agent: using a TSC the CPU does not call invariant\n");
}

TickClock& TickClock::instance() {
  static TickClock clock([] {
    const char* env = std::getenv("INFERSCOPE_CLOCK");
    const std::string v = env ? env : "auto";
    if (v == "auto" || v == "tsc" || v == "os") return v;
    std::fprintf(stderr, "inferscope agent: INFERSCOPE_CLOCK=%s is not tsc, os or auto; auto\n",
                 v.c_str());
    return std::string("auto");
  }());
  return clock;
}

TickMap TickClock::map() const {
  std::lock_guard lock(mu_);
  return map_;
}

uint64_t TickClock::steps() const {
  std::lock_guard lock(mu_);
  return steps_;
}

void TickClock::recalibrate() {
  if (!tsc_) return;
  std::lock_guard lock(mu_);
  if (!window_.empty() && hot::monotonic_ns() - window_.back().ns < kSampleIntervalNs) return;
  add_sample_locked(take_tick_sample());
}

void TickClock::add_sample_locked(const TickSample& s) {
  const int64_t off = std::llabs(map_.to_ns(s.ticks) - s.ns) - s.width / 2;
  if (off > kStepResidualNs) {
    // The TSC (or CLOCK_MONOTONIC) stepped: the old samples describe another
    // line. Keep the rate, move the anchor to the new sample.
    ++steps_;
    if (steps_ == 1)
      std::fprintf(stderr,
                   "inferscope agent: TSC and CLOCK_MONOTONIC disagree by %lld ns; recalibrating\n",
                   static_cast<long long>(off));
    window_.clear();
    window_.push_back(s);
    map_.base_ticks = s.ticks;
    map_.base_ns = s.ns;
    return;
  }
  if (window_.size() >= kWindow) window_.erase(window_.begin());
  window_.push_back(s);
  if (window_.size() >= 2 && window_.back().ticks != window_.front().ticks)
    map_ = slew_toward(map_, fit_tick_map(window_), s.ticks, kSlewNs);
}

TickMap slew_toward(const TickMap& current, const TickMap& fitted, uint64_t now_ticks,
                    int64_t horizon_ns) {
  const int64_t here = current.to_ns(now_ticks);
  const int64_t error = fitted.to_ns(now_ticks) - here;
  if (std::llabs(error) > TickClock::kSnapNs || fitted.ns_per_tick <= 0) return fitted;
  TickMap m = fitted;
  m.base_ticks = now_ticks;
  m.base_ns = here;
  // Over horizon_ns the new line closes the gap to the fitted one.
  const double horizon_ticks = static_cast<double>(horizon_ns) / fitted.ns_per_tick;
  m.ns_per_tick = fitted.ns_per_tick + static_cast<double>(error) / horizon_ticks;
  return m;
}

}  // namespace inferscope::agent::detail
