// agent_gpu_bench: the overhead of CUPTI activity tracing on a kernel-heavy loop.
//
// BM_KernelLoop launches 1000 small kernels (axpy over `n` floats) inside one
// ScopedRange per 100 launches, then synchronises; it is run with the agent's
// CUPTI tracer off (cupti:0) and on (cupti:1), shipping to a loopback sink in
// both cases. The ratio of the two is the tracing overhead. Skips (reports an
// error) without a CUDA device. Run by scripts/gpu-check on an H100.
#include <benchmark/benchmark.h>

#include <cuda_runtime_api.h>

#include <array>
#include <memory>
#include <thread>

#include <asio.hpp>

#include "bench_kernels.hpp"
#include "inferscope/agent.hpp"

namespace ia = inferscope::agent;

namespace {

class DiscardSink {
 public:
  DiscardSink() : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~DiscardSink() {
    asio::post(io_, [this] { io_.stop(); });
    thread_.join();
  }
  std::string address() const {
    return "tcp://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }

 private:
  struct Conn {
    explicit Conn(asio::ip::tcp::socket s) : socket(std::move(s)) {}
    asio::ip::tcp::socket socket;
    std::array<uint8_t, 1 << 16> buf{};
  };
  void accept() {
    acceptor_.async_accept([this](asio::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      auto c = std::make_shared<Conn>(std::move(s));
      read(c);
      accept();
    });
  }
  void read(std::shared_ptr<Conn> c) {
    c->socket.async_read_some(asio::buffer(c->buf), [this, c](asio::error_code ec, size_t) {
      if (!ec) read(c);
    });
  }
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
};

DiscardSink* g_sink = nullptr;

void BM_KernelLoop(benchmark::State& state) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int n = static_cast<int>(state.range(1));
  float *x = nullptr, *y = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&x), n * sizeof(float));
  cudaMalloc(reinterpret_cast<void**>(&y), n * sizeof(float));
  cudaMemset(x, 0, n * sizeof(float));
  cudaMemset(y, 0, n * sizeof(float));
  cudaDeviceSynchronize();
  {
    ia::Config cfg;
    cfg.collector = g_sink->address();
    cfg.cupti = state.range(0) != 0;
    cfg.thread_buffer_bytes = 16u << 20;
    ia::Agent agent(cfg);
    if (cfg.cupti && !agent.cupti_active()) {
      state.SkipWithError("CUPTI did not start");
    } else {
      const uint32_t name = ia::intern("bench.kernels");
      for (auto _ : state) {
        for (int r = 0; r < 10; ++r) {
          ia::ScopedRange range(agent, name);
          for (int i = 0; i < 100; ++i) ia::bench::launch_axpy(y, x, n, 1.0f, nullptr);
        }
        cudaDeviceSynchronize();
      }
      state.SetItemsProcessed(state.iterations() * 1000);
      agent.flush(std::chrono::seconds(5));
      const ia::Stats s = agent.stats();
      state.counters["cupti_dropped"] = static_cast<double>(s.cupti_records_dropped);
      state.counters["sent"] = static_cast<double>(s.records_sent);
    }
  }
  cudaFree(x);
  cudaFree(y);
}

// Args: {cupti off/on, floats per kernel}.
BENCHMARK(BM_KernelLoop)
    ->ArgNames({"cupti", "n"})
    ->Args({0, 1 << 10})
    ->Args({1, 1 << 10})
    ->Args({0, 1 << 20})
    ->Args({1, 1 << 20})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  DiscardSink sink;
  g_sink = &sink;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
