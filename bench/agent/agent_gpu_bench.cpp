// agent_gpu_bench: the overhead of CUPTI activity tracing on a kernel-heavy loop.
//
// BM_KernelLoop launches 1000 small kernels (axpy over `n` floats) inside one
// ScopedRange per 100 launches, then synchronises; the time per iteration in
// microseconds is the time per kernel in nanoseconds. It runs once per "kind
// set" (what CUPTI records, docs/gpu.md), shipping to a loopback sink in every
// case, in this order:
//   0 none            agent, GPU tracing off (the baseline)
//   1 kernel          CONCURRENT_KERNEL only (no attribution)
//   2 default         kernel + launch callbacks (runtime and driver): today's full mode
//   3 kernel+ext      kernel + RUNTIME + EXTERNAL_CORRELATION: the old attribution path
//   4 +driver         default + DRIVER activity records
//   5 +memcpy/memset  default + MEMCPY + MEMSET
//   6 old full        kernel, memcpy, memset, runtime, external correlation: the
//                     full mode before issue 19 (the "before" figure)
//   7 idle            triggered mode, no capture, detach off: CUPTI attached,
//                     everything off
//   8 none (after)    the baseline again, after all of the above in this process:
//                     a rise over 0 is a cost that switching off left behind
//   9 none (after detach)  Config::gpu_trace_detach: a capture, then CUPTI
//                     detached (cuptiFinalize), then the loop with tracing off:
//                     back to row 0 if the detach gives the lasting cost back
//  10 re-attach burst each iteration starts a capture on a detached CUPTI (the
//                     re-attach and enable are inside the timing), runs the
//                     loop traced, ends it; the detach that follows is not timed
//  11 none (after everything)  the baseline once more, the very last row (after
//                     the n = 1M rows too)
// Config::gpu_trace_detach is on by default; every row but 9 and 10 turns it
// off, so rows 1-8 measure CUPTI attached (row 7 is the attached, idle cost
// that the default detach avoids) and rows 9-10 measure the detach.
// Row 0 runs first, before anything in the process has enabled CUPTI. Row 10
// leaves CUPTI detached, so the n = 1M `none` row after it runs detached; the
// n = 1M traced rows attach it again (no detach), so row 11 runs attached.
// The counter "attributed" is the share of captured kernels that carry a range.
// Skips (reports an error) without a CUDA device. Run by scripts/gpu-check.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <array>
#include <asio.hpp>
#include <chrono>
#include <memory>
#include <thread>

#include "../common/discard_sink.hpp"
#include "bench_kernels.hpp"
#include "inferscope/agent.hpp"

namespace ia = inferscope::agent;

namespace {

using inferscope::bench::DiscardSink;

DiscardSink* g_sink = nullptr;

struct KindSet {
  const char* name;
  ia::GpuTraceMode mode;
  uint32_t kinds;
};
constexpr uint32_t kOldFull = ia::kGpuKernels | ia::kGpuMemcpy | ia::kGpuMemset | ia::kGpuRuntime |
                              ia::kGpuExternalCorrelation;
const KindSet kKindSets[] = {
    {"none", ia::GpuTraceMode::kOff, ia::kGpuTraceDefaultKinds},
    {"kernel", ia::GpuTraceMode::kFull, ia::kGpuKernels},
    {"default", ia::GpuTraceMode::kFull, ia::kGpuTraceDefaultKinds},
    {"kernel+runtime+extcorr", ia::GpuTraceMode::kFull,
     ia::kGpuKernels | ia::kGpuRuntime | ia::kGpuExternalCorrelation},
    {"default+driver", ia::GpuTraceMode::kFull, ia::kGpuTraceDefaultKinds | ia::kGpuDriver},
    {"default+memcpy+memset", ia::GpuTraceMode::kFull,
     ia::kGpuTraceDefaultKinds | ia::kGpuMemcpy | ia::kGpuMemset},
    {"old full", ia::GpuTraceMode::kFull, kOldFull},
    {"idle (triggered, no capture)", ia::GpuTraceMode::kTriggered, ia::kGpuTraceDefaultKinds},
    {"none (after)", ia::GpuTraceMode::kOff, ia::kGpuTraceDefaultKinds},
    {"none (after detach)", ia::GpuTraceMode::kTriggered, ia::kGpuTraceDefaultKinds},
    {"re-attach burst", ia::GpuTraceMode::kTriggered, ia::kGpuTraceDefaultKinds},
    {"none (after everything)", ia::GpuTraceMode::kOff, ia::kGpuTraceDefaultKinds},
};
constexpr int kAfterDetach = 9, kReattach = 10, kKindSetCount = 12;

// Polls (generously) until the agent's GPU stats satisfy done; CUDA calls in
// between give a pending detach the API exit it waits for.
template <class Done>
bool wait_for(ia::Agent& agent, Done done) {
  // 100 us steps (they are timed in row 10); gives up after 10 s, so a detach
  // that never comes costs the run seconds, not minutes.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < give_up) {
    if (done(agent.stats().gpu)) return true;
    cudaDeviceSynchronize();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return done(agent.stats().gpu);
}

// One capture on the detaching agent: attach (if detached), enable, run body
// traced, switch off, and (untimed when state is given) wait for the detach.
template <class Body>
bool capture_then_detach(ia::Agent& agent, uint64_t tag, Body body,
                         benchmark::State* state = nullptr) {
  const uint64_t detaches = agent.stats().gpu.cupti_detaches;
  if (agent.request_gpu_capture(0, std::chrono::hours(1), tag) !=
      ia::Agent::CaptureResult::kStarted)
    return false;
  if (!wait_for(agent, [](const ia::GpuTraceStats& g) { return g.tracing; })) return false;
  body();
  if (state) state->PauseTiming();
  agent.set_gpu_trace_mode(ia::GpuTraceMode::kOff);
  const bool ok = wait_for(
      agent, [&](const ia::GpuTraceStats& g) { return !g.tracing && g.cupti_detaches > detaches; });
  agent.set_gpu_trace_mode(ia::GpuTraceMode::kTriggered);
  if (state) state->ResumeTiming();
  return ok;
}

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
    cfg.thread_buffer_bytes = 16u << 20;
    const KindSet& set = kKindSets[state.range(0)];
    cfg.gpu_trace = set.mode;
    cfg.gpu_trace_kinds = set.kinds;
    const int row = static_cast<int>(state.range(0));
    const bool detaching = row == kAfterDetach || row == kReattach;
    cfg.gpu_trace_detach = detaching;  // explicit both ways: the default is on
    cfg.gpu_capture_cooldown = std::chrono::milliseconds(0);
    state.SetLabel(set.name);
    ia::Agent agent(cfg);
    const uint32_t name = ia::intern("bench.kernels");
    auto loop = [&] {
      for (int r = 0; r < 10; ++r) {
        ia::ScopedRange range(agent, name);
        for (int i = 0; i < 100; ++i) ia::bench::launch_axpy(y, x, n, 1.0f, nullptr);
      }
      cudaDeviceSynchronize();
    };
    bool ready = cfg.gpu_trace == ia::GpuTraceMode::kOff || agent.cupti_active();
    // Both detaching rows start detached: one traced capture, then the detach.
    if (ready && detaching) ready = capture_then_detach(agent, 1, loop);
    if (!ready) {
      state.SkipWithError(detaching ? "CUPTI did not start or did not detach (see stderr)"
                                    : "CUPTI did not start");
    } else {
      uint64_t tag = 2;
      for (auto _ : state) {
        if (row == kReattach) {
          if (!capture_then_detach(agent, tag++, loop, &state)) {
            state.SkipWithError("capture or detach did not complete");
            break;
          }
        } else {
          loop();
        }
      }
      state.SetItemsProcessed(state.iterations() * 1000);
      agent.flush(std::chrono::seconds(5));
      const ia::Stats s = agent.stats();
      state.counters["cupti_dropped"] = static_cast<double>(s.cupti_records_dropped);
      state.counters["sent"] = static_cast<double>(s.records_sent);
      state.counters["kernels"] = static_cast<double>(s.gpu.kernels_captured);
      state.counters["attributed"] =
          s.gpu.kernels_captured
              ? static_cast<double>(s.gpu.kernels_attributed) / s.gpu.kernels_captured
              : 0.0;
      state.counters["detaches"] = static_cast<double>(s.gpu.cupti_detaches);
      state.counters["reattaches"] = static_cast<double>(s.gpu.cupti_reattaches);
    }
  }
  cudaFree(x);
  cudaFree(y);
}

// Args: {kind set (kKindSets), floats per kernel}. Small kernels show the
// per-launch cost; the large ones whether it matters once kernels take time.
BENCHMARK(BM_KernelLoop)
    ->ArgNames({"kinds", "n"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int k = 0; k < kKindSetCount - 1; ++k) b->Args({k, 1 << 10});
      for (int k : {0, 2, 6, 8}) b->Args({k, 1 << 20});
      b->Args({kKindSetCount - 1, 1 << 10});  // none (after everything): the last row
    })
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
