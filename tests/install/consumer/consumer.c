/* The smallest C user of the installed agent, built with pkg-config only:
 *
 *   cc consumer.c $(pkg-config --cflags --libs inferscope) -o consumer_c
 *   INFERSCOPE_COLLECTOR=tcp://127.0.0.1:7431 ./consumer_c
 *
 * No CUDA library on the command line: the agent loads CUPTI itself, and only
 * when INFERSCOPE_CUPTI=1. Exit status 0 only if the collector got everything. */
#include <inferscope/agent.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  const char* collector = getenv("INFERSCOPE_COLLECTOR");
  inferscope_agent* agent =
      inferscope_agent_create(collector ? collector : "", "install-consumer-c", 1, 2);
  if (!agent) return 2;

  uint32_t step_name = inferscope_intern("consumer_c_step");
  uint32_t routed[8] = {1, 1, 1, 1, 1, 1, 1, 9};
  for (uint64_t step = 0; step < 10; ++step) {
    inferscope_range range;
    inferscope_range_begin(agent, &range, step_name, step + 1);
    inferscope_expert_load(agent, step, 0, routed, 8, 16, 0, 0);
    inferscope_range_end(&range);
  }
  inferscope_memory(agent, INFERSCOPE_MEMORY_WEIGHTS, 333333, 444444);
  inferscope_prefix_cache(agent, 50, 10, 0, 0);

  int flushed = inferscope_agent_flush(agent, 10000);
  inferscope_stats stats;
  inferscope_agent_stats(agent, &stats);
  printf("consumer_c: recorded=%llu sent=%llu dropped=%llu flushed=%d\n",
         (unsigned long long)stats.records_recorded, (unsigned long long)stats.records_sent,
         (unsigned long long)stats.records_dropped, flushed);
  inferscope_agent_destroy(agent);
  return flushed && stats.records_sent >= 22 && stats.records_dropped == 0 ? 0 : 1;
}
