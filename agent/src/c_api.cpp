// The C API (agent.h) over the C++ Agent. Enum values from C are checked here,
// since a C caller can pass anything; a bad one drops the record.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <string>

#include "inferscope/agent.h"
#include "inferscope/agent.hpp"

namespace ia = inferscope::agent;
namespace wire = inferscope::wire;

struct inferscope_agent {
  explicit inferscope_agent(ia::Config c) : agent(std::move(c)) {}
  ia::Agent agent;
};

// The last byte of opaque is kept free for the empty-range marker.
static_assert(sizeof(ia::ScopedRange) < sizeof(inferscope_range::opaque));
static_assert(alignof(ia::ScopedRange) <= 8);
// The C enums are the C++ ones' values.
static_assert(INFERSCOPE_GPU_TRACE_FULL == static_cast<int>(ia::GpuTraceMode::kFull));
static_assert(INFERSCOPE_GPU_TRACE_TRIGGERED == static_cast<int>(ia::GpuTraceMode::kTriggered));
static_assert(INFERSCOPE_CAPTURE_REFUSED_OFF ==
              static_cast<int>(ia::Agent::CaptureResult::kRefusedOff));
static_assert(INFERSCOPE_CAPTURE_REFUSED_COOLDOWN ==
              static_cast<int>(ia::Agent::CaptureResult::kRefusedCooldown));
// inferscope_gpu_trace_stats as it was before revision 2 (up to records_dropped),
// the bytes a binary built then hands to inferscope_agent_gpu_trace_stats.
constexpr size_t kGpuTraceStatsRevision1Bytes =
    offsetof(inferscope_gpu_trace_stats, records_dropped) + sizeof(uint64_t);
static_assert(kGpuTraceStatsRevision1Bytes == 104);  // 3 ints, padding, 11 counters (x86-64)
static_assert(offsetof(inferscope_gpu_trace_stats, cupti_detaches) == kGpuTraceStatsRevision1Bytes);

namespace {
// Marks a range whose agent was NULL, so end() knows there is nothing to destroy.
constexpr unsigned char kEmptyRange = 0xA5;
}  // namespace

extern "C" {

inferscope_agent* inferscope_agent_create_from_env(void) {
  try {
    return new inferscope_agent(ia::Config::from_environment());
  } catch (...) {
    return nullptr;
  }
}

inferscope_agent* inferscope_agent_create(const char* collector, const char* service, uint32_t rank,
                                          uint32_t world_size) {
  try {
    ia::Config c = ia::Config::from_environment();
    c.collector = collector ? collector : "";
    if (service) c.service = service;
    c.rank = rank;
    c.world_size = world_size == 0 ? 1 : world_size;
    return new inferscope_agent(std::move(c));
  } catch (...) {
    return nullptr;
  }
}

void inferscope_agent_destroy(inferscope_agent* agent) {
  delete agent;
}

int inferscope_agent_flush(inferscope_agent* agent, uint32_t timeout_ms) {
  if (!agent) return 1;
  return agent->agent.flush(std::chrono::milliseconds(timeout_ms)) ? 1 : 0;
}

void inferscope_agent_stats(const inferscope_agent* agent, inferscope_stats* out) {
  if (!out) return;
  *out = inferscope_stats{};
  if (!agent) return;
  const ia::Stats s = agent->agent.stats();
  out->records_recorded = s.records_recorded;
  out->records_sent = s.records_sent;
  out->records_dropped = s.records_dropped;
  out->bytes_sent = s.bytes_sent;
  out->reconnects = s.reconnects;
  out->connected = s.connected ? 1 : 0;
}

uint32_t inferscope_intern(const char* name) {
  if (!name) return 0;
  try {
    return ia::intern(name);
  } catch (...) {
    return 0;
  }
}

uint32_t inferscope_intern_layer(const char* name, uint32_t layer) {
  if (!name) return 0;
  try {
    return ia::intern_layer(name, layer);
  } catch (...) {
    return 0;
  }
}

int64_t inferscope_now_ns(void) {
  return ia::now_ns();
}

void inferscope_range_begin(inferscope_agent* agent, inferscope_range* range, uint32_t name_id,
                            uint64_t request_id) {
  if (!range) return;
  if (!agent) {
    range->opaque[sizeof range->opaque - 1] = kEmptyRange;
    return;
  }
  range->opaque[sizeof range->opaque - 1] = 0;
  new (range->opaque) ia::ScopedRange(agent->agent, name_id, request_id);
}

void inferscope_range_end(inferscope_range* range) {
  if (!range || range->opaque[sizeof range->opaque - 1] == kEmptyRange) return;
  std::launder(reinterpret_cast<ia::ScopedRange*>(range->opaque))->~ScopedRange();
}

void inferscope_span(inferscope_agent* agent, uint32_t name_id, int64_t start_ns, int64_t end_ns,
                     uint64_t request_id) {
  if (agent)
    agent->agent.span(name_id, start_ns, end_ns, wire::SpanCategory::kCpuRange, request_id);
}

void inferscope_expert_load(inferscope_agent* agent, uint64_t step, uint32_t layer,
                            const uint32_t* routed, size_t count, uint32_t tokens, uint32_t dropped,
                            uint32_t rerouted) {
  if (!agent || (!routed && count)) return;
  agent->agent.expert_load(step, layer, std::span<const uint32_t>(routed, count), tokens, dropped,
                           rerouted);
}

void inferscope_expert_loads(inferscope_agent* agent, uint64_t step, size_t n_layers,
                             const uint32_t* layers, const uint32_t* counts,
                             const uint32_t* offsets, const uint32_t* experts,
                             const uint32_t* tokens, const uint32_t* dropped) {
  if (!agent || n_layers == 0) return;
  if (!layers || !counts || !offsets || !experts || !tokens || !dropped) return;
  for (size_t i = 0; i < n_layers; ++i)
    agent->agent.expert_load(step, layers[i],
                             std::span<const uint32_t>(counts + offsets[i], experts[i]), tokens[i],
                             dropped[i], 0);
}

uint64_t inferscope_expert_loads_steps(inferscope_agent* agent, size_t n_steps,
                                       const uint64_t* steps, size_t n_layers,
                                       const uint32_t* layers, const uint32_t* offsets,
                                       const uint32_t* experts, const uint32_t* counts,
                                       size_t row_stride, const uint32_t* tokens) {
  if (!agent || !steps || !layers || !offsets || !experts || !counts || !tokens) return 0;
  uint64_t dropped_total = 0;
  for (size_t s = 0; s < n_steps; ++s) {
    const uint32_t* row = counts + s * row_stride;
    for (size_t i = 0; i < n_layers; ++i) {
      const uint32_t layer_tokens = tokens[s * n_layers + i];
      // offsets[i] + experts[i] is the dropped bin: it must lie inside the row (64-bit sum,
      // so a bad offset cannot wrap around into range).
      if (layer_tokens == 0 || uint64_t{offsets[i]} + experts[i] >= row_stride) continue;
      const uint32_t dropped = row[offsets[i] + experts[i]];
      agent->agent.expert_load(steps[s], layers[i],
                               std::span<const uint32_t>(row + offsets[i], experts[i]),
                               layer_tokens, dropped, 0);
      // Counted whether or not the agent sends (collector off): the caller's statistics.
      if (experts[i] <= wire::kMaxExperts) dropped_total += dropped;
    }
  }
  return dropped_total;
}

void inferscope_memory(inferscope_agent* agent, int kind, uint64_t used_bytes,
                       uint64_t capacity_bytes) {
  if (!agent || kind < 0 || kind >= wire::kMemoryKindCount) return;
  agent->agent.memory(static_cast<wire::MemoryKind>(kind), used_bytes, capacity_bytes);
}

void inferscope_prefix_cache(inferscope_agent* agent, uint64_t attention_queried,
                             uint64_t attention_hit, uint64_t ssm_queried, uint64_t ssm_hit) {
  if (agent) agent->agent.prefix_cache(attention_queried, attention_hit, ssm_queried, ssm_hit);
}

void inferscope_stage(inferscope_agent* agent, uint64_t request_id, int stage, int64_t start_ns,
                      int64_t end_ns, int device, int64_t gpu_ns) {
  if (!agent || stage < 0 || stage >= wire::kStageCount || device < 0 || device > 1) return;
  agent->agent.stage(request_id, static_cast<wire::Stage>(stage), start_ns, end_ns,
                     static_cast<wire::Device>(device), gpu_ns);
}

void inferscope_request(inferscope_agent* agent, const inferscope_request_event* e) {
  if (!agent || !e || e->status < 0 || e->status > 3) return;
  wire::RequestEvent r{
      e->request_id,   e->arrival_ns,    e->first_token_ns,
      e->finish_ns,    e->prompt_tokens, e->output_tokens,
      e->image_tokens, e->cached_tokens, static_cast<wire::RequestStatus>(e->status)};
  agent->agent.request(r);
}

int inferscope_agent_set_model(inferscope_agent* agent, const char* name,
                               const uint32_t* experts_per_layer, const int* mixers, size_t layers,
                               uint32_t top_k, uint32_t shared_experts) {
  if (!agent) return 0;
  if (layers > wire::kMaxLayers || (layers && !experts_per_layer) || top_k > 0xFFFF ||
      shared_experts > 0xFFFF)
    return 0;
  try {
    wire::ModelDescription m;
    m.name = name ? std::string(name) : std::string();
    if (m.name.size() > wire::kMaxStringBytes) return 0;
    m.top_k = static_cast<uint16_t>(top_k);
    m.shared_experts = static_cast<uint16_t>(shared_experts);
    for (size_t l = 0; l < layers; ++l) {
      const uint32_t experts = experts_per_layer[l];
      const int mixer = mixers ? mixers[l] : INFERSCOPE_LAYER_ATTENTION;
      if (experts > wire::kMaxExperts ||
          (mixer != INFERSCOPE_LAYER_ATTENTION && mixer != INFERSCOPE_LAYER_SSM))
        return 0;
      m.layers.push_back(
          {mixer == INFERSCOPE_LAYER_SSM ? wire::LayerKind::kSsm : wire::LayerKind::kAttention,
           experts ? wire::FfnKind::kMoe : wire::FfnKind::kDense, static_cast<uint16_t>(experts)});
    }
    agent->agent.set_model(m);
    return 1;
  } catch (...) {
    return 0;
  }
}

void inferscope_counter(inferscope_agent* agent, uint32_t name_id, double delta) {
  if (agent) agent->agent.counter(name_id, delta);
}

void inferscope_gauge(inferscope_agent* agent, uint32_t name_id, double value) {
  if (agent) agent->agent.gauge(name_id, value);
}

int inferscope_set_gpu_trace_mode(inferscope_agent* agent, int mode) {
  if (!agent || mode < INFERSCOPE_GPU_TRACE_OFF || mode > INFERSCOPE_GPU_TRACE_FULL) return -1;
  agent->agent.set_gpu_trace_mode(static_cast<ia::GpuTraceMode>(mode));
  return 0;
}

int inferscope_gpu_trace_mode(const inferscope_agent* agent) {
  return agent ? static_cast<int>(agent->agent.gpu_trace_mode()) : INFERSCOPE_GPU_TRACE_OFF;
}

void inferscope_gpu_step(inferscope_agent* agent) {
  if (agent) agent->agent.gpu_step();
}

int inferscope_request_gpu_capture(inferscope_agent* agent, uint32_t steps, uint32_t duration_ms,
                                   uint64_t tag) {
  if (!agent) return INFERSCOPE_CAPTURE_REFUSED_OFF;
  return static_cast<int>(
      agent->agent.request_gpu_capture(steps, std::chrono::milliseconds(duration_ms), tag));
}

void inferscope_agent_gpu_trace_stats_sized(const inferscope_agent* agent,
                                            inferscope_gpu_trace_stats* out, size_t out_size) {
  if (!out || out_size == 0) return;
  // Filled in full here, then only the caller's prefix is copied out: a caller
  // built against an older agent.h has a shorter struct (agent.h says why).
  inferscope_gpu_trace_stats st{};
  if (agent) {
    const ia::GpuTraceStats g = agent->agent.stats().gpu;
    st.mode = static_cast<int>(g.mode);
    st.cupti_available = g.cupti_available ? 1 : 0;
    st.tracing = g.tracing ? 1 : 0;
    st.bursts_started = g.bursts_started;
    st.bursts_finished = g.bursts_finished;
    st.captures_requested = g.captures_requested;
    st.captures_started = g.captures_started;
    st.captures_refused_busy = g.captures_refused_busy;
    st.captures_refused_cooldown = g.captures_refused_cooldown;
    st.captures_refused_off = g.captures_refused_off;
    st.captures_completed = g.captures_completed;
    st.kernels_captured = g.kernels_captured;
    st.kernels_attributed = g.kernels_attributed;
    st.records_dropped = g.records_dropped;
    st.cupti_detaches = g.cupti_detaches;
    st.cupti_reattaches = g.cupti_reattaches;
    st.cupti_detach_errors = g.cupti_detach_errors;
  }
  std::memcpy(out, &st, std::min(out_size, sizeof st));
}

void inferscope_agent_gpu_trace_stats(const inferscope_agent* agent,
                                      inferscope_gpu_trace_stats* out) {
  // Revision 1 ended with records_dropped: never write past it here.
  inferscope_agent_gpu_trace_stats_sized(agent, out, kGpuTraceStatsRevision1Bytes);
}

}  // extern "C"
