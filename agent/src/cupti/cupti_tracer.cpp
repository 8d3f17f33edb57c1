// CUPTI activity tracing: the only file that calls CUPTI.
//
// [SECTION] Clock     GPU timestamps are put on CLOCK_MONOTONIC by registering
//                     a timestamp callback (cuptiActivityRegisterTimestampCallback)
//                     that returns now_ns(); CUPTI then reports every activity
//                     timestamp in that time base. If the callback cannot be
//                     registered (older CUPTI), we measure the offset between
//                     cuptiGetTimestamp() and now_ns() once at start and add it.
// [SECTION] Buffers   CUPTI asks for buffers from its own threads; they come from
//                     a fixed pool (kPoolBuffers x kBufferBytes). With the pool
//                     empty we hand CUPTI no buffer, so it drops records and
//                     counts them (cuptiActivityGetNumDroppedRecords): bounded
//                     memory, counted loss.
// [SECTION] Ranges    ScopedRange pushes (name_id << 32 | request_id low bits)
//                     on a thread-local stack (no CUPTI call). With launch
//                     callbacks on (the default), CUPTI calls us at the entry of
//                     every runtime and driver launch (cudaLaunchKernel*,
//                     cuLaunchKernel*, cooperative, graph launches) on the
//                     launching thread; we store correlation id -> top of that
//                     stack in a lock-free table, and each kernel record finds
//                     its range there by its correlation id. Driver launches
//                     (cuBLAS's nvjet kernels, Triton) are attributed the same way.
//                     The older path (kGpuExternalCorrelation, needs the RUNTIME
//                     or DRIVER activity kind) pushes CUPTI external correlation
//                     ids instead and is kept to measure its cost. Kernel spans
//                     carry the arg "range" = the enclosing range's name id (and
//                     "layer" when that name was tied to one by intern_layer), and
//                     the tracer sums kernel time per range name
//                     (Agent::gpu_time_by_range()).
// [SECTION] Graphs    Kernels replayed from a CUDA graph are launched by one
//                     cudaGraphLaunch, so the launch table would give them all
//                     the range around the replay. Instead, the resource
//                     callbacks GRAPHNODE_CREATED (on the capturing thread, inside
//                     the captured launch) record graph node id -> the range open
//                     then, and GRAPHNODE_CLONED (instantiation copies nodes)
//                     carries it to the clone; a kernel record with a
//                     graphNodeId takes that range first. These callbacks stay
//                     on between bursts: they fire per node created (at capture
//                     and instantiation), never per launch. Bounded map.
// [SECTION] Switching enable() turns on only the configured kinds and the
//                     launch callbacks; disable() turns each kind off, flushes
//                     (forced) and disables both callback domains, keeping the
//                     subscriber, so nothing of CUPTI runs per launch between bursts.
// [SECTION] Detach    Switching off does not give back everything: once CUPTI
//                     has traced (and even attached and idle), launches stay
//                     ~60 % slower (docs/gpu.md). With Config::gpu_trace_detach
//                     (the default), disable() also asks for a dynamic detach,
//                     and so does park() right after start() when the mode does
//                     not trace at once: the runtime and driver callback domains go on, and
//                     the first API *exit* callback on any thread calls
//                     cuptiFinalize() (NVIDIA's documented way; Kineto does the
//                     same), holding g_cupti_mu so that no other thread of ours
//                     is inside CUPTI. Every CUPTI call of ours that may overlap
//                     it (enable, disable, flush, stop) holds g_cupti_mu; the
//                     callback only try_locks it, so it never waits on a thread
//                     that waits on CUDA. enable() attaches again (callbacks,
//                     clock, subscriber, graph callbacks), or cancels a detach
//                     still pending. Graph nodes created while detached are not
//                     seen, so their replays are attributed by launch instead.
#include "cupti_tracer.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../intern.hpp"
#include "cupti_api.hpp"

namespace inferscope::agent::detail {
namespace {

constexpr size_t kBufferBytes = 1u << 20;
constexpr size_t kPoolBuffers = 16;
constexpr size_t kMaxCorrelations = 1u << 16;  // pending runtime-call -> range links
constexpr CUpti_ExternalCorrelationKind kExternalKind = CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0;
constexpr size_t kLaunchSlots = 1u << 17;    // correlation id -> range, by id modulo
constexpr uint32_t kMaxRangeDepth = 64;      // deeper ranges are not attributed separately
constexpr size_t kMaxGraphNodes = 1u << 16;  // graph node id -> range links kept

// Each thread's open ranges (name_id << 32 | request low bits), innermost last.
thread_local uint64_t tl_ranges[kMaxRangeDepth];
thread_local uint32_t tl_range_depth = 0;

// The launch calls whose entry callbacks record correlation id -> range.
constexpr CUpti_CallbackId kRuntimeLaunches[] = {
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunch_v3020,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunch_ptsz_v7000,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_v7000,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_ptsz_v7000,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_v11060,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_ptsz_v11060,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernel_v9000,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernel_ptsz_v9000,
    CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernelMultiDevice_v9000,
    CUPTI_RUNTIME_TRACE_CBID_cudaGraphLaunch_v10000,
    CUPTI_RUNTIME_TRACE_CBID_cudaGraphLaunch_ptsz_v10000,
};
constexpr CUpti_CallbackId kDriverLaunches[] = {
    CUPTI_DRIVER_TRACE_CBID_cuLaunch,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchGrid,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchGridAsync,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernelMultiDevice,
    CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch,
    CUPTI_DRIVER_TRACE_CBID_cuGraphLaunch_ptsz,
};

// correlation id -> range, written by launching threads, read by the buffer
// thread. A slot is (id + 1, range): the reader takes the range only when the
// id matches, so a slot overwritten by a launch 2^17 ids later is a miss (the
// kernel stays unattributed), never a wrong range.
struct LaunchSlot {
  std::atomic<uint64_t> key{0};
  std::atomic<uint64_t> range{0};
};

// Set once by CuptiTracer::start() before any tracer exists; never unset.
const CuptiApi* g_api = nullptr;
const CuptiApi& api() {
  return *g_api;
}

const char* cupti_error(CUptiResult r) {
  const char* s = nullptr;
  api().cuptiGetResultString(r, &s);
  return s ? s : "unknown CUPTI error";
}

uint64_t monotonic_timestamp() {
  return static_cast<uint64_t>(now_ns());
}

class Tracer;
// Held by every thread of ours that calls into CUPTI where a detach may
// overlap; the detaching callback try_locks it ([SECTION] Detach).
std::mutex g_cupti_mu;
bool g_attached = false;                    // guarded by g_cupti_mu
std::atomic<bool> g_detach_pending{false};  // written under g_cupti_mu
std::atomic<uint64_t> g_detaches{0}, g_reattaches{0}, g_detach_errors{0};
// True on a thread while it holds g_cupti_mu: a callback CUPTI might run on
// that same thread (from inside our own CUPTI call) must not try_lock it again.
thread_local bool tl_holds_cupti = false;
struct CuptiLock {
  CuptiLock() : lock(g_cupti_mu) { tl_holds_cupti = true; }
  ~CuptiLock() { tl_holds_cupti = false; }
  CuptiLock(const CuptiLock&) = delete;
  CuptiLock& operator=(const CuptiLock&) = delete;
  std::lock_guard<std::mutex> lock;
};
std::mutex g_mu;             // guards g_tracer against the CUPTI callbacks
Tracer* g_tracer = nullptr;  // CUPTI is process-wide: one tracer at a time
// The tracer the launch callbacks write to: set while one exists, read without
// g_mu on every launch (callbacks are on only between enable and disable).
std::atomic<Tracer*> g_launch_tracer{nullptr};
// CUPTI allows one subscriber per process: made once and kept for every
// tracer, until a detach (which destroys it). Guarded by g_cupti_mu.
CUpti_SubscriberHandle g_subscriber = nullptr;
bool g_timestamp_callback = true;  // false: CUPTI's own clock, offset measured per tracer

// A fixed pool of 8-byte aligned buffers, never freed (CUPTI may hold one past
// a tracer's life until its final flush).
struct BufferPool {
  std::mutex mu;
  std::vector<uint8_t*> free;
  size_t created = 0;

  uint8_t* take() {
    std::lock_guard lock(mu);
    if (!free.empty()) {
      uint8_t* b = free.back();
      free.pop_back();
      return b;
    }
    if (created == kPoolBuffers) return nullptr;
    ++created;
    return static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  }
  void give(uint8_t* b) {
    if (!b) return;
    std::lock_guard lock(mu);
    free.push_back(b);
  }
};
BufferPool& pool() {
  static BufferPool* p = new BufferPool;  // leaked on purpose, see above
  return *p;
}

class Tracer final : public CuptiTracer {
 public:
  Tracer(Agent::Impl& impl, uint32_t kinds) : impl_(impl), kinds_(kinds) {
    range_key_ = intern("range");
    bytes_key_ = intern("bytes");
    capture_key_ = intern("capture");
  }

  bool begin() {
    CuptiLock cupti;
    if (!attach()) return false;
    if (!g_timestamp_callback) {
      uint64_t gpu = 0;
      api().cuptiGetTimestamp(&gpu);
      offset_ns_ = now_ns() - static_cast<int64_t>(gpu);
    }
    if (kinds_ & kGpuLaunchCallbacks) launches_ = std::make_unique<LaunchSlot[]>(kLaunchSlots);
    return true;
  }

  // With g_cupti_mu held: makes CUPTI ready to record (clock, buffer callbacks,
  // subscriber, graph callbacks) if it is not, i.e. the first time in the
  // process and after a detach; cancels a detach still pending. These are
  // process-wide CUPTI settings, which a detach throws away.
  bool attach() {
    if (g_detach_pending.load(std::memory_order_relaxed)) cancel_detach();
    if (!g_attached) {
      const bool again = attached_before_;
      CUptiResult ts = api().cuptiActivityRegisterTimestampCallback
                           ? api().cuptiActivityRegisterTimestampCallback(monotonic_timestamp)
                           : CUPTI_ERROR_NOT_SUPPORTED;
      if (ts != CUPTI_SUCCESS && g_timestamp_callback) {
        std::fprintf(stderr,
                     "inferscope agent: CUPTI timestamp callback unavailable (%s); using a "
                     "measured clock offset\n",
                     cupti_error(ts));
        g_timestamp_callback = false;
      }
      // Runtime-call records name their thread by gettid(), like the agent's CPU
      // tracks, so launches land on the same track as the ranges around them.
      if (api().cuptiSetThreadIdType)
        api().cuptiSetThreadIdType(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM);
      const CUptiResult r = api().cuptiActivityRegisterCallbacks(&Tracer::buffer_requested,
                                                                 &Tracer::buffer_completed);
      if (r != CUPTI_SUCCESS) {
        std::fprintf(stderr, "inferscope agent: CUPTI disabled: %s\n", cupti_error(r));
        if (again) g_detach_errors.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      g_attached = true;
      attached_before_ = true;
      if (again) g_reattaches.fetch_add(1, std::memory_order_relaxed);
    }
    if ((kinds_ & kGpuLaunchCallbacks) && !subscribe()) {
      if (!callbacks_warned_)
        std::fprintf(stderr,
                     "inferscope agent: CUPTI launch callbacks unavailable; kernels will not be "
                     "attributed to ranges\n");
      callbacks_warned_ = true;
      kinds_ &= ~uint32_t{kGpuLaunchCallbacks};
    }
    return true;
  }

  // With g_cupti_mu held: the process's one subscriber (made if needed), with
  // the graph-node callbacks on. Graph capture usually happens once, long
  // before any burst: these stay on while attached (per node created, not per
  // launch).
  static bool subscribe() {
    if (!api().cuptiSubscribe || !api().cuptiEnableCallback || !api().cuptiEnableDomain)
      return false;
    if (!g_subscriber) {
      if (api().cuptiSubscribe(&g_subscriber, &Tracer::on_callback, nullptr) != CUPTI_SUCCESS) {
        g_subscriber = nullptr;
        return false;
      }
    }
    if (api().cuptiGetGraphNodeId) {
      api().cuptiEnableCallback(1, g_subscriber, CUPTI_CB_DOMAIN_RESOURCE,
                                CUPTI_CBID_RESOURCE_GRAPHNODE_CREATED);
      api().cuptiEnableCallback(1, g_subscriber, CUPTI_CB_DOMAIN_RESOURCE,
                                CUPTI_CBID_RESOURCE_GRAPHNODE_CLONED);
    }
    return true;
  }

  // With g_cupti_mu held: asks the next API exit callback to detach CUPTI.
  void request_detach() {
    if (!g_attached || !api().cuptiFinalize) {
      if (!api().cuptiFinalize && !detach_warned_) {
        std::fprintf(stderr, "inferscope agent: this CUPTI has no cuptiFinalize; not detaching\n");
        detach_warned_ = true;
      }
      return;
    }
    if (!subscribe()) {
      g_detach_errors.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    g_detach_pending.store(true, std::memory_order_release);
    api().cuptiEnableDomain(1, g_subscriber, CUPTI_CB_DOMAIN_RUNTIME_API);
    api().cuptiEnableDomain(1, g_subscriber, CUPTI_CB_DOMAIN_DRIVER_API);
  }
  // With g_cupti_mu held: a detach asked for and not yet done is called off.
  static void cancel_detach() {
    g_detach_pending.store(false, std::memory_order_release);
    if (g_subscriber) {
      api().cuptiEnableDomain(0, g_subscriber, CUPTI_CB_DOMAIN_RUNTIME_API);
      api().cuptiEnableDomain(0, g_subscriber, CUPTI_CB_DOMAIN_DRIVER_API);
    }
  }
  // At a runtime or driver API exit, on whatever thread made the call: the
  // detach itself. try_lock: if one of our threads is inside CUPTI now, the
  // next API exit tries again.
  static void detach_now() {
    if (tl_holds_cupti) return;
    std::unique_lock lock(g_cupti_mu, std::try_to_lock);
    if (!lock.owns_lock() || !g_detach_pending.load(std::memory_order_acquire)) return;
    g_detach_pending.store(false, std::memory_order_release);
    // disable() flushed already; forced again for anything CUPTI still holds.
    api().cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    if (api().cuptiFinalize() == CUPTI_SUCCESS) {
      g_attached = false;
      g_subscriber = nullptr;  // finalize destroyed it
      g_detaches.fetch_add(1, std::memory_order_relaxed);
    } else {
      g_detach_errors.fetch_add(1, std::memory_order_relaxed);
      cancel_detach();
    }
  }

  // The activity kinds for this tracer's GpuTraceKind bits.
  std::vector<CUpti_ActivityKind> activity_kinds() const {
    std::vector<CUpti_ActivityKind> k;
    if (kinds_ & kGpuKernels) k.push_back(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    if (kinds_ & kGpuMemcpy) k.push_back(CUPTI_ACTIVITY_KIND_MEMCPY);
    if (kinds_ & kGpuMemset) k.push_back(CUPTI_ACTIVITY_KIND_MEMSET);
    if (kinds_ & kGpuRuntime) k.push_back(CUPTI_ACTIVITY_KIND_RUNTIME);
    if (kinds_ & kGpuDriver) k.push_back(CUPTI_ACTIVITY_KIND_DRIVER);
    if (kinds_ & kGpuExternalCorrelation) k.push_back(CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION);
    return k;
  }

  bool enable(uint64_t tag) override {
    if (enabled_) disable();
    CuptiLock cupti;
    if (!attach()) {
      std::lock_guard lock(mu_);
      ++counters_.enable_errors;
      return false;
    }
    tag_.store(tag, std::memory_order_relaxed);
    if ((kinds_ & kGpuLaunchCallbacks) && g_subscriber) {
      for (CUpti_CallbackId cb : kRuntimeLaunches)
        api().cuptiEnableCallback(1, g_subscriber, CUPTI_CB_DOMAIN_RUNTIME_API, cb);
      for (CUpti_CallbackId cb : kDriverLaunches)
        api().cuptiEnableCallback(1, g_subscriber, CUPTI_CB_DOMAIN_DRIVER_API, cb);
    }
    for (CUpti_ActivityKind k : activity_kinds()) {
      const CUptiResult r = api().cuptiActivityEnable(k);
      if (r == CUPTI_SUCCESS) continue;
      std::lock_guard lock(mu_);
      if (counters_.enable_errors++ == 0)
        std::fprintf(stderr, "inferscope agent: CUPTI activity kind %d not enabled: %s\n",
                     static_cast<int>(k), cupti_error(r));
      if (k == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
        enabled_ = true;  // so that switch_off() undoes what did switch on
        switch_off();
        return false;
      }
    }
    ext_push_.store((kinds_ & kGpuExternalCorrelation) != 0, std::memory_order_relaxed);
    enabled_ = true;
    return true;
  }

  void disable() override {
    if (!enabled_) return;
    CuptiLock cupti;
    switch_off();
    if (impl_.config.gpu_trace_detach && !stopped_) request_detach();
  }

  // Before the controller thread runs (so enabled_ is ours to read): a pending
  // detach that the first window comes before is called off by its enable().
  void park() override {
    if (enabled_ || stopped_ || !impl_.config.gpu_trace_detach) return;
    CuptiLock cupti;
    request_detach();
  }

  // With g_cupti_mu held.
  void switch_off() {
    if (!enabled_) return;
    enabled_ = false;
    ext_push_.store(false, std::memory_order_relaxed);
    if (!g_attached) return;  // nothing can be on
    for (CUpti_ActivityKind k : activity_kinds()) api().cuptiActivityDisable(k);
    if (g_subscriber) {
      api().cuptiEnableDomain(0, g_subscriber, CUPTI_CB_DOMAIN_RUNTIME_API);
      api().cuptiEnableDomain(0, g_subscriber, CUPTI_CB_DOMAIN_DRIVER_API);
    }
    // Everything recorded so far, partial buffers included, reaches the rings
    // before the tag changes.
    api().cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  }

  bool enabled() const override { return enabled_; }

  void flush() override {
    CuptiLock cupti;
    if (g_attached) api().cuptiActivityFlushAll(0);
  }

  void stop() override {
    if (stopped_) return;
    CuptiLock cupti;
    stopped_ = true;
    switch_off();
    if (g_attached) {
      api().cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
      // The subscriber stays: CUPTI allows one per process, and unsubscribing
      // while a launch callback may still run on another thread is a race. Its
      // domains are off (a pending detach keeps runtime/driver on until it is
      // done), so it costs nothing.
      if (g_subscriber) api().cuptiEnableDomain(0, g_subscriber, CUPTI_CB_DOMAIN_RESOURCE);
      // An agent that goes away detaches CUPTI too (any mode, full included): attached and
      // idle, CUPTI kept decode 30 % slower after the full-mode agents of gpu_bench were
      // destroyed (H100, 2026-12-07). The detach runs at the next API exit on any thread and
      // touches only the globals (g_tracer is null by then).
      if (impl_.config.gpu_trace_detach) request_detach();
    }
    g_launch_tracer.store(nullptr, std::memory_order_release);
    std::lock_guard lock(g_mu);
    if (g_tracer == this) g_tracer = nullptr;
  }

  ~Tracer() override { stop(); }

  bool push_range(uint32_t name_id, uint64_t request_id) override {
    const uint64_t v = (uint64_t{name_id} << 32) | (request_id & 0xffffffffu);
    if (tl_range_depth < kMaxRangeDepth) tl_ranges[tl_range_depth] = v;
    ++tl_range_depth;
    if (!ext_push_.load(std::memory_order_relaxed)) return false;
    api().cuptiActivityPushExternalCorrelationId(kExternalKind, v);
    return true;
  }
  void pop_range(bool cupti_pushed) override {
    if (tl_range_depth > 0) --tl_range_depth;
    if (!cupti_pushed) return;
    uint64_t last = 0;
    api().cuptiActivityPopExternalCorrelationId(kExternalKind, &last);
  }

  std::map<uint32_t, int64_t> gpu_time_by_range() override {
    std::lock_guard lock(mu_);
    return gpu_time_;
  }
  CuptiCounters counters() override {
    CuptiCounters c;
    {
      std::lock_guard lock(mu_);
      c = counters_;
    }
    c.detaches = g_detaches.load(std::memory_order_relaxed);
    c.reattaches = g_reattaches.load(std::memory_order_relaxed);
    c.detach_errors = g_detach_errors.load(std::memory_order_relaxed);
    c.detach_pending = g_detach_pending.load(std::memory_order_relaxed);
    return c;
  }

 private:
  // A launch API's entry, on the launching thread: remember which range it is in.
  static void CUPTIAPI on_callback(void*, CUpti_CallbackDomain domain, CUpti_CallbackId id,
                                   const void* data) {
    if (g_detach_pending.load(std::memory_order_acquire) &&
        (domain == CUPTI_CB_DOMAIN_RUNTIME_API || domain == CUPTI_CB_DOMAIN_DRIVER_API)) {
      if (static_cast<const CUpti_CallbackData*>(data)->callbackSite == CUPTI_API_EXIT)
        detach_now();
      return;
    }
    if (domain == CUPTI_CB_DOMAIN_RESOURCE) {
      // Resource callbacks get a CUpti_ResourceData; the graph data hangs off
      // its resourceDescriptor. (Reading the ResourceData itself as graph data
      // handed CUPTI a garbage node pointer: the SIGSEGV of the first GPU run.)
      const auto* res = static_cast<const CUpti_ResourceData*>(data);
      on_graph_node(id,
                    res ? static_cast<const CUpti_GraphData*>(res->resourceDescriptor) : nullptr);
      return;
    }
    const auto* cb = static_cast<const CUpti_CallbackData*>(data);
    if (cb->callbackSite != CUPTI_API_ENTER || tl_range_depth == 0) return;
    Tracer* t = g_launch_tracer.load(std::memory_order_acquire);
    if (!t || !t->launches_) return;
    const uint32_t top = std::min(tl_range_depth, kMaxRangeDepth) - 1;
    LaunchSlot& slot = t->launches_[cb->correlationId % kLaunchSlots];
    slot.range.store(tl_ranges[top], std::memory_order_relaxed);
    slot.key.store(uint64_t{cb->correlationId} + 1, std::memory_order_release);
  }

  // A graph node created (during stream capture: on the capturing thread,
  // inside the launch that made it) or cloned (instantiation).
  static void on_graph_node(CUpti_CallbackId id, const CUpti_GraphData* g) {
    Tracer* t = g_launch_tracer.load(std::memory_order_acquire);
    if (!t || !g || !g->node) return;
    uint64_t node = 0;
    if (api().cuptiGetGraphNodeId(g->node, &node) != CUPTI_SUCCESS) return;
    if (id == CUPTI_CBID_RESOURCE_GRAPHNODE_CREATED) {
      if (tl_range_depth == 0) return;
      t->remember_node(node, tl_ranges[std::min(tl_range_depth, kMaxRangeDepth) - 1]);
    } else if (id == CUPTI_CBID_RESOURCE_GRAPHNODE_CLONED && g->originalNode) {
      uint64_t original = 0;
      if (api().cuptiGetGraphNodeId(g->originalNode, &original) != CUPTI_SUCCESS) return;
      std::lock_guard lock(t->graph_mu_);
      auto it = t->graph_ranges_.find(original);
      if (it == t->graph_ranges_.end()) return;
      const uint64_t range = it->second;
      if (t->graph_ranges_.size() < kMaxGraphNodes) t->graph_ranges_[node] = range;
    }
  }
  void remember_node(uint64_t node, uint64_t range) {
    std::lock_guard lock(graph_mu_);
    if (graph_ranges_.size() < kMaxGraphNodes) graph_ranges_[node] = range;
  }
  bool graph_range(uint64_t node, uint64_t& range) {
    if (node == 0) return false;
    std::lock_guard lock(graph_mu_);
    auto it = graph_ranges_.find(node);
    if (it == graph_ranges_.end()) return false;
    range = it->second;
    return true;
  }

  // The range a launch callback recorded for this correlation id, if any.
  bool launch_range(uint32_t correlation, uint64_t& range) const {
    if (!launches_) return false;
    const LaunchSlot& slot = launches_[correlation % kLaunchSlots];
    if (slot.key.load(std::memory_order_acquire) != uint64_t{correlation} + 1) return false;
    range = slot.range.load(std::memory_order_relaxed);
    return slot.key.load(std::memory_order_acquire) == uint64_t{correlation} + 1;
  }

  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = pool().take();
    *size = *buffer ? kBufferBytes : 0;
    *max_records = 0;
  }

  static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer,
                                        size_t /*size*/, size_t valid) {
    {
      std::lock_guard lock(g_mu);
      if (g_tracer) g_tracer->process(ctx, stream, buffer, valid);
    }
    pool().give(buffer);
  }

  uint32_t name_for(const char* s) {
    if (!s) return 0;
    auto it = names_.find(s);
    if (it != names_.end()) return it->second;
    const uint32_t id = intern(s);
    if (names_.size() < 4096) names_.emplace(s, id);
    return id;
  }

  int64_t ts(uint64_t t) const { return static_cast<int64_t>(t) + offset_ns_; }

  // Called with g_mu held, from CUPTI's thread (or the thread that flushes).
  void process(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t valid) {
    std::lock_guard lock(mu_);
    const uint64_t tag = tag_.load(std::memory_order_relaxed);
    // Pass 1: runtime-call -> range links (a kernel may sit before its link in a buffer).
    CUpti_Activity* rec = nullptr;
    while (valid && api().cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
      if (rec->kind != CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION) continue;
      auto* ext = reinterpret_cast<CUpti_ActivityExternalCorrelation*>(rec);
      if (ext->externalKind != kExternalKind) continue;
      if (correlation_.size() >= kMaxCorrelations) correlation_.clear();  // bounded
      correlation_[ext->correlationId] = ext->externalId;
    }
    // Pass 2: the activity itself, as wire spans.
    rec = nullptr;
    while (valid && api().cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
      wire::Span s;
      switch (rec->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        case CUPTI_ACTIVITY_KIND_KERNEL: {
          auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(rec);
          s.track_kind = wire::TrackKind::kGpuStream;
          s.track_id = k->deviceId;
          s.stream = k->streamId;
          s.name_id = name_for(k->name);
          s.category = wire::SpanCategory::kKernel;
          s.start_ns = ts(k->start);
          s.end_ns = ts(k->end);
          s.correlation_id = k->correlationId;
          ++counters_.kernels;
          attribute(s, k->correlationId, true, k->graphNodeId);
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
          auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(rec);
          s.track_kind = wire::TrackKind::kGpuStream;
          s.track_id = m->deviceId;
          s.stream = m->streamId;
          s.name_id = name_for(memcpy_name(m->copyKind));
          s.category = wire::SpanCategory::kMemcpy;
          s.start_ns = ts(m->start);
          s.end_ns = ts(m->end);
          s.correlation_id = m->correlationId;
          s.args[s.num_args++] = {bytes_key_, static_cast<int64_t>(m->bytes)};
          attribute(s, m->correlationId, false);
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
          auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(rec);
          s.track_kind = wire::TrackKind::kGpuStream;
          s.track_id = m->deviceId;
          s.stream = m->streamId;
          s.name_id = name_for("memset");
          s.category = wire::SpanCategory::kMemset;
          s.start_ns = ts(m->start);
          s.end_ns = ts(m->end);
          s.correlation_id = m->correlationId;
          s.args[s.num_args++] = {bytes_key_, static_cast<int64_t>(m->bytes)};
          attribute(s, m->correlationId, false);
          break;
        }
        case CUPTI_ACTIVITY_KIND_RUNTIME: {
          auto* a = reinterpret_cast<CUpti_ActivityAPI*>(rec);
          const char* name = nullptr;
          api().cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
          s.track_kind = wire::TrackKind::kCpuThread;
          s.track_id = a->threadId;
          s.name_id = name_for(name ? name : "cudaRuntime");
          s.category = wire::SpanCategory::kRuntime;
          s.start_ns = ts(a->start);
          s.end_ns = ts(a->end);
          s.correlation_id = a->correlationId;
          // The launch table (launch callbacks) first, then the old external
          // correlation path: either names the range the call was made in.
          uint64_t value = 0;
          bool found = launch_range(a->correlationId, value);
          if (!found) {
            auto it = correlation_.find(a->correlationId);
            if ((found = it != correlation_.end())) value = it->second;
          }
          if (found) s.args[s.num_args++] = {range_key_, static_cast<int64_t>(value >> 32)};
          break;
        }
        default:
          continue;
      }
      if (tag != 0 && s.num_args < wire::kMaxSpanArgs)
        s.args[s.num_args++] = {capture_key_, static_cast<int64_t>(tag & INT64_MAX)};
      impl_.record_full_span(s);
    }
    size_t dropped = 0;
    if (api().cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS)
      counters_.dropped += dropped;
  }

  void attribute(wire::Span& s, uint32_t correlation, bool is_kernel, uint64_t graph_node = 0) {
    uint64_t value = 0;
    if (!graph_range(graph_node, value) && !launch_range(correlation, value)) {
      auto it = correlation_.find(correlation);
      if (it == correlation_.end()) return;
      value = it->second;
      correlation_.erase(it);  // one activity per launch
    }
    const auto range = static_cast<uint32_t>(value >> 32);
    s.args[s.num_args++] = {range_key_, static_cast<int64_t>(range)};
    // The enclosing range stands for a model layer (intern_layer): say which,
    // as a number, so that per-layer GPU time needs no name parsing.
    if (const int32_t layer = layer_of(range); layer >= 0 && s.num_args < wire::kMaxSpanArgs)
      s.args[s.num_args++] = {layer_key(), layer};
    if (is_kernel) {
      gpu_time_[range] += s.end_ns - s.start_ns;
      ++counters_.attributed;
    }
  }

  static const char* memcpy_name(uint8_t kind) {
    switch (kind) {
      case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
        return "memcpy HtoD";
      case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
        return "memcpy DtoH";
      case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
        return "memcpy DtoD";
      case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH:
        return "memcpy HtoH";
      case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP:
        return "memcpy PtoP";
      default:
        return "memcpy";
    }
  }

  Agent::Impl& impl_;
  uint32_t kinds_;
  static inline bool attached_before_ = false;  // guarded by g_cupti_mu
  bool callbacks_warned_ = false;               // guarded by g_cupti_mu
  bool detach_warned_ = false;                  // guarded by g_cupti_mu
  std::unique_ptr<LaunchSlot[]> launches_;
  std::mutex graph_mu_;  // graph node id -> range (resource callbacks, buffer thread)
  std::unordered_map<uint64_t, uint64_t> graph_ranges_;
  bool enabled_ = false;               // controller thread only
  std::atomic<uint64_t> tag_{0};       // goes on spans as "capture"
  std::atomic<bool> ext_push_{false};  // push external correlation ids in ranges
  bool stopped_ = false;
  int64_t offset_ns_ = 0;
  uint32_t range_key_ = 0;
  uint32_t bytes_key_ = 0;
  uint32_t capture_key_ = 0;
  std::mutex mu_;
  std::unordered_map<std::string, uint32_t> names_;
  std::unordered_map<uint32_t, uint64_t> correlation_;
  std::map<uint32_t, int64_t> gpu_time_;
  CuptiCounters counters_;
};

}  // namespace

bool CuptiTracer::built_in() {
  return true;
}

std::unique_ptr<CuptiTracer> CuptiTracer::start(Agent::Impl& impl, uint32_t kinds) {
  // CUPTI first: a missing library is the failure a user can act on.
  std::string error;
  const CuptiApi* loaded = load_cupti(error);
  if (!loaded) {
    std::fprintf(stderr, "inferscope agent: CUPTI tracing requested but not started: %s\n",
                 error.c_str());
    return nullptr;
  }
  const int devices = cuda_device_count(error);
  if (devices <= 0) {
    std::fprintf(stderr, "inferscope agent: CUPTI not started: %s\n",
                 devices < 0 ? error.c_str() : "no CUDA device");
    return nullptr;
  }
  g_api = loaded;
  {
    std::lock_guard lock(g_mu);
    if (g_tracer) {
      std::fprintf(stderr, "inferscope agent: CUPTI already traced by another agent\n");
      return nullptr;
    }
  }
  auto t = std::make_unique<Tracer>(impl, kinds);
  {
    std::lock_guard lock(g_mu);
    g_tracer = t.get();
  }
  if (!t->begin()) {
    std::lock_guard lock(g_mu);
    g_tracer = nullptr;
    return nullptr;
  }
  g_launch_tracer.store(t.get(), std::memory_order_release);
  return t;
}

}  // namespace inferscope::agent::detail
