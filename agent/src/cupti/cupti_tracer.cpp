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
// [SECTION] Ranges    ScopedRange pushes an external correlation id
//                     (name_id << 32 | request_id low bits) for the
//                     duration of the range; CUPTI links it to every runtime call
//                     (and so every kernel) inside. Kernel spans carry the arg
//                     "range" = the enclosing range's name id, and the tracer sums
//                     kernel time per range name (Agent::gpu_time_by_range()).
#include "cupti_tracer.hpp"

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
std::mutex g_mu;                   // guards g_tracer against the CUPTI callbacks
Tracer* g_tracer = nullptr;        // CUPTI is process-wide: one tracer at a time
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
  explicit Tracer(Agent::Impl& impl) : impl_(impl) {
    range_key_ = intern("range");
    bytes_key_ = intern("bytes");
  }

  bool begin() {
    // Clock, thread ids and buffer callbacks are process-wide CUPTI settings:
    // set them once, for every tracer this process will start.
    static CUptiResult registered = [] {
      CUptiResult ts = api().cuptiActivityRegisterTimestampCallback
                           ? api().cuptiActivityRegisterTimestampCallback(monotonic_timestamp)
                           : CUPTI_ERROR_NOT_SUPPORTED;
      if (ts != CUPTI_SUCCESS) {
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
      return api().cuptiActivityRegisterCallbacks(&Tracer::buffer_requested,
                                                  &Tracer::buffer_completed);
    }();
    if (!g_timestamp_callback) {
      uint64_t gpu = 0;
      api().cuptiGetTimestamp(&gpu);
      offset_ns_ = now_ns() - static_cast<int64_t>(gpu);
    }
    if (registered != CUPTI_SUCCESS) {
      std::fprintf(stderr, "inferscope agent: CUPTI disabled: %s\n", cupti_error(registered));
      return false;
    }
    CUptiResult r = CUPTI_SUCCESS;
    for (CUpti_ActivityKind k : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                 CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME,
                                 CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION}) {
      r = api().cuptiActivityEnable(k);
      if (r != CUPTI_SUCCESS) {
        std::fprintf(stderr, "inferscope agent: CUPTI activity kind %d not enabled: %s\n",
                     static_cast<int>(k), cupti_error(r));
        if (k == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
          disable();
          return false;
        }
      }
    }
    return true;
  }

  void flush() override { api().cuptiActivityFlushAll(0); }

  void stop() override {
    if (stopped_) return;
    stopped_ = true;
    api().cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    disable();
    api().cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    std::lock_guard lock(g_mu);
    if (g_tracer == this) g_tracer = nullptr;
  }

  ~Tracer() override { stop(); }

  void push_range(uint32_t name_id, uint64_t request_id) override {
    api().cuptiActivityPushExternalCorrelationId(
        kExternalKind, (uint64_t{name_id} << 32) | (request_id & 0xffffffffu));
  }
  void pop_range() override {
    uint64_t last = 0;
    api().cuptiActivityPopExternalCorrelationId(kExternalKind, &last);
  }

  std::map<uint32_t, int64_t> gpu_time_by_range() override {
    std::lock_guard lock(mu_);
    return gpu_time_;
  }
  uint64_t dropped_records() override {
    std::lock_guard lock(mu_);
    return dropped_;
  }

 private:
  static void disable() {
    for (CUpti_ActivityKind k : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                 CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME,
                                 CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION})
      api().cuptiActivityDisable(k);
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
          attribute(s, k->correlationId, true);
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
          auto it = correlation_.find(a->correlationId);
          if (it != correlation_.end())
            s.args[s.num_args++] = {range_key_, static_cast<int64_t>(it->second >> 32)};
          break;
        }
        default:
          continue;
      }
      impl_.record_full_span(s);
    }
    size_t dropped = 0;
    if (api().cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS)
      dropped_ += dropped;
  }

  void attribute(wire::Span& s, uint32_t correlation, bool is_kernel) {
    auto it = correlation_.find(correlation);
    if (it == correlation_.end()) return;
    const auto range = static_cast<uint32_t>(it->second >> 32);
    s.args[s.num_args++] = {range_key_, static_cast<int64_t>(range)};
    if (is_kernel) gpu_time_[range] += s.end_ns - s.start_ns;
    correlation_.erase(it);  // one activity per launch
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
  bool stopped_ = false;
  int64_t offset_ns_ = 0;
  uint32_t range_key_ = 0;
  uint32_t bytes_key_ = 0;
  std::mutex mu_;
  std::unordered_map<std::string, uint32_t> names_;
  std::unordered_map<uint32_t, uint64_t> correlation_;
  std::map<uint32_t, int64_t> gpu_time_;
  uint64_t dropped_ = 0;
};

}  // namespace

bool CuptiTracer::built_in() {
  return true;
}

std::unique_ptr<CuptiTracer> CuptiTracer::start(Agent::Impl& impl) {
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
  auto t = std::make_unique<Tracer>(impl);
  {
    std::lock_guard lock(g_mu);
    g_tracer = t.get();
  }
  if (!t->begin()) {
    std::lock_guard lock(g_mu);
    g_tracer = nullptr;
    return nullptr;
  }
  return t;
}

}  // namespace inferscope::agent::detail
