// The installed CUDA part (inferscope::agent_cuda): DeviceExpertCounter from
// plain host C++. Without a GPU the counter reports !ok() and drops what it is
// given, counted, never crashing; with one it counts a top-k tensor on device.
#include <cstdio>
#include <inferscope/agent_cuda.hpp>

namespace ia = inferscope::agent;

int main() {
  ia::Config config = ia::Config::from_environment();
  config.service = "install-consumer-cuda";
  ia::Agent agent(config);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  ia::DeviceExpertCounter counter(agent, /*experts=*/64, /*slots=*/4);
  std::printf("consumer_cuda: devices=%d counter.ok=%d experts=%u\n", devices, counter.ok() ? 1 : 0,
              counter.experts());
  if (devices > 0 && !counter.ok()) return 1;  // a GPU is there: the counter must work
  if (devices == 0 && counter.count(0, 0, nullptr, 0, 1, nullptr)) return 1;  // must refuse
  return counter.experts() == 64 ? 0 : 1;
}
