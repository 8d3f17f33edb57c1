// collector_bench: what the collector costs and how many series it exports.
//
//   1. ingest: records/s through the pipeline (decode, validate, aggregate,
//      forward) on one core, without and with the trace store writing v2 blocks
//      (zstd level 1) to disk, compressing inline or on the store's own thread:
//      wall-clock records/s and CPU ns per record (all threads of the process);
//   2. series: Prometheus series for a DeepSeek-V3-sized model (58 MoE layers x
//      256 experts x 8 ranks, a few hot / cold / dead experts per layer) in the
//      default and the --per-expert-metrics mode, counted from the registry;
//   3. scrape: time to serialize /metrics for 64 layers x 256 experts.
// Prints a table. `collector_bench quick` runs smaller sizes; `collector_bench ingest
// [frames]` only the ingest table (e.g. under perf record).
#include <prometheus/text_serializer.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "inferscope/collector/pipeline.hpp"
#include "inferscope/collector/trace_store.hpp"

using namespace inferscope::collector;
namespace wire = inferscope::wire;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The kernel's share of the process's CPU time (the store's writes, page faults): what differs
// most between machines with other filesystems or hypervisors, so it is shown apart.
double process_kernel_cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) * 1e-6;
}

wire::Hello hello(const std::string& model, uint32_t rank, uint32_t moe_layers, uint16_t experts) {
  wire::Hello h;
  h.service = "bench";
  h.instance = "bench:" + std::to_string(rank);
  h.rank = rank;
  h.world_size = 8;
  h.model.name = model;
  h.model.top_k = 8;
  for (uint32_t l = 0; l < moe_layers; ++l)
    h.model.layers.push_back({wire::LayerKind::kAttention, wire::FfnKind::kMoe, experts});
  for (uint32_t e = 0; e < experts; ++e) h.model.expert_to_rank.push_back(e % 8);
  return h;
}

std::vector<uint8_t> encode(const std::vector<wire::Record>& recs) {
  wire::FrameEncoder enc;
  for (auto& r : recs) enc.add(r);
  std::vector<uint8_t> out;
  enc.finish(out);
  return out;
}

// [SECTION] ingest
enum class Shape { kRepetitive, kAgentLike };

constexpr uint32_t kNames = 16, kRangeKey = 100, kLayerKey = 101;
const char* kNameText[kNames] = {"decode",      "gemm",        "attention",   "moe.layer.0",
                                 "moe.layer.1", "moe.layer.2", "moe.layer.3", "all_to_all",
                                 "sample",      "layernorm",   "rope",        "kv_append",
                                 "schedule",    "detokenize",  "embed",       "lm_head"};
constexpr size_t kRecordsPerFrame = 2008;

// Frames of 2000 spans and 8 expert loads (64 experts), each frame one agent flush.
// kRepetitive: one thread, two names, 800 ns spans 1 us apart (the input of the
// earlier figures; zstd finds the frames nearly identical). kAgentLike: 8 threads
// of nested ranges over 16 names with random 1-60 us durations, a quarter of the
// spans GPU kernels on 4 streams with a correlation id and a "range" arg naming a
// MoE layer (they reach the kernel-time consumer), 64 distinct frames.
std::vector<std::vector<uint8_t>> ingest_input(Shape shape) {
  std::vector<std::vector<uint8_t>> input;
  std::mt19937 rng(1);
  const size_t distinct = shape == Shape::kRepetitive ? 16 : 64;
  int64_t clock = 0;
  uint64_t correlation = 1;
  std::vector<wire::Record> recs;  // one vector reused: its page faults stay out of profiles
  recs.reserve(kRecordsPerFrame);
  for (size_t f = 0; f < distinct; ++f) {
    recs.clear();
    const int64_t t = static_cast<int64_t>(f) * 50'000'000;
    for (int i = 0; i < 2000; ++i) {
      wire::Span sp;
      if (shape == Shape::kRepetitive) {
        sp.track_id = 7;
        sp.name_id = 1 + (i & 1);
        sp.start_ns = t + i * 1000;
        sp.end_ns = sp.start_ns + 800;
      } else {
        clock += 200 + static_cast<int64_t>(rng() % 2000);
        sp.start_ns = t + clock % 40'000'000;
        sp.end_ns = sp.start_ns + 1000 + static_cast<int64_t>(rng() % 59'000);
        sp.name_id = 1 + rng() % kNames;
        if (i % 4 == 3) {
          sp.track_kind = wire::TrackKind::kGpuStream;
          sp.category = wire::SpanCategory::kKernel;
          sp.track_id = 0;
          sp.stream = 1 + rng() % 4;
          sp.correlation_id = correlation++;
          // As the agent sends them: the range (moe.layer.N) and its typed layer N.
          const int64_t layer = static_cast<int64_t>(rng() % 4);
          sp.num_args = 2;
          sp.args[0] = {kRangeKey, 4 + layer};
          sp.args[1] = {kLayerKey, layer};
        } else {
          sp.track_id = 1000 + rng() % 8;
          sp.depth = static_cast<uint16_t>(rng() % 4);
          if (i % 4 == 2) sp.correlation_id = correlation;
        }
      }
      recs.push_back(sp);
    }
    for (uint32_t l = 0; l < 8; ++l) {
      wire::ExpertLoad el;
      el.layer = l;
      el.timestamp_ns = t + 2'000'000;
      el.routed.resize(64);
      for (auto& v : el.routed) v = rng() % 32;
      recs.push_back(el);
    }
    input.push_back(encode(recs));
  }
  // COLLECTOR_BENCH_DUMP=file: the frames as one raw stream (to try compressors on, e.g. zstd -b).
  if (const char* dump = std::getenv("COLLECTOR_BENCH_DUMP"); dump && shape == Shape::kAgentLike) {
    if (FILE* f = std::fopen(dump, "wb")) {
      for (const auto& frame : input) std::fwrite(frame.data(), 1, frame.size(), f);
      std::fclose(f);
    }
  }
  return input;
}

struct IngestResult {
  double records_per_s;
  double mb_per_s;
  double cpu_ns_per_record;
  double disk_bytes_per_record;
  double ratio;                 // frame bytes / bytes on disk (summaries included)
  uint64_t lost_frames;         // not stored (a full background queue drops whole blocks)
  double kernel_ns_per_record;  // of cpu_ns_per_record, the time in the kernel
  // Records per second of CPU time (all threads): what one core sustains when it
  // is not shared, independent of how loaded the machine is during the run.
  double records_per_cpu_s() const { return 1e9 / cpu_ns_per_record; }
};

// kInlineFast: zstd level -3 (a faster, larger block; the format is the same).
// kInlinePlain: inline, without level-of-detail summaries (format 2 files).
// kInlineNoColumns: inline, summaries, blocks compressed as they are (format 3).
enum class Persist { kOff, kInline, kThread, kInlineFast, kInlinePlain, kInlineNoColumns };

IngestResult ingest(Persist mode, Shape shape, size_t frames) {
  const bool persist = mode != Persist::kOff;
  CollectorOptions o;
  o.aggregation.window_ns = 1'000'000'000;
  CollectorMetrics metrics;
  Pipeline p(o, metrics, nullptr);
  std::unique_ptr<TraceStore> store;
  const auto dir =
      std::filesystem::temp_directory_path() / ("collector-bench-" + std::to_string(::getpid()));
  if (persist) {
    TraceStoreOptions so;
    so.dir = dir.string();
    so.max_bytes = 256u << 20;
    so.background = mode == Persist::kThread;
    if (mode == Persist::kInlineFast) so.zstd_level = -3;
    if (mode == Persist::kInlinePlain) so.summaries = false;
    if (mode == Persist::kInlineNoColumns) so.columns = false;
    store = std::make_unique<TraceStore>(
        so, [&](auto& f) { p.replay(f, false); }, nullptr);
    std::string error;
    if (!store->open(error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      std::exit(1);
    }
  }
  p.set_frame_sink([&](const SharedFrame& f) {
    if (store) store->write(*f, p.sink_frame_summary(), 0);  // as the collector does
  });
  if (store) p.set_record_tap(&store->record_tap());
  Session s(o.limits);
  Rejection why;
  std::vector<wire::Record> first{hello("bench", 0, 8, 64)};
  for (uint32_t n = 0; n < kNames; ++n) first.push_back(wire::StringDef{1 + n, kNameText[n]});
  first.push_back(wire::StringDef{kRangeKey, "range"});
  first.push_back(wire::StringDef{kLayerKey, "layer"});
  p.on_frame(s, encode(first), why);
  std::vector<std::vector<uint8_t>> input = ingest_input(shape);
  size_t bytes = 0;
  const auto start = Clock::now();
  const double cpu0 = process_cpu_s();
  const double kernel0 = process_kernel_cpu_s();
  size_t records = 0;
  for (size_t i = 0; i < frames; ++i) {
    auto& f = input[i % input.size()];
    // Timestamps repeat every cycle of frames: the window clock simply stays put.
    if (!p.on_frame(s, f, why)) {
      std::fprintf(stderr, "rejected: %s\n", why.message.c_str());
      std::exit(1);
    }
    records += kRecordsPerFrame;
    bytes += f.size();
  }
  if (store) store->flush();  // the compression still queued is part of the cost
  const double secs = seconds_since(start);
  const double cpu = process_cpu_s() - cpu0;
  const double kernel = process_kernel_cpu_s() - kernel0;
  const double disk = store ? static_cast<double>(store->stats().bytes) : 0.0;
  // Every frame must be on disk for the row to count: the thread mode drops whole
  // blocks when ingest outruns the writer (as the collector would), which makes it
  // look cheaper than it is.
  const uint64_t lost = store ? store->stats().write_errors : 0;
  store.reset();
  std::filesystem::remove_all(dir);
  return {records / secs,
          bytes / secs / 1e6,
          cpu * 1e9 / records,
          disk / records,
          disk > 0 ? bytes / disk : 0.0,
          lost,
          kernel * 1e9 / records};
}

// [SECTION] series
struct SeriesResult {
  size_t series;
  double feed_s;
};

SeriesResult series(bool per_expert, uint32_t ranks, uint32_t layers, uint16_t experts,
                    uint32_t windows) {
  CollectorOptions o;
  o.aggregation.window_ns = 1'000'000'000;
  o.aggregation.per_expert_metrics = per_expert;
  o.aggregation.max_episode_series = 1u << 20;  // measure the shape, not the cap
  CollectorMetrics metrics;
  Pipeline p(o, metrics, nullptr);
  std::vector<std::unique_ptr<Session>> sessions;
  Rejection why;
  for (uint32_t r = 0; r < ranks; ++r) {
    sessions.push_back(std::make_unique<Session>(o.limits));
    p.on_frame(*sessions.back(), encode({hello("deepseek-v3", r, layers, experts)}), why);
  }
  const auto start = Clock::now();
  // Per layer: experts 0 and 1 hot (4x fair), expert 2 cold (0.1x), expert 3 dead.
  for (uint32_t w = 0; w <= windows; ++w) {
    for (uint32_t r = 0; r < ranks; ++r) {
      std::vector<wire::Record> recs;
      for (uint32_t l = 0; l < layers; ++l) {
        wire::ExpertLoad el;
        el.layer = l;
        el.timestamp_ns = static_cast<int64_t>(w) * 1'000'000'000 + 1 + r;
        el.routed.assign(experts, 100);
        el.routed[(l + 0) % experts] = 400;
        el.routed[(l + 1) % experts] = 400;
        el.routed[(l + 2) % experts] = 10;
        el.routed[(l + 3) % experts] = 0;
        recs.push_back(std::move(el));
      }
      p.on_frame(*sessions[r], encode(recs), why);
    }
  }
  const double feed = seconds_since(start);
  return {count_series(*metrics.registry), feed};
}

double scrape_ms(uint32_t layers, uint16_t experts, bool per_expert, size_t& bytes) {
  CollectorOptions o;
  o.aggregation.per_expert_metrics = per_expert;
  o.aggregation.window_ns = 1'000'000'000;
  CollectorMetrics metrics;
  Pipeline p(o, metrics, nullptr);
  Session s(o.limits);
  Rejection why;
  p.on_frame(s, encode({hello("m", 0, layers, experts)}), why);
  for (uint32_t w = 0; w < 5; ++w) {
    std::vector<wire::Record> recs;
    for (uint32_t l = 0; l < layers; ++l) {
      wire::ExpertLoad el;
      el.layer = l;
      el.timestamp_ns = static_cast<int64_t>(w) * 1'000'000'000 + 1;
      el.routed.assign(experts, 50);
      el.routed[l % experts] = 300;
      recs.push_back(std::move(el));
    }
    p.on_frame(s, encode(recs), why);
  }
  prometheus::TextSerializer ser;
  const int reps = 5;
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) bytes = ser.Serialize(metrics.registry->Collect()).size();
  return seconds_since(start) * 1000.0 / reps;
}

}  // namespace

// only_shape / only_mode: "" = all, else "repetitive" / "agent" and "off" / "inline" / "thread" /
// "fast".
void print_ingest(size_t frames, const std::string& only_shape, const std::string& only_mode) {
  std::printf("%-46s %11s %7s %10s %12s %10s %6s %11s %13s\n",
              "ingest (decode+validate+aggregate+forward)", "records/s", "MB/s", "CPU ns/rec",
              "M rec/CPU-s", "disk B/rec", "ratio", "lost frames", "of it kernel");
  for (Shape shape : {Shape::kRepetitive, Shape::kAgentLike}) {
    if (!only_shape.empty() && only_shape != (shape == Shape::kRepetitive ? "repetitive" : "agent"))
      continue;
    std::printf("%s\n", shape == Shape::kRepetitive
                            ? " repetitive frames (1 thread, 2 names, fixed 800 ns spans)"
                            : " agent-like frames (8 threads, 16 names, 1-60 us, 1/4 kernels)");
    for (Persist mode : {Persist::kOff, Persist::kInline, Persist::kThread, Persist::kInlineFast,
                         Persist::kInlinePlain, Persist::kInlineNoColumns}) {
      const char* name = mode == Persist::kOff           ? "off"
                         : mode == Persist::kInline      ? "inline"
                         : mode == Persist::kThread      ? "thread"
                         : mode == Persist::kInlineFast  ? "fast"
                         : mode == Persist::kInlinePlain ? "plain"
                                                         : "nocolumns";
      if (!only_mode.empty() && only_mode != name) continue;
      auto r = ingest(mode, shape, frames);
      const char* label =
          mode == Persist::kOff               ? "  without persistence"
          : mode == Persist::kInline          ? "  trace store, zstd-1 blocks inline"
          : mode == Persist::kInlineFast      ? "  trace store, zstd -3 blocks inline"
          : mode == Persist::kInlinePlain     ? "  trace store, zstd-1 inline, no summaries"
          : mode == Persist::kInlineNoColumns ? "  trace store, zstd-1 inline, format 3 blocks"
                                              : "  trace store, zstd-1 blocks on its thread";
      std::printf("%-46s %11.3e %7.1f %10.1f %12.1f %10.3f %6.2f %11llu %13.1f\n", label,
                  r.records_per_s, r.mb_per_s, r.cpu_ns_per_record, r.records_per_cpu_s() / 1e6,
                  r.disk_bytes_per_record, r.ratio, static_cast<unsigned long long>(r.lost_frames),
                  r.kernel_ns_per_record);
    }
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "quick") == 0;
  // `collector_bench ingest [frames [repetitive|agent [off|inline|thread|fast|plain|nocolumns]]]`:
  // the ingest table alone, or one row of it (for a profiler).
  const bool ingest_only = argc > 1 && std::strcmp(argv[1], "ingest") == 0;
  const size_t frames = ingest_only && argc > 2 ? std::strtoul(argv[2], nullptr, 10)
                        : quick                 ? 200
                                                : 2000;
  std::printf(
      "inferscope collector_bench (one core; frames of 2000 spans + 8 x 64-expert loads)\n\n");
  print_ingest(frames, ingest_only && argc > 3 ? argv[3] : "",
               ingest_only && argc > 4 ? argv[4] : "");
  if (ingest_only) return 0;
  const uint32_t ranks = quick ? 2 : 8;
  std::printf(
      "\nseries for a DeepSeek-V3-sized model: 58 MoE layers x 256 experts x %u ranks,\n"
      "per layer 2 hot + 1 cold + 1 dead expert in an episode\n",
      ranks);
  std::printf("%-28s %12s %12s\n", "mode", "series", "feed s");
  for (bool per_expert : {false, true}) {
    auto r = series(per_expert, ranks, 58, 256, 4);
    std::printf("%-28s %12zu %12.2f\n", per_expert ? "--per-expert-metrics" : "default (bounded)",
                r.series, r.feed_s);
  }
  std::printf("\n/metrics serialization, 64 layers x 256 experts, one rank\n");
  std::printf("%-28s %12s %12s\n", "mode", "ms/scrape", "bytes");
  for (bool per_expert : {false, true}) {
    size_t bytes = 0;
    const double ms = scrape_ms(64, 256, per_expert, bytes);
    std::printf("%-28s %12.2f %12zu\n", per_expert ? "--per-expert-metrics" : "default (bounded)",
                ms, bytes);
  }
  return 0;
}
