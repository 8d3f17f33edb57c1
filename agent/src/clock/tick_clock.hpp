// The clock ScopedRange reads, and how its ticks become CLOCK_MONOTONIC ns.
//
// Chosen once per process (the first agent that records asks):
//   tsc  the CPU says the TSC is invariant (cpuid 0x80000007 EDX bit 8), the
//        kernel has not fallen back to hpet / acpi_pm (its sign of an unstable
//        TSC), and a
//        start-up calibration against CLOCK_MONOTONIC fits a straight line
//        within kMaxStartResidualNs (when the kernel's own clocksource is not
//        tsc, e.g. kvm-clock on a VM, that check is what vouches for it);
//   os   otherwise, or on other CPUs: clock_gettime(CLOCK_MONOTONIC), already ns.
// INFERSCOPE_CLOCK=tsc|os|auto overrides (tsc still calibrates; a TSC the CPU
// does not call invariant is used, with a warning).
//
// Calibration: a sample is (ticks, CLOCK_MONOTONIC ns) read as mono/tsc/mono,
// the tightest of a few tries, stamped at the midpoint. The shippers add a
// sample at most every kSampleInterval (recalibrate(), off the host thread)
// and keep the last kWindow; the least-squares line through them follows
// frequency drift and NTP slewing of CLOCK_MONOTONIC, and a record (converted
// within one flush interval of being taken) is always close to the samples.
// The map in use does not jump to each new line: it stays continuous where it
// is now and closes the gap over kSlewNs (slew_toward), so a parent range's end
// converted after a refit never lands before its child's converted earlier.
// A gap over kSnapNs (start-up) is closed at once. A sample far off the line
// (a TSC step: VM migration, suspend) restarts the window from it and is counted.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace inferscope::agent::detail {

// ns = base_ns + (ticks - base_ticks) * ns_per_tick. Identity for the os clock.
struct TickMap {
  uint64_t base_ticks = 0;
  int64_t base_ns = 0;
  double ns_per_tick = 1.0;
  bool identity = true;

  int64_t to_ns(uint64_t ticks) const {
    if (identity) return static_cast<int64_t>(ticks);
    const double d = static_cast<double>(static_cast<int64_t>(ticks - base_ticks)) * ns_per_tick;
    return base_ns + static_cast<int64_t>(d < 0 ? d - 0.5 : d + 0.5);
  }
};

struct TickSample {
  uint64_t ticks = 0;
  int64_t ns = 0;     // CLOCK_MONOTONIC at the midpoint of the bracket
  int64_t width = 0;  // the bracket: mono after - mono before
};

// What the CPU and kernel say (exposed for tests and the description).
bool cpu_has_invariant_tsc();
std::string kernel_clocksource();  // "" when unreadable
// Why the TSC is not even worth calibrating ("" when it is): not invariant, or
// the kernel runs on hpet / acpi_pm, which it does when it marked the TSC unstable.
std::string tsc_unusable(bool invariant, const std::string& clocksource);
// One calibration sample: the tightest bracket of `tries`.
TickSample take_tick_sample(int tries = 8);
// The least-squares line through samples (at least 2, distinct ticks).
TickMap fit_tick_map(const std::vector<TickSample>& samples);
// The map to use after a refit: equal to `current` at now_ticks (no jump for
// records converted on either side of the refit), equal to `fitted` horizon_ns
// later; `fitted` itself when they are more than TickClock::kSnapNs apart.
TickMap slew_toward(const TickMap& current, const TickMap& fitted, uint64_t now_ticks,
                    int64_t horizon_ns);

class TickClock {
 public:
  static constexpr int64_t kMaxStartResidualNs = 2'000;
  static constexpr int64_t kStepResidualNs = 20'000;
  static constexpr int64_t kSnapNs = 2'000;
  static constexpr int64_t kSlewNs = 200'000'000;           // 200 ms
  static constexpr int64_t kSampleIntervalNs = 10'000'000;  // 10 ms
  static constexpr size_t kWindow = 128;

  // The process-wide clock, chosen on first use (a ~2 ms calibration spin).
  static TickClock& instance();

  // A clock decided by `mode` ("auto", "tsc", "os"): the constructor behind
  // instance(), public for tests.
  explicit TickClock(const std::string& mode);

  bool tsc() const { return tsc_; }
  const std::string& description() const { return description_; }
  // The current map (a copy: the caller converts a whole drain with it).
  TickMap map() const;
  // Adds a sample when kSampleIntervalNs has passed since the last and refits.
  // Called by every shipper before it drains; cheap when not due.
  void recalibrate();
  // How often a sample was far off the line and restarted the window.
  uint64_t steps() const;

 private:
  void add_sample_locked(const TickSample& s);

  bool tsc_ = false;
  std::string description_;
  mutable std::mutex mu_;
  std::vector<TickSample> window_;  // oldest first, at most kWindow
  TickMap map_;
  uint64_t steps_ = 0;
};

}  // namespace inferscope::agent::detail
