/* inferscope agent: the C API, for engines and languages that cannot use the
 * C++ header. A thin layer over inferscope::agent::Agent with the same
 * guarantees: calls never block, never fail loudly, and a NULL agent makes every
 * call a no-op (so a host can leave the calls in and just not create one).
 *
 *   inferscope_agent* a = inferscope_agent_create_from_env();
 *   static uint32_t kStep; if (!kStep) kStep = inferscope_intern("decode_step");
 *   inferscope_range r;
 *   inferscope_range_begin(a, &r, kStep, 0);
 *   ...
 *   inferscope_range_end(&r);
 *   inferscope_agent_destroy(a);
 *
 * [SECTION] Lifetime   create / destroy / flush / stats
 * [SECTION] Names      intern, clock
 * [SECTION] Signals    ranges, spans, expert loads, memory, prefix cache, stages,
 *                      requests, counters
 * [SECTION] GPU trace  modes (off / sampled / triggered / full), step marks,
 *                      captures, their counters (docs/gpu.md)
 */
#ifndef INFERSCOPE_AGENT_H
#define INFERSCOPE_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "inferscope/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct inferscope_agent inferscope_agent;

#ifdef __cplusplus
#define INFERSCOPE_ALIGN8 alignas(8)
#else
#define INFERSCOPE_ALIGN8 _Alignas(8)
#endif

/* [SECTION] Lifetime */

/* Configured by the INFERSCOPE_* environment variables (docs/agent.md). With
 * INFERSCOPE_COLLECTOR unset the default tcp://127.0.0.1:7431 is used; set it
 * to "" or "off" to record nothing. Returns NULL only when out of memory. */
INFERSCOPE_API inferscope_agent* inferscope_agent_create_from_env(void);
/* Same, with the collector address, service name and rank given here; the
 * environment still applies on top for the other settings. */
INFERSCOPE_API inferscope_agent* inferscope_agent_create(const char* collector, const char* service,
                                                         uint32_t rank, uint32_t world_size);
/* Flushes (bounded by the shutdown timeout) and frees. NULL is fine. */
INFERSCOPE_API void inferscope_agent_destroy(inferscope_agent* agent);
/* 1 when everything recorded so far was sent within timeout_ms, else 0. */
INFERSCOPE_API int inferscope_agent_flush(inferscope_agent* agent, uint32_t timeout_ms);

typedef struct inferscope_stats {
  uint64_t records_recorded;
  uint64_t records_sent;
  uint64_t records_dropped;
  uint64_t bytes_sent;
  uint64_t reconnects;
  int connected;
} inferscope_stats;
INFERSCOPE_API void inferscope_agent_stats(const inferscope_agent* agent, inferscope_stats* out);

/* Describes the observed model in the hello record: its name (the `model` label of every
 * metric; NULL keeps the current one) and per layer the routed experts (0: dense FFN) and
 * the mixer (INFERSCOPE_LAYER_ATTENTION / _SSM; NULL mixers: all attention). Layers beyond
 * 1024 or experts beyond 4096 make the call return 0 and change nothing; 1 on success.
 * Sent on the next (re)connection, so call it before the first record when you can. */
enum { INFERSCOPE_LAYER_ATTENTION = 0, INFERSCOPE_LAYER_SSM = 1 };
INFERSCOPE_API int inferscope_agent_set_model(inferscope_agent* agent, const char* name,
                                              const uint32_t* experts_per_layer, const int* mixers,
                                              size_t layers, uint32_t top_k,
                                              uint32_t shared_experts);

/* [SECTION] Names */

/* Interns a name process-wide; returns its id (never 0). Takes a lock: call
 * once per name and keep the id. NULL gives 0. */
INFERSCOPE_API uint32_t inferscope_intern(const char* name);
/* Interns the name of a range that stands for one model layer (0-based, below
 * 1024) and ties the layer to it: the range's spans, and the kernels launched
 * inside it, carry the arg "layer" = layer (read as a number: nobody parses the
 * name). A name keeps its first layer; another layer, or one out of range,
 * ties nothing (one stderr line). Returns the id; NULL gives 0. */
INFERSCOPE_API uint32_t inferscope_intern_layer(const char* name, uint32_t layer);
/* Nanoseconds of CLOCK_MONOTONIC, the time base of every record. */
INFERSCOPE_API int64_t inferscope_now_ns(void);

/* [SECTION] Signals */

/* A CPU range (and NVTX range): storage the caller owns, typically on the
 * stack. begin and end must run on the same thread, ranges nest. */
typedef struct inferscope_range {
  INFERSCOPE_ALIGN8 unsigned char opaque[48];
} inferscope_range;
INFERSCOPE_API void inferscope_range_begin(inferscope_agent* agent, inferscope_range* range,
                                           uint32_t name_id, uint64_t request_id);
INFERSCOPE_API void inferscope_range_end(inferscope_range* range);

INFERSCOPE_API void inferscope_span(inferscope_agent* agent, uint32_t name_id, int64_t start_ns,
                                    int64_t end_ns, uint64_t request_id);

/* routed[e] = assignments to expert e (count experts, at most 4096). */
INFERSCOPE_API void inferscope_expert_load(inferscope_agent* agent, uint64_t step, uint32_t layer,
                                           const uint32_t* routed, size_t count, uint32_t tokens,
                                           uint32_t dropped, uint32_t rerouted);

/* One step's expert loads of several layers in one call (bindings call it once per step
   instead of once per layer): layer layers[i] has experts[i] counts at counts + offsets[i],
   and tokens[i] / dropped[i]. A layer whose counts would be refused by inferscope_expert_load
   (more than 4096 experts) is skipped the same way. */
INFERSCOPE_API void inferscope_expert_loads(inferscope_agent* agent, uint64_t step, size_t n_layers,
                                            const uint32_t* layers, const uint32_t* counts,
                                            const uint32_t* offsets, const uint32_t* experts,
                                            const uint32_t* tokens, const uint32_t* dropped);

/* Several steps' expert loads in one call (inferscope.torch copies the counts of a group of
   steps from the device together and hands them over at once). Row s of `counts` (row_stride
   uint32 each) is step steps[s]; in every row, layer layers[i] has experts[i] counts at
   offsets[i] followed by ONE bin of dropped ids (offsets[i] + experts[i]); its tokens in that
   step are tokens[s * n_layers + i]. A layer with 0 tokens in a step is not sent for that step
   (it did not run); a layer whose bins do not fit in a row, or with more than 4096 experts, is
   skipped. Returns the dropped ids of the loads sent (0 for a NULL array or agent). */
INFERSCOPE_API uint64_t inferscope_expert_loads_steps(
    inferscope_agent* agent, size_t n_steps, const uint64_t* steps, size_t n_layers,
    const uint32_t* layers, const uint32_t* offsets, const uint32_t* experts,
    const uint32_t* counts, size_t row_stride, const uint32_t* tokens);

enum {
  INFERSCOPE_MEMORY_KV_CACHE = 0,
  INFERSCOPE_MEMORY_SSM_STATE = 1,
  INFERSCOPE_MEMORY_SSM_CHECKPOINTS = 2,
  INFERSCOPE_MEMORY_WEIGHTS = 3,
  INFERSCOPE_MEMORY_ACTIVATIONS = 4
};
/* kind: INFERSCOPE_MEMORY_*; other values are ignored. */
INFERSCOPE_API void inferscope_memory(inferscope_agent* agent, int kind, uint64_t used_bytes,
                                      uint64_t capacity_bytes);

/* Deltas since the previous call. */
INFERSCOPE_API void inferscope_prefix_cache(inferscope_agent* agent, uint64_t attention_queried,
                                            uint64_t attention_hit, uint64_t ssm_queried,
                                            uint64_t ssm_hit);

enum {
  INFERSCOPE_STAGE_ENCODER = 0,
  INFERSCOPE_STAGE_CONNECTOR = 1,
  INFERSCOPE_STAGE_BACKBONE_PREFILL = 2,
  INFERSCOPE_STAGE_BACKBONE_DECODE = 3
};
enum { INFERSCOPE_DEVICE_CPU = 0, INFERSCOPE_DEVICE_GPU = 1 };
/* stage: INFERSCOPE_STAGE_*, device: INFERSCOPE_DEVICE_*; other values are ignored. */
INFERSCOPE_API void inferscope_stage(inferscope_agent* agent, uint64_t request_id, int stage,
                                     int64_t start_ns, int64_t end_ns, int device, int64_t gpu_ns);

enum {
  INFERSCOPE_REQUEST_OK = 0,
  INFERSCOPE_REQUEST_CANCELLED = 1,
  INFERSCOPE_REQUEST_ERROR = 2,
  INFERSCOPE_REQUEST_REJECTED = 3
};
typedef struct inferscope_request_event {
  uint64_t request_id;
  int64_t arrival_ns;
  int64_t first_token_ns; /* 0 if no token was produced */
  int64_t finish_ns;
  uint32_t prompt_tokens;
  uint32_t output_tokens;
  uint32_t image_tokens;
  uint32_t cached_tokens;
  int status; /* INFERSCOPE_REQUEST_* */
} inferscope_request_event;
INFERSCOPE_API void inferscope_request(inferscope_agent* agent,
                                       const inferscope_request_event* event);

INFERSCOPE_API void inferscope_counter(inferscope_agent* agent, uint32_t name_id, double delta);
INFERSCOPE_API void inferscope_gauge(inferscope_agent* agent, uint32_t name_id, double value);

/* [SECTION] GPU trace */

enum {
  INFERSCOPE_GPU_TRACE_OFF = 0,
  INFERSCOPE_GPU_TRACE_SAMPLED = 1,
  INFERSCOPE_GPU_TRACE_TRIGGERED = 2,
  INFERSCOPE_GPU_TRACE_FULL = 3
};
/* Switches the GPU tracing mode at run time (never blocks on CUPTI; the first
 * switch away from off loads CUPTI on this thread, once). 0 on success, -1 for
 * a NULL agent or an unknown mode. */
INFERSCOPE_API int inferscope_set_gpu_trace_mode(inferscope_agent* agent, int mode);
/* INFERSCOPE_GPU_TRACE_*; OFF for NULL. */
INFERSCOPE_API int inferscope_gpu_trace_mode(const inferscope_agent* agent);
/* A step boundary (e.g. after each decode step): step-counted captures start
 * and end on these. An atomic increment. */
INFERSCOPE_API void inferscope_gpu_step(inferscope_agent* agent);

enum {
  INFERSCOPE_CAPTURE_STARTED = 0,
  INFERSCOPE_CAPTURE_REFUSED_BUSY = 1,
  INFERSCOPE_CAPTURE_REFUSED_COOLDOWN = 2,
  INFERSCOPE_CAPTURE_REFUSED_OFF = 3
};
/* Traces the GPU for the next `steps` step boundaries (steps > 0, capped by
 * INFERSCOPE_GPU_CAPTURE_MAX_MS) or the next duration_ms (steps == 0). tag
 * (e.g. an episode id) goes on the captured spans as the arg "capture".
 * Returns INFERSCOPE_CAPTURE_*; REFUSED_OFF for NULL. */
INFERSCOPE_API int inferscope_request_gpu_capture(inferscope_agent* agent, uint32_t steps,
                                                  uint32_t duration_ms, uint64_t tag);

typedef struct inferscope_gpu_trace_stats {
  int mode;            /* INFERSCOPE_GPU_TRACE_* */
  int cupti_available; /* CUPTI loaded and a GPU present */
  int tracing;         /* a burst or capture is on now */
  uint64_t bursts_started;
  uint64_t bursts_finished;
  uint64_t captures_requested;
  uint64_t captures_started;
  uint64_t captures_refused_busy;
  uint64_t captures_refused_cooldown;
  uint64_t captures_refused_off;
  uint64_t captures_completed;
  uint64_t kernels_captured;
  uint64_t kernels_attributed;
  uint64_t records_dropped;
  /* Revision 2, appended (read them with inferscope_agent_gpu_trace_stats_sized):
   * CUPTI's dynamic detach (INFERSCOPE_GPU_TRACE_DETACH, on by default), process-wide. */
  uint64_t cupti_detaches;      /* CUPTI detached (cuptiFinalize) after a window */
  uint64_t cupti_reattaches;    /* ... and attached again for a later one */
  uint64_t cupti_detach_errors; /* a detach or re-attach that failed */
} inferscope_gpu_trace_stats;
/* The struct grows only at its end (a revision appends fields), so a caller
 * built against an older agent.h hands a shorter one. Pass sizeof(*out): the
 * agent writes min(out_size, its own sizeof) bytes and nothing beyond, so old
 * binaries are never written past and new ones read every field this library
 * has (a field an older library lacks keeps what the caller put there: zero
 * the struct first). */
INFERSCOPE_API void inferscope_agent_gpu_trace_stats_sized(const inferscope_agent* agent,
                                                           inferscope_gpu_trace_stats* out,
                                                           size_t out_size);
/* Revision 1: fills the fields up to records_dropped only and leaves the rest
 * of *out as it was (binaries built before revision 2 call this one with the
 * shorter struct). */
INFERSCOPE_API void inferscope_agent_gpu_trace_stats(const inferscope_agent* agent,
                                                     inferscope_gpu_trace_stats* out);

#ifdef __cplusplus
}
#endif

#endif /* INFERSCOPE_AGENT_H */
