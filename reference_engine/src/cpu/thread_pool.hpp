// A small fork-join pool for the CPU backend's own loops (GEMMs use OpenBLAS's
// threads). Workers sleep on a condition variable between jobs instead of
// spinning, because on a 2-core machine spinning workers (OpenMP's default)
// steal the cores OpenBLAS needs right after, which made steps 10x slower.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace inferscope::engine::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for i in [0, n), split into contiguous ranges over the threads;
  // runs inline when n is small or there is one thread.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                    int64_t min_per_thread = 1) {
    const int64_t parts = std::min<int64_t>(size(), n / std::max<int64_t>(1, min_per_thread));
    if (parts <= 1 || workers_.empty()) {
      if (n > 0) fn(0, n);
      return;
    }
    {
      std::lock_guard lock(mu_);
      job_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = static_cast<int>(parts - 1);
      ++generation_;
    }
    cv_.notify_all();
    fn(0, n / parts);  // the caller does part 0
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int64_t, int64_t)>* job;
      int64_t n, parts;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= parts_) continue;
        job = job_;
        n = n_;
        parts = parts_;
      }
      (*job)(n * index / parts, n * (index + 1) / parts);
      {
        std::lock_guard lock(mu_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0, parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace inferscope::engine::cpu
