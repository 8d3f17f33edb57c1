// The smallest C++ user of the installed agent: ranges, expert loads, memory
// and prefix-cache counters, then a flush. Exit status 0 only if the collector
// got everything (tests/install/install_test.py also checks its /metrics).
//
//   cmake -S . -B build -DCMAKE_PREFIX_PATH=<inferscope prefix> && cmake --build build
//   INFERSCOPE_COLLECTOR=tcp://127.0.0.1:7431 ./build/consumer_cxx
#include <array>
#include <cstdio>
#include <inferscope/agent.hpp>

namespace ia = inferscope::agent;
namespace wire = inferscope::wire;

int main() {
  ia::Config config = ia::Config::from_environment();
  config.service = "install-consumer-cxx";
  config.rank = 0;
  config.world_size = 2;
  ia::Agent agent(config);

  static const uint32_t kStep = ia::intern("consumer_step");
  std::array<uint32_t, 8> routed = {9, 1, 1, 1, 1, 1, 1, 1};  // 16 tokens, top-1
  for (uint64_t step = 0; step < 10; ++step) {
    ia::ScopedRange range(agent, kStep, /*request_id=*/step + 1);
    agent.expert_load(step, /*layer=*/0, routed, /*tokens=*/16, /*dropped=*/0);
  }
  agent.memory(wire::MemoryKind::kWeights, 111111, 222222);
  agent.prefix_cache(/*attention_queried=*/100, /*attention_hit=*/40, 0, 0);

  const bool flushed = agent.flush(std::chrono::seconds(10));
  const ia::Stats s = agent.stats();
  std::printf("consumer_cxx: %s recorded=%llu sent=%llu dropped=%llu flushed=%d\n",
              wire::to_string(wire::RecordKind::kExpertLoad),
              static_cast<unsigned long long>(s.records_recorded),
              static_cast<unsigned long long>(s.records_sent),
              static_cast<unsigned long long>(s.records_dropped), flushed ? 1 : 0);
  return flushed && s.records_sent >= 22 && s.records_dropped == 0 ? 0 : 1;
}
