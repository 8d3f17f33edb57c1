// export_bench: inferscope-export's two formats over one stored trace of N spans:
// Perfetto protobuf (TrackEvent, interned) vs Chrome Trace Event JSON. Bytes per
// span, export time and rate, and the exporting process's peak memory (each
// export runs in a forked child, so its peak RSS is its own).
//
//   export_bench [spans] [file]  (default 10 M; with a file, the Perfetto trace is
//                                also written there, after the measured runs)
//
// The trace looks like an agent's: 8 CPU threads with nested ranges (16 names);
// a quarter of the spans are CUDA launches and a quarter their GPU kernels on 4
// streams (flows, a range arg on each kernel); memory counters every 1000 spans. Output goes to
// a counting sink (no disk), so the figures are the exporters' own work: read +
// decompress + decode + encode.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <random>
#include <streambuf>

#include "inferscope/collector/chrome_export.hpp"
#include "inferscope/collector/perfetto_export.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/codec.hpp"

using namespace inferscope::collector;
namespace wire = inferscope::wire;
using Clock = std::chrono::steady_clock;

namespace {

// Counts bytes, keeps none.
class CountingBuf : public std::streambuf {
 public:
  uint64_t bytes = 0;

 protected:
  std::streamsize xsputn(const char*, std::streamsize n) override {
    bytes += static_cast<uint64_t>(n);
    return n;
  }
  int overflow(int c) override {
    ++bytes;
    return c;
  }
};

void definitions(wire::FrameEncoder& enc) {
  wire::Hello h;
  h.service = "export-bench";
  h.instance = "bench:1";
  h.host = "bench";
  enc.add(wire::Record{h});
  for (uint32_t i = 1; i <= 16; ++i) enc.add(wire::StringDef{i, "op." + std::to_string(i)});
  enc.add(wire::StringDef{20, "cudaLaunchKernel"});
  enc.add(wire::StringDef{21, "gemm_kernel"});
  enc.add(wire::StringDef{22, "range"});
  enc.add(wire::StringDef{23, "layer.3.moe"});
}

uint64_t write_trace(const std::filesystem::path& dir, uint64_t total) {
  TraceStoreOptions so;
  so.dir = dir.string();
  so.max_bytes = 16ull << 30;
  so.segment_bytes = 64u << 20;
  so.background = false;
  TraceStore store(
      so,
      [](std::vector<std::vector<uint8_t>>& frames) {
        wire::EncoderOptions o;
        o.source_id = 1;
        wire::FrameEncoder enc(o);
        definitions(enc);
        frames.emplace_back();
        enc.finish(frames.back());
      },
      nullptr);
  std::string error;
  if (!store.open(error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    std::exit(1);
  }
  std::mt19937 rng(7);
  wire::EncoderOptions eo;
  eo.source_id = 1;
  wire::FrameEncoder enc(eo);
  std::vector<uint8_t> frame;
  uint64_t spans = 0, corr = 0, pairs = 0;
  int64_t t = 1'000'000'000;
  auto add = [&](const wire::Record& r) {
    enc.add(r);
    if (enc.record_count() >= 2000) {
      frame.clear();
      enc.finish(frame);
      store.write(frame, 0);
    }
  };
  while (spans < total) {
    const uint32_t thread = 100 + static_cast<uint32_t>(spans % 8);
    t += 10'000;
    if (pairs++ % 2 == 1) {  // a launch and its kernel
      wire::Span l;
      l.track_id = thread;
      l.name_id = 20;
      l.category = wire::SpanCategory::kRuntime;
      l.start_ns = t;
      l.end_ns = t + 4000;
      l.correlation_id = ++corr;
      wire::Span k;
      k.track_kind = wire::TrackKind::kGpuStream;
      k.track_id = 0;
      k.stream = 7 + static_cast<uint32_t>(corr % 4);
      k.name_id = 21;
      k.category = wire::SpanCategory::kKernel;
      k.start_ns = t + 6000;
      k.end_ns = t + 6000 + 1000 + static_cast<int64_t>(rng() % 30'000);
      k.correlation_id = corr;
      k.num_args = 1;
      k.args[0] = {22, 23};
      add(l);
      add(k);
      spans += 2;
    } else {  // a range with a nested child
      wire::Span outer;
      outer.track_id = thread;
      outer.name_id = 1 + static_cast<uint32_t>(rng() % 16);
      outer.start_ns = t;
      outer.end_ns = t + 9000;
      wire::Span inner = outer;
      inner.name_id = 1 + static_cast<uint32_t>(rng() % 16);
      inner.depth = 1;
      inner.start_ns = t + 1000;
      inner.end_ns = t + 8000;
      add(inner);
      add(outer);
      spans += 2;
    }
    if (spans % 1000 == 0)
      add(wire::MemorySample{t, 0, wire::MemoryKind::kKvCache, spans * 4096, 64ull << 30});
  }
  frame.clear();
  enc.finish(frame);
  if (!frame.empty()) store.write(frame, 0);
  store.flush();
  return store.stats().bytes;
}

struct Result {
  double seconds = 0;
  uint64_t bytes = 0, events = 0;
  long max_rss_kib = 0;
  bool ok = false;
};

// Runs one export in a child: its wall time, output size and its own peak RSS.
Result run_child(bool perfetto, const std::vector<std::string>& files) {
  int fds[2];
  if (::pipe(fds) != 0) std::exit(1);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    CountingBuf sink;
    std::ostream out(&sink);
    ExportStats stats;
    std::string error;
    const auto t0 = Clock::now();
    const bool ok = perfetto ? export_perfetto_trace({{"bench", files}}, out, {}, stats, error)
                             : export_chrome_trace(files, out, {}, stats, error);
    Result r;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.bytes = sink.bytes;
    r.events = stats.events;
    r.ok = ok;
    if (!ok) std::fprintf(stderr, "export failed: %s\n", error.c_str());
    if (::write(fds[1], &r, sizeof r) != static_cast<ssize_t>(sizeof r)) std::_Exit(2);
    std::_Exit(ok ? 0 : 1);
  }
  ::close(fds[1]);
  Result r;
  if (::read(fds[0], &r, sizeof r) != static_cast<ssize_t>(sizeof r)) r.ok = false;
  ::close(fds[0]);
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  r.max_rss_kib = ru.ru_maxrss;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000'000;
  const auto dir =
      std::filesystem::temp_directory_path() / ("export-bench-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto t0 = Clock::now();
  const uint64_t stored = write_trace(dir, total);
  const double write_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::string error;
  const auto files = trace_inputs(dir.string(), error);
  std::printf(
      "inferscope export_bench: %llu spans (%llu store bytes, %.1f B/span, written in %.1f s)\n\n",
      static_cast<unsigned long long>(total), static_cast<unsigned long long>(stored),
      double(stored) / double(total), write_s);
  std::printf("%-10s %14s %10s %10s %12s %12s\n", "format", "bytes", "B/span", "seconds", "spans/s",
              "peak RSS MiB");
  for (bool perfetto : {true, false}) {
    const Result r = run_child(perfetto, files);
    if (!r.ok) {
      std::printf("%-10s failed\n", perfetto ? "perfetto" : "json");
      continue;
    }
    std::printf("%-10s %14llu %10.1f %10.2f %12.3e %12.1f\n", perfetto ? "perfetto" : "json",
                static_cast<unsigned long long>(r.bytes), double(r.bytes) / double(total),
                r.seconds, double(total) / r.seconds, double(r.max_rss_kib) / 1024.0);
  }
  if (argc > 2) {
    std::ofstream f(argv[2], std::ios::binary | std::ios::trunc);
    ExportStats stats;
    if (!export_perfetto_trace({{"bench", files}}, f, {}, stats, error))
      std::fprintf(stderr, "%s\n", error.c_str());
  }
  std::filesystem::remove_all(dir);
  return 0;
}
