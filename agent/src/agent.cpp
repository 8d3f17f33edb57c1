// The Agent's API and ScopedRange's slow path. Per record, a host thread finds
// its ring through a thread-local cache (hot::tl_thread), takes a timestamp and
// stores the record; ScopedRange does that inline (agent.hpp, hot_path.hpp).
// Registration of a new thread (once per thread and agent) is the slow path.
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "agent_impl.hpp"
#include "clock/tick_clock.hpp"
#include "cupti/cupti_tracer.hpp"
#include "gpu_trace/gpu_trace_controller.hpp"
#include "inferscope/wire/capture.hpp"
#include "intern.hpp"
#include "nvtx.hpp"
#include "shipper.hpp"

namespace inferscope::agent {

int64_t now_ns() {
  return hot::monotonic_ns();
}

std::string range_clock_description() {
  return detail::TickClock::instance().description();
}

namespace hot {
// Zero (no agent, no ring, depth 0) until the thread's first record.
constinit thread_local ThreadCache tl_thread{};
}  // namespace hot

namespace detail {

// Bracketed (monotonic, realtime, monotonic) and the tightest of 8 tries kept,
// so the offset is off by at most half a clock read, not a whole one: every
// range's Unix time depends on it (the clock truth test checks 1 us).
// NTP slews both clocks alike, so the offset changes only when CLOCK_REALTIME
// is stepped; a hello (each connection) measures it afresh.
int64_t realtime_minus_monotonic_ns() {
  int64_t best_width = INT64_MAX, best = 0;
  for (int i = 0; i < 8; ++i) {
    timespec rt;
    const int64_t a = hot::monotonic_ns();
    clock_gettime(CLOCK_REALTIME, &rt);
    const int64_t b = hot::monotonic_ns();
    if (b - a < best_width) {
      best_width = b - a;
      best = int64_t{rt.tv_sec} * 1'000'000'000 + rt.tv_nsec - (a + (b - a) / 2);
    }
  }
  return best;
}

namespace {

std::atomic<uint64_t> g_next_serial{1};

// [SECTION] thread-local state
// The fast cache (serial, ring, depth) is hot::tl_thread. A thread that found
// no free slot remembers that agent here, so it counts drops without taking
// the registry lock on every record.
thread_local uint64_t tl_overflow_serial = 0;
thread_local uint32_t tl_tid = 0;
thread_local uint32_t tl_overflow_retry = 0;
thread_local bool tl_tree_sampled = true;
thread_local uint64_t tl_rng = 0;

// Owns nothing; tells each agent that still exists that this thread is gone,
// so its ring can be reused once drained.
struct ThreadExit {
  struct Entry {
    uint64_t serial;
    std::weak_ptr<ThreadRing> ring;
  };
  std::vector<Entry> entries;
  ~ThreadExit() {
    for (auto& e : entries)
      if (auto r = e.ring.lock()) r->exited.store(true);
  }
};
thread_local ThreadExit tl_exit;

uint32_t current_tid() {
  if (tl_tid == 0) tl_tid = static_cast<uint32_t>(::syscall(SYS_gettid));
  return tl_tid;
}

// xorshift64*: per-thread, for span sampling.
uint64_t next_random() {
  if (tl_rng == 0) tl_rng = (uint64_t{current_tid()} << 32) ^ 0x9E3779B97F4A7C15ull;
  tl_rng ^= tl_rng >> 12;
  tl_rng ^= tl_rng << 25;
  tl_rng ^= tl_rng >> 27;
  return tl_rng * 0x2545F4914F6CDD1Dull;
}

}  // namespace
}  // namespace detail

using detail::ThreadRing;

// [SECTION] Impl

Agent::Impl::Impl(Config c) : config(std::move(c)) {
  serial = detail::g_next_serial.fetch_add(1);
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) std::strcpy(name, "unknown");
  host = name;
  pid = static_cast<uint32_t>(getpid());
  if (config.instance.empty()) config.instance = host + ":" + std::to_string(pid);
  config.max_threads = std::clamp<size_t>(config.max_threads, 1, 4096);
  config.thread_buffer_bytes = std::clamp<size_t>(config.thread_buffer_bytes, 64u << 10, 1u << 30);
  if (!(config.span_sample_rate >= 0.0)) config.span_sample_rate = 0.0;  // also NaN
  config.span_sample_rate = std::min(config.span_sample_rate, 1.0);
  if (config.flush_interval.count() <= 0) config.flush_interval = std::chrono::milliseconds(1);
  if (config.cupti && config.gpu_trace == GpuTraceMode::kOff)
    config.gpu_trace = GpuTraceMode::kFull;
  config.gpu_trace_burst = std::max(config.gpu_trace_burst, std::chrono::milliseconds(1));
  config.gpu_trace_period = std::max(config.gpu_trace_period, config.gpu_trace_burst);
  if (config.reconnect_max_backoff.count() < 50)
    config.reconnect_max_backoff = std::chrono::milliseconds(50);
  nvtx = config.nvtx && detail::nvtx_available();
  if (!config.collector.empty()) {
    std::string error;
    if (detail::parse_endpoint(config.collector, endpoint, error))
      enabled = true;
    else
      std::fprintf(stderr, "inferscope agent: %s; recording nothing\n", error.c_str());
  }
  slots = std::make_unique<std::shared_ptr<ThreadRing>[]>(config.max_threads);
}

Agent::Impl::~Impl() = default;

void Agent::Impl::refresh_gate() {
  if (!gate) return;
  const bool cupti = tracer.load(std::memory_order_acquire) != nullptr;
  uint8_t mode = hot::kGateSlow;
  if (!enabled && !nvtx && !cupti)
    mode = hot::kGateOff;
  else if (enabled && !nvtx && !cupti && config.span_sample_rate >= 1.0)
    mode = gate->tsc ? hot::kGateFastTsc : hot::kGateFast;
  gate->mode.store(mode, std::memory_order_relaxed);
}

inline ThreadRing* Agent::Impl::ring() {
  if (hot::tl_thread.serial == serial) [[likely]]
    return hot::tl_thread.ring;
  if (detail::tl_overflow_serial == serial) {
    // Now and then look again for a slot freed by an exited thread.
    if (++detail::tl_overflow_retry < 4096) return nullptr;
    detail::tl_overflow_serial = 0;
  }
  return register_thread();
}

ThreadRing* Agent::Impl::register_thread() {
  using namespace detail;
  const uint32_t tid = current_tid();
  auto& entries = tl_exit.entries;
  std::erase_if(entries, [](const ThreadExit::Entry& e) { return e.ring.expired(); });
  for (auto& e : entries) {
    if (e.serial != serial) continue;
    if (auto r = e.ring.lock()) {
      hot::tl_thread.serial = serial;
      hot::tl_thread.ring = r.get();
      return r.get();
    }
  }
  std::shared_ptr<ThreadRing> ring;
  try {
    std::lock_guard lock(registry_mu);
    const size_t n = slot_count.load(std::memory_order_relaxed);
    for (size_t i = 0; i < n && !ring; ++i) {
      if (slots[i]->exited.load() && slots[i]->ring.empty()) {
        ring = slots[i];
        ring->exited.store(false);
      }
    }
    if (!ring && n < config.max_threads) {
      ring = std::make_shared<ThreadRing>(config.thread_buffer_bytes);
      slots[n] = ring;
      slot_count.store(n + 1, std::memory_order_release);
    }
    if (ring) {
      ring->tid.store(tid);
      entries.push_back({serial, ring});
    }
  } catch (...) {
    ring.reset();  // out of memory: this thread's records are dropped and counted
  }
  tl_overflow_retry = 0;
  if (!ring) {
    tl_overflow_serial = serial;
    return nullptr;
  }
  hot::tl_thread.serial = serial;
  hot::tl_thread.ring = ring.get();
  return ring.get();
}

wire::Hello Agent::Impl::hello() const {
  wire::Hello h;
  h.service = config.service;
  h.instance = config.instance;
  h.host = host;
  h.pid = pid;
  h.rank = config.rank;
  h.world_size = config.world_size;
  {
    std::lock_guard lock(model_mu);
    h.model = config.model;
  }
  h.clock.realtime_minus_monotonic_ns = detail::realtime_minus_monotonic_ns();
  h.auth_token = config.auth_token;
  // Capture requests are handled whatever the mode (off refuses and counts them).
  h.capabilities = wire::kCapabilityCaptureRequests;
  return h;
}

namespace {

// A thread without a ring (more than max_threads): count the drop, and now
// and then look again for a slot freed by an exited thread.
void overflow(Agent::Impl& impl, wire::RecordKind kind) {
  impl.overflow_dropped[static_cast<size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
}

inline bool put(Agent::Impl* impl, wire::RecordKind kind, uint8_t sub, uint16_t count,
                const void* a, size_t alen, const void* b = nullptr, size_t blen = 0) {
  ThreadRing* r = impl->ring();
  if (!r) [[unlikely]] {
    overflow(*impl, kind);
    return false;
  }
  return r->put(kind, sub, count, a, alen, b, blen);
}

}  // namespace

void Agent::Impl::record_full_span(const wire::Span& span) {
  if (!enabled) return;
  put(this, wire::RecordKind::kSpan, detail::kSubFull, 0, &span, sizeof span);
}

// [SECTION] Agent

Agent::Agent(Config config) {
  try {
    impl_ = std::make_unique<Impl>(std::move(config));
    gate_.serial = impl_->serial;
    impl_->gate = &gate_;  // before the shipper thread starts: it reads gate->tsc
    if (impl_->enabled) {
      // Ranges store ticks of the process-wide clock (chosen and calibrated on
      // first use); the shipper converts them.
      gate_.tsc = detail::TickClock::instance().tsc();
      try {
        impl_->shipper = std::make_unique<detail::Shipper>(*impl_);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "inferscope agent: cannot start shipper (%s); recording nothing\n",
                     e.what());
        impl_->enabled = false;
      }
    }
    impl_->refresh_gate();
    impl_->gpu = std::make_unique<detail::GpuTraceController>(*impl_);
    impl_->gpu_live.store(impl_->gpu.get(), std::memory_order_release);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inferscope agent: disabled: %s\n", e.what());
    gate_.mode.store(hot::kGateOff);
    impl_.reset();
  } catch (...) {
    gate_.mode.store(hot::kGateOff);
    impl_.reset();
  }
}

Agent::~Agent() {
  if (!impl_) return;
  try {
    shutdown();
    impl_->shipper.reset();
  } catch (...) {
  }
}

Stats Agent::shutdown() {
  if (impl_ && !impl_->shut_down.exchange(true)) {
    if (impl_->gpu) impl_->gpu->stop();  // flushes the last GPU activity into the rings
    if (impl_->shipper)
      impl_->shipper->stop();  // final drain and flush, bounded by shutdown_timeout
  }
  return stats();
}

void Agent::span(uint32_t name_id, int64_t start_ns, int64_t end_ns, wire::SpanCategory category,
                 uint64_t request_id, uint16_t depth) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  detail::CpuSpanSlot s{start_ns,
                        end_ns,
                        request_id,
                        name_id,
                        detail::current_tid(),
                        depth,
                        static_cast<uint8_t>(category)};
  put(i, wire::RecordKind::kSpan, detail::kSubCompact, 0, &s, sizeof s);
}

void Agent::expert_load(uint64_t step, uint32_t layer, std::span<const uint32_t> routed,
                        uint32_t tokens, uint32_t dropped, uint32_t rerouted) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  if (routed.size() > wire::kMaxExperts) {  // the collector would reject it anyway
    overflow(*i, wire::RecordKind::kExpertLoad);
    return;
  }
  detail::ExpertLoadSlot s{step, now_ns(), layer, tokens, dropped, rerouted};
  put(i, wire::RecordKind::kExpertLoad, detail::kSubCompact, static_cast<uint16_t>(routed.size()),
      &s, sizeof s, routed.data(), routed.size_bytes());
}

void Agent::ep_step(const wire::ExpertParallelStep& s) {
  ep_step(s, s.rows_to_rank);
}

void Agent::ep_step(const wire::ExpertParallelStep& s, std::span<const uint32_t> rows_to_rank) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  if (rows_to_rank.size() > wire::kMaxEpRanks) rows_to_rank = {};  // totals still go
  detail::EpStepSlot m{s.step,        s.timestamp_ns == 0 ? now_ns() : s.timestamp_ns,
                       s.dispatch_ns, s.compute_ns,
                       s.combine_ns,  s.layer,
                       s.rows_sent,   s.rows_computed,
                       s.row_bytes};
  put(i, wire::RecordKind::kExpertParallel, 0, static_cast<uint16_t>(rows_to_rank.size()), &m,
      sizeof m, rows_to_rank.data(), rows_to_rank.size_bytes());
}

void Agent::memory(wire::MemoryKind kind, uint64_t used_bytes, uint64_t capacity_bytes) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  wire::MemorySample m{now_ns(), i->config.rank, kind, used_bytes, capacity_bytes};
  put(i, wire::RecordKind::kMemory, 0, 0, &m, sizeof m);
}

void Agent::prefix_cache(uint64_t attention_queried, uint64_t attention_hit, uint64_t ssm_queried,
                         uint64_t ssm_hit) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  wire::PrefixCacheSample m{now_ns(), attention_queried, attention_hit, ssm_queried, ssm_hit};
  put(i, wire::RecordKind::kPrefixCache, 0, 0, &m, sizeof m);
}

void Agent::stage(uint64_t request_id, wire::Stage stage, int64_t start_ns, int64_t end_ns,
                  wire::Device device, int64_t gpu_ns) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  wire::StageTiming m{request_id, stage, device, start_ns, end_ns, gpu_ns};
  put(i, wire::RecordKind::kStage, 0, 0, &m, sizeof m);
}

void Agent::request(const wire::RequestEvent& event) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  put(i, wire::RecordKind::kRequest, 0, 0, &event, sizeof event);
}

void Agent::counter(uint32_t name_id, double delta) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  wire::CounterSample m{now_ns(), name_id, false, delta};
  put(i, wire::RecordKind::kCounter, 0, 0, &m, sizeof m);
}

void Agent::gauge(uint32_t name_id, double value) {
  Impl* i = impl_.get();
  if (!i || !i->enabled) return;
  wire::CounterSample m{now_ns(), name_id, true, value};
  put(i, wire::RecordKind::kCounter, 0, 0, &m, sizeof m);
}

void Agent::set_model(const wire::ModelDescription& model) {
  Impl* i = impl_.get();
  if (!i) return;
  try {
    {
      std::lock_guard lock(i->model_mu);
      i->config.model = model;
    }
    if (i->shipper) i->shipper->model_changed();
  } catch (...) {
  }
}

bool Agent::flush(std::chrono::milliseconds timeout) {
  Impl* i = impl_.get();
  if (!i || !i->shipper) return true;
  try {
    if (auto* t = i->tracer.load()) t->flush();
    return i->shipper->flush(timeout);
  } catch (...) {
    return false;
  }
}

Stats Agent::stats() const {
  Stats s;
  const Impl* i = impl_.get();
  if (!i) return s;
  if (i->gpu) {
    s.gpu = i->gpu->stats();
    s.cupti_records_dropped = s.gpu.records_dropped;
  }
  const size_t n = i->slot_count.load(std::memory_order_acquire);
  for (size_t t = 0; t < n; ++t) s.records_recorded += i->slots[t]->ring.written();
  if (!i->shipper) return s;
  const auto dropped = i->shipper->dropped_by_kind();
  for (size_t k = 0; k < detail::kKinds; ++k) {
    s.dropped_by_kind[k] = dropped[k];
    s.records_dropped += dropped[k];
  }
  s.records_sent = i->shipper->records_sent.load();
  s.bytes_sent = i->shipper->bytes_sent.load();
  s.reconnects = i->shipper->reconnects.load();
  s.records_delivered = i->shipper->records_delivered.load();
  s.records_unconfirmed = i->shipper->records_unconfirmed.load();
  s.records_undelivered = i->shipper->records_undelivered.load();
  s.protocol_errors = i->shipper->protocol_errors.load();
  s.unacknowledged_bytes = i->shipper->kept_bytes.load();
  s.buffer_high_water_bytes = i->shipper->high_water();
  s.connected = i->shipper->connected.load();
  s.pending_bytes = i->shipper->pending_bytes.load();
  s.pending_high_water_bytes = i->shipper->pending_high_water.load();
  return s;
}

const Config& Agent::config() const {
  static const Config kEmpty{.collector = ""};
  return impl_ ? impl_->config : kEmpty;
}

bool Agent::cupti_active() const {
  return impl_ && impl_->tracer.load() != nullptr;
}

void Agent::set_gpu_trace_mode(GpuTraceMode mode) {
  if (!impl_ || !impl_->gpu || static_cast<uint8_t>(mode) > 3) return;
  try {
    impl_->gpu->set_mode(mode);
  } catch (...) {
  }
}

GpuTraceMode Agent::gpu_trace_mode() const {
  return impl_ && impl_->gpu ? impl_->gpu->mode() : GpuTraceMode::kOff;
}

void Agent::gpu_step() {
  if (impl_ && impl_->gpu) impl_->gpu->step();
}

Agent::CaptureResult Agent::request_gpu_capture(uint32_t steps, std::chrono::milliseconds duration,
                                                uint64_t tag) {
  if (!impl_ || !impl_->gpu) return CaptureResult::kRefusedOff;
  try {
    return impl_->gpu->request_capture(steps, duration, tag);
  } catch (...) {
    return CaptureResult::kRefusedOff;
  }
}

std::map<uint32_t, int64_t> Agent::gpu_time_by_range() const {
  detail::CuptiTracer* t = impl_ ? impl_->tracer.load() : nullptr;
  if (!t) return {};
  try {
    return t->gpu_time_by_range();
  } catch (...) {
    return {};
  }
}

// [SECTION] ScopedRange (the slow path; the fast one is inline in agent.hpp)

ScopedRange::SlowOpen ScopedRange::open_slow(Agent& agent, uint32_t name_id, uint64_t request_id) {
  Agent::Impl* i = agent.impl_.get();  // the gate is off without one
  SlowOpen o{0, hot::tl_thread.depth++, 0};
  bool sampled = false;
  if (i->enabled) {
    // Sampling decides per outermost range; nested ranges follow their root,
    // so a kept tree is always complete.
    if (o.depth == 0) {
      const double rate = i->config.span_sample_rate;
      detail::tl_tree_sampled =
          rate >= 1.0 ||
          (rate > 0.0 && static_cast<double>(detail::next_random() >> 11) * 0x1.0p-53 < rate);
    }
    sampled = detail::tl_tree_sampled;
  }
  if (i->nvtx) {
    detail::nvtx_push(detail::nvtx_string(name_id));
    o.flags |= kNvtxPushed;
  }
  if (detail::CuptiTracer* t = i->tracer.load(std::memory_order_relaxed)) {
    o.flags |= kRangePushed;
    if (t->push_range(name_id, request_id)) o.flags |= kCuptiPushed;
  }
  if (sampled) {  // no clock read for a range nobody records
    o.flags |= kSampled;
    i->ring();  // registers this thread on its first record, before the clock read
    o.start = hot::read_clock(agent.gate_.tsc);
  }
  return o;
}

void ScopedRange::close_slow(Agent& agent, uint64_t start, uint32_t name_id, uint64_t request_id,
                             uint16_t depth, uint8_t flags) {
  Agent::Impl* i = agent.impl_.get();
  const uint64_t end = (flags & kSampled) ? hot::read_clock(agent.gate_.tsc) : 0;
  if (flags & kRangePushed)
    i->tracer.load(std::memory_order_relaxed)->pop_range(flags & kCuptiPushed);
  if (flags & kNvtxPushed) detail::nvtx_pop();
  --hot::tl_thread.depth;
  if (!(flags & kSampled)) return;
  // The same ring open_slow() registered (a thread's ring outlives its ranges); null when the
  // thread has no slot (max_threads).
  if (ThreadRing* ring = i->ring())
    ring->put_range(start, end, name_id, request_id, depth);
  else
    overflow(*i, wire::RecordKind::kSpan);
}

}  // namespace inferscope::agent
