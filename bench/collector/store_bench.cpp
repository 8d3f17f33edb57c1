// store_bench: the trace store with 10 M spans (bytes on disk per span, write
// rate) and range queries over it through the viewer API's answer_range():
// the full range at ~2000 px, a 1 s, a 250 ms and a 10 ms window (answered from
// the level-of-detail summaries where a block lies wholly inside the range;
// "blocks" counts data or summary blocks read of the data blocks stored).
// Prints a table. `store_bench quick` stores 1 M spans instead; `no-summaries`
// writes no summaries (the store before them).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "inferscope/collector/range_query.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/codec.hpp"

using namespace inferscope::collector;
namespace wire = inferscope::wire;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kThreads = 8;
constexpr int64_t kSpacingNs = 80'000;  // per thread: 12.5 k spans/s, 100 k/s in all

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void replay(std::vector<std::vector<uint8_t>>& frames) {
  wire::EncoderOptions o;
  o.source_id = 1;
  wire::FrameEncoder enc(o);
  wire::Hello h;
  h.service = "store-bench";
  h.instance = "bench:1";
  enc.add(wire::Record{h});
  for (uint32_t i = 1; i <= 16; ++i) enc.add(wire::StringDef{i, "op." + std::to_string(i)});
  frames.emplace_back();
  enc.finish(frames.back());
}

}  // namespace

int main(int argc, char** argv) {
  // quick: 1 M spans; no-summaries: the store as it was before level-of-detail
  // summaries (every query decodes its blocks), for a before/after in one binary.
  bool quick = false, summaries = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "quick") == 0)
      quick = true;
    else if (std::strcmp(argv[i], "no-summaries") == 0)
      summaries = false;
    else {
      std::fprintf(stderr, "usage: store_bench [quick] [no-summaries]\n");
      return 2;
    }
  }
  const uint64_t total = quick ? 1'000'000 : 10'000'000;
  const auto dir =
      std::filesystem::temp_directory_path() / ("store-bench-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  TraceStoreOptions so;
  so.dir = dir.string();
  so.max_bytes = 8ull << 30;
  so.segment_bytes = 64u << 20;
  so.background = false;
  so.summaries = summaries;
  auto store = std::make_unique<TraceStore>(so, replay, nullptr);
  std::string error;
  if (!store->open(error)) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  // Agent-like frames: 2000 spans each, 8 threads interleaved, 1..60 us long.
  std::mt19937 rng(7);
  wire::EncoderOptions eo;
  eo.source_id = 1;
  wire::FrameEncoder enc(eo);
  std::vector<uint8_t> frame;
  uint64_t raw_bytes = 0;
  const auto t_write = Clock::now();
  for (uint64_t i = 0; i < total; ++i) {
    wire::Span s;
    s.track_id = 100 + static_cast<uint32_t>(i % kThreads);
    s.name_id = 1 + static_cast<uint32_t>(rng() % 16);
    s.start_ns =
        static_cast<int64_t>(i / kThreads) * kSpacingNs + static_cast<int64_t>(i % kThreads) * 1000;
    s.end_ns = s.start_ns + 1000 + static_cast<int64_t>(rng() % 59'000);
    enc.add(s);
    if (enc.record_count() == 2000) {
      frame.clear();
      enc.finish(frame);
      raw_bytes += frame.size();
      store->write(frame, 0);  // summarizes by decoding, like a tool would
    }
  }
  store->flush();
  const double write_s = seconds_since(t_write);
  const TraceStoreStats st = store->stats();
  const int64_t end_ns = static_cast<int64_t>(total / kThreads) * kSpacingNs;
  std::printf("inferscope store_bench: %llu spans, %u threads, %.1f s of trace\n\n",
              static_cast<unsigned long long>(total), kThreads, static_cast<double>(end_ns) / 1e9);
  std::printf("%-40s %12.2f\n", "wire bytes per span (frames)",
              static_cast<double>(raw_bytes) / total);
  std::printf("%-40s %12.2f\n", "bytes on disk per span (zstd-1 blocks)",
              static_cast<double>(st.bytes) / total);
  std::printf("%-40s %12.2f\n", "  of which LOD summaries",
              static_cast<double>(st.summary_bytes_written) / total);
  std::printf("%-40s %12llu\n", "blocks", static_cast<unsigned long long>(st.blocks_written));
  std::printf("%-40s %12llu\n", "summary blocks",
              static_cast<unsigned long long>(st.summary_blocks_written));
  std::printf("%-40s %12.3e\n", "encode + store, spans/s (one core)", total / write_s);

  struct Case {
    const char* label;
    int64_t from, to;
  };
  const int64_t mid = end_ns / 2;
  const Case cases[] = {{"full range, 2000 px", 0, end_ns},
                        {"1 s window, 2000 px", mid, mid + 1'000'000'000},
                        {"250 ms window, 2000 px", mid, mid + 250'000'000},
                        {"10 ms window, 2000 px", mid, mid + 10'000'000}};
  std::printf("\n%-24s %10s %12s %12s %10s %10s %12s\n", "range query", "ms", "spans",
              "records out", "merged", "blocks", "reply bytes");
  for (const auto& c : cases) {
    wire::RangeQuery q;
    q.from_ns = c.from;
    q.to_ns = c.to;
    q.resolution_ns = std::max<int64_t>(1, (c.to - c.from) / 2000);
    RangeReply reply;
    const auto t = Clock::now();
    answer_range(store.get(), q, reply);
    const double ms = seconds_since(t) * 1e3;
    size_t bytes = 0;
    for (const auto& f : reply.frames) bytes += f.size();
    std::printf("%-24s %10.1f %12llu %12llu %10llu %4u/%-5u %12zu\n", c.label, ms,
                static_cast<unsigned long long>(reply.end.spans),
                static_cast<unsigned long long>(reply.end.records),
                static_cast<unsigned long long>(reply.end.merged_spans), reply.end.blocks_read,
                reply.end.blocks_read + reply.end.blocks_skipped, bytes);
  }
  // Where the full-range time goes: the store alone (read + CRC + decompress),
  // then with every frame decoded, against the whole query above.
  {
    uint64_t frames = 0;
    auto t = Clock::now();
    store->query(0, end_ns, [&](std::span<const uint8_t>) { ++frames; });
    const double scan_ms = seconds_since(t) * 1e3;
    uint64_t records = 0;
    wire::FrameDecoder dec;
    wire::Record r;
    t = Clock::now();
    store->query(0, end_ns, [&](std::span<const uint8_t> f) {
      if (!dec.open(f).ok()) return;
      while (dec.next(r)) ++records;
    });
    const double decode_ms = seconds_since(t) * 1e3;
    std::printf(
        "\nfull range: store read + decompress %.1f ms (%llu frames); + decode %.1f ms (%llu "
        "records)\n",
        scan_ms, static_cast<unsigned long long>(frames), decode_ms,
        static_cast<unsigned long long>(records));
  }
  store.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
