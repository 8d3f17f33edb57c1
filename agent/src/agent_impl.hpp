// Agent::Impl: the state shared by the recording threads and the shipper.
//
// Recording threads find their ring through a thread-local cache (agent.cpp);
// the first record of a thread registers a ring in a fixed array of
// config.max_threads slots. The shipper walks the slots without a lock: a slot
// is published (slot_count, release) only after its ring is built, and slots
// are never removed; a ring whose thread has exited is reused once drained.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>

#include "endpoint.hpp"
#include "inferscope/agent.hpp"
#include "ring_records.hpp"

namespace inferscope::agent {
namespace detail {
class Shipper;
class CuptiTracer;
class GpuTraceController;
}  // namespace detail

struct Agent::Impl {
  explicit Impl(Config c);
  ~Impl();

  Config config;
  bool enabled = false;  // a usable collector address was given
  bool nvtx = false;     // push NVTX ranges
  uint64_t serial = 0;   // unique per Agent in this process (thread-local cache key)
  detail::Endpoint endpoint;
  std::string host;
  uint32_t pid = 0;

  // [SECTION] thread rings
  std::mutex registry_mu;
  std::unique_ptr<std::shared_ptr<detail::ThreadRing>[]> slots;
  std::atomic<size_t> slot_count{0};
  // Records from threads that found no free slot (more than max_threads).
  std::array<std::atomic<uint64_t>, detail::kKinds> overflow_dropped{};

  // What ScopedRange's inline path reads (the Agent's gate_), re-published by
  // refresh_gate() when something it depends on changes (CUPTI loaded).
  hot::Gate* gate = nullptr;
  void refresh_gate();

  detail::ThreadRing* ring();  // this thread's ring; null: no slot (counted drop)
  detail::ThreadRing* register_thread();
  // A whole span (GPU activity from CUPTI) into the calling thread's ring.
  void record_full_span(const wire::Span& span);

  // [SECTION] hello
  mutable std::mutex model_mu;
  wire::Hello hello() const;  // with a fresh clock offset

  std::unique_ptr<detail::Shipper> shipper;
  // GPU tracing modes, bursts and captures (gpu_trace/); always present.
  std::unique_ptr<detail::GpuTraceController> gpu;
  // The same, published for the shipper thread (which starts before it exists).
  std::atomic<detail::GpuTraceController*> gpu_live{nullptr};
  // CUPTI once loaded (owned by gpu, never unset while the agent lives):
  // ScopedRange reads it on every range.
  std::atomic<detail::CuptiTracer*> tracer{nullptr};
  std::atomic<bool> shut_down{false};  // Agent::shutdown() ran
};

namespace detail {
// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, measured now.
int64_t realtime_minus_monotonic_ns();
}  // namespace detail

}  // namespace inferscope::agent
