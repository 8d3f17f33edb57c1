// Did a host call block? Decided from what only blocking does, not from time.
//
// A thread that waits (a futex, a blocking write, a sleep) gives up the CPU
// *voluntarily*: the kernel counts that in the thread's ru_nvcsw. A thread
// merely preempted on a busy machine is counted in ru_nivcsw instead, however
// long it waited for a core. One more source of voluntary switches is not the
// code's doing: a page fault that must wait in the kernel's memory management
// (another thread of the process holding the mm lock for mmap/munmap, or a page
// reclaimed under memory pressure). Such a wait comes with a page fault in the
// same thread (ru_minflt / ru_majflt), while a wait the code asked for (a lock,
// a socket) comes with none. So a batch of calls is counted as *blocked* when it
// switched voluntarily without faulting; batches that did both are counted
// apart (printed, and bounded by what the kernel does, not by the agent).
//
//   BlockingMeter meter;              // per host thread
//   for (...) {
//     meter.begin();                  // outside yields and sleeps of the test itself
//     for (batch) agent.span(...);
//     meter.end();
//   }
//   EXPECT_EQ(meter.blocked_batches(), 0u);
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace inferscope::test_support {

struct ThreadCounters {
  uint64_t voluntary = 0;    // gave up the CPU to wait
  uint64_t involuntary = 0;  // preempted: the machine was busy
  uint64_t faults = 0;       // page faults, minor and major
};

// The calling thread's counters so far (Linux RUSAGE_THREAD).
inline ThreadCounters thread_counters() {
  rusage u{};
  ::getrusage(RUSAGE_THREAD, &u);
  return {static_cast<uint64_t>(u.ru_nvcsw), static_cast<uint64_t>(u.ru_nivcsw),
          static_cast<uint64_t>(u.ru_minflt + u.ru_majflt)};
}

// Sums the calling thread's switches inside begin()/end() brackets.
class BlockingMeter {
 public:
  void begin() { start_ = thread_counters(); }
  void end() {
    const ThreadCounters now = thread_counters();
    const uint64_t voluntary = now.voluntary - start_.voluntary;
    const uint64_t faults = now.faults - start_.faults;
    voluntary_ += voluntary;
    involuntary_ += now.involuntary - start_.involuntary;
    if (voluntary > 0) ++(faults > 0 ? fault_wait_batches_ : blocked_batches_);
  }
  // Batches that waited without a page fault: the code under test blocked.
  uint64_t blocked_batches() const { return blocked_batches_; }
  // Batches that waited inside a page fault (memory management, not the code).
  uint64_t fault_wait_batches() const { return fault_wait_batches_; }
  uint64_t voluntary() const { return voluntary_; }
  uint64_t involuntary() const { return involuntary_; }

 private:
  ThreadCounters start_;
  uint64_t voluntary_ = 0, involuntary_ = 0;
  uint64_t blocked_batches_ = 0, fault_wait_batches_ = 0;
};

}  // namespace inferscope::test_support
