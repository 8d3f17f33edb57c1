/* Compiled as C: proves agent.h is a C header and drives every C entry point.
 * Returns 0 on success, or the number of the first check that failed. */
#include <stddef.h>
#include <string.h>

#include "inferscope/agent.h"

int inferscope_c_api_scenario(const char* collector) {
  /* A NULL agent is a no-op everywhere. */
  inferscope_range none;
  inferscope_range_begin(NULL, &none, 1, 0);
  inferscope_range_end(&none);
  inferscope_counter(NULL, 1, 1.0);
  inferscope_agent_destroy(NULL);

  inferscope_agent* a = inferscope_agent_create(collector, "c-test", 2, 4);
  if (!a) return 1;
  uint32_t range_name = inferscope_intern("c.range");
  uint32_t counter_name = inferscope_intern("c.counter");
  if (range_name == 0 || counter_name == 0 || range_name == counter_name) return 2;
  if (inferscope_intern(NULL) != 0) return 3;

  int64_t t0 = inferscope_now_ns();
  inferscope_range outer, inner;
  inferscope_range_begin(a, &outer, range_name, 5);
  inferscope_range_begin(a, &inner, range_name, 6);
  inferscope_range_end(&inner);
  inferscope_range_end(&outer);
  inferscope_span(a, range_name, t0, t0 + 10, 7);
  uint32_t routed[3] = {1, 2, 3};
  inferscope_expert_load(a, 4, 1, routed, 3, 3, 0, 1);
  inferscope_memory(a, INFERSCOPE_MEMORY_KV_CACHE, 10, 20);
  inferscope_memory(a, 99, 1, 1); /* bad kind: ignored */
  inferscope_prefix_cache(a, 8, 4, 8, 0);
  inferscope_stage(a, 5, INFERSCOPE_STAGE_ENCODER, t0, t0 + 100, INFERSCOPE_DEVICE_CPU, 0);
  inferscope_stage(a, 5, 17, t0, t0 + 100, INFERSCOPE_DEVICE_CPU, 0); /* bad stage: ignored */
  inferscope_request_event ev = {5, t0, t0 + 50, t0 + 200, 12, 3, 0, 4, INFERSCOPE_REQUEST_OK};
  inferscope_request(a, &ev);
  inferscope_counter(a, counter_name, 1.5);
  inferscope_gauge(a, counter_name, 7.0);

  if (!inferscope_agent_flush(a, 5000)) return 4;
  inferscope_stats s;
  inferscope_agent_stats(a, &s);
  if (s.records_recorded != 10) return 5;
  if (s.records_sent != 10) return 6;
  if (s.records_dropped != 0) return 7;
  if (!s.connected) return 8;
  /* The revision-2 GPU trace stats from C: GPU tracing is off, all zero. */
  inferscope_gpu_trace_stats g;
  memset(&g, 0xff, sizeof g);
  inferscope_agent_gpu_trace_stats_sized(a, &g, sizeof g);
  if (g.mode != INFERSCOPE_GPU_TRACE_OFF || g.cupti_detaches != 0 || g.cupti_reattaches != 0 ||
      g.cupti_detach_errors != 0)
    return 9;
  inferscope_agent_destroy(a);
  return 0;
}
