// agent_bench: what the agent costs the host, in ns per call.
//
// Each signal is measured three ways, side by side with a bare
// std::chrono::steady_clock::now() pair so the figure reads as a ratio:
//   /off   Agent with collector "" (records nothing)
//   /ship  Agent shipping to a loopback sink that reads and discards (the
//          shipper thread runs and competes for the same cores)
// ->Threads(2) runs two recording threads at once (each has its own ring, so
// there is no shared write; what remains is cache and core contention).
// Counters: "dropped%" is the share of calls the agent dropped because the
// shipper could not keep up with a tight loop (a dropped call costs about the
// same as a kept one).
#include <benchmark/benchmark.h>

#include <array>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "../common/discard_sink.hpp"
#include "inferscope/agent.hpp"

namespace ia = inferscope::agent;
namespace wire = inferscope::wire;

namespace {

using inferscope::bench::DiscardSink;

ia::Agent* g_off = nullptr;
ia::Agent* g_ship = nullptr;
uint32_t g_name = 0;

ia::Agent& agent_for(const benchmark::State& state) {
  return state.range(0) ? *g_ship : *g_off;
}

void report_drops(benchmark::State& state, ia::Agent& agent, const ia::Stats& before) {
  if (state.thread_index() != 0) return;
  const ia::Stats after = agent.stats();
  const double recorded = static_cast<double>(after.records_recorded - before.records_recorded);
  const double dropped = static_cast<double>(after.records_dropped - before.records_dropped);
  state.counters["dropped%"] = recorded + dropped > 0 ? 100.0 * dropped / (recorded + dropped) : 0;
}

void BM_SteadyClockPair(benchmark::State& state) {
  for (auto _ : state) {
    auto a = std::chrono::steady_clock::now();
    auto b = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(a);
    benchmark::DoNotOptimize(b);
  }
}

void BM_ScopedRange(benchmark::State& state) {
  ia::Agent& agent = agent_for(state);
  const ia::Stats before = agent.stats();
  for (auto _ : state) {
    ia::ScopedRange r(agent, g_name);
  }
  report_drops(state, agent, before);
}

void BM_ExpertLoad64(benchmark::State& state) {
  ia::Agent& agent = agent_for(state);
  std::vector<uint32_t> routed(64);
  for (size_t i = 0; i < routed.size(); ++i) routed[i] = static_cast<uint32_t>(i * 7 % 31);
  const ia::Stats before = agent.stats();
  uint64_t step = 0;
  for (auto _ : state) agent.expert_load(step++, 3, routed, 512, 0);
  report_drops(state, agent, before);
}

void BM_Counter(benchmark::State& state) {
  ia::Agent& agent = agent_for(state);
  const ia::Stats before = agent.stats();
  for (auto _ : state) agent.counter(g_name, 1.0);
  report_drops(state, agent, before);
}

// Arg 0: collector "", arg 1: shipping to the loopback sink.
#define AGENT_BENCH(fn) BENCHMARK(fn)->ArgName("ship")->Arg(0)->Arg(1)->Threads(1)->Threads(2)
BENCHMARK(BM_SteadyClockPair)->Threads(1)->Threads(2);
AGENT_BENCH(BM_ScopedRange);
AGENT_BENCH(BM_ExpertLoad64);
AGENT_BENCH(BM_Counter);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  DiscardSink sink;
  g_name = ia::intern("bench.range");
  ia::Config off;
  off.collector = "";
  off.nvtx = false;
  ia::Config ship;
  ship.collector = sink.address();
  ship.nvtx = false;
  ship.thread_buffer_bytes = 16u << 20;
  ia::Agent agent_off(off);
  ia::Agent agent_ship(ship);
  g_off = &agent_off;
  g_ship = &agent_ship;
  benchmark::RunSpecifiedBenchmarks();
  agent_ship.flush(std::chrono::seconds(5));
  const ia::Stats s = agent_ship.stats();
  std::printf("shipping agent: %llu recorded, %llu sent, %llu dropped, %llu bytes sent\n",
              static_cast<unsigned long long>(s.records_recorded),
              static_cast<unsigned long long>(s.records_sent),
              static_cast<unsigned long long>(s.records_dropped),
              static_cast<unsigned long long>(s.bytes_sent));
  benchmark::Shutdown();
  return 0;
}
