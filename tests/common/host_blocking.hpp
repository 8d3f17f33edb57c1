// Did a host call block? Decided from what only blocking does, not from time.
//
// A thread that waits (a futex, a blocking write, a sleep, a page of memory the
// kernel must fetch) gives up the CPU *voluntarily*: the kernel counts that in
// the thread's ru_nvcsw. A thread that was merely preempted on a busy machine
// is counted in ru_nivcsw instead, however long it waited for a core. So a
// latency figure says how slow the calls were (printed, and kept in the
// benchmarks); the voluntary count says whether they ever waited (asserted).
//
//   BlockingMeter meter;              // per host thread
//   for (...) {
//     meter.begin();                  // outside yields and sleeps of the test itself
//     for (batch) agent.span(...);
//     meter.end();
//   }
//   EXPECT_EQ(meter.voluntary(), 0u);
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace inferscope::test_support {

struct ThreadSwitches {
  uint64_t voluntary = 0;    // gave up the CPU to wait: blocking
  uint64_t involuntary = 0;  // preempted: the machine was busy
};

// The calling thread's context switches so far (Linux RUSAGE_THREAD).
inline ThreadSwitches thread_switches() {
  rusage u{};
  ::getrusage(RUSAGE_THREAD, &u);
  return {static_cast<uint64_t>(u.ru_nvcsw), static_cast<uint64_t>(u.ru_nivcsw)};
}

// Sums the switches of the calling thread inside begin()/end() brackets.
class BlockingMeter {
 public:
  void begin() { start_ = thread_switches(); }
  void end() {
    const ThreadSwitches now = thread_switches();
    voluntary_ += now.voluntary - start_.voluntary;
    involuntary_ += now.involuntary - start_.involuntary;
  }
  uint64_t voluntary() const { return voluntary_; }
  uint64_t involuntary() const { return involuntary_; }

 private:
  ThreadSwitches start_;
  uint64_t voluntary_ = 0, involuntary_ = 0;
};

}  // namespace inferscope::test_support
