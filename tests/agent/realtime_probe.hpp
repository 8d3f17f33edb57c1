// RealtimeProbe: another process that reads CLOCK_REALTIME when asked.
//
// The clock truth test and bench (clock_truth_test.cpp, bench/agent/
// clock_truth_bench.cpp) bracket each reading: take an agent timestamp, ask,
// wait for the answer, take another. The child reads its clock somewhere in
// between, so a correct agent clock puts the child's reading inside the
// bracket; a bracket widened by preemption only makes the sample less
// telling, never wrong. Child and parent talk through a shared anonymous
// mapping and spin: a pipe's round trip (tens of us) would swamp the 1 us the
// check is about.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>

namespace inferscope::agent::testing {

class RealtimeProbe {
 public:
  RealtimeProbe() {
    void* p =
        mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("RealtimeProbe: mmap failed");
    shared_ = new (p) Shared;
    const pid_t parent = getpid();
    child_ = fork();
    if (child_ < 0) throw std::runtime_error("RealtimeProbe: fork failed");
    if (child_ == 0) serve(parent);  // never returns
  }
  ~RealtimeProbe() {
    shared_->quit.store(true, std::memory_order_release);
    int status = 0;
    if (waitpid(child_, &status, 0) != child_) kill(child_, SIGKILL);
    munmap(shared_, sizeof(Shared));
  }
  RealtimeProbe(const RealtimeProbe&) = delete;
  RealtimeProbe& operator=(const RealtimeProbe&) = delete;

  // The child's CLOCK_REALTIME in ns, read after this call began and before it
  // returned. Throws if the child is gone.
  int64_t read() {
    const uint64_t id = ++next_;
    shared_->request.store(id, std::memory_order_release);
    for (uint64_t spins = 1;; ++spins) {
      if (shared_->answered.load(std::memory_order_acquire) == id) return shared_->realtime_ns;
      if ((spins & 0xfffff) == 0) {
        int status = 0;
        if (waitpid(child_, &status, WNOHANG) == child_)
          throw std::runtime_error("RealtimeProbe: the child process died");
      }
    }
  }

 private:
  struct Shared {
    alignas(64) std::atomic<uint64_t> request{0};
    alignas(64) std::atomic<uint64_t> answered{0};
    int64_t realtime_ns = 0;  // written before answered (release)
    std::atomic<bool> quit{false};
  };

  // Spins while requests come (a tight answer is the point), naps when idle
  // so a long run does not hold a core: the first request after a nap waits
  // for the wake-up and makes a wide bracket, which the caller discards.
  [[noreturn]] void serve(pid_t parent) {
    uint64_t last = 0, idle = 0;
    while (!shared_->quit.load(std::memory_order_acquire)) {
      const uint64_t id = shared_->request.load(std::memory_order_acquire);
      if (id != last) {
        timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        shared_->realtime_ns = int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
        shared_->answered.store(id, std::memory_order_release);
        last = id;
        idle = 0;
        continue;
      }
      if (++idle < (1u << 18)) continue;
      if (getppid() != parent) break;  // the parent died without telling us
      const timespec nap{0, 50'000};
      nanosleep(&nap, nullptr);
    }
    _exit(0);
  }

  Shared* shared_ = nullptr;
  pid_t child_ = -1;
  uint64_t next_ = 0;
};

}  // namespace inferscope::agent::testing
