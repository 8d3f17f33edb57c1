// Codec throughput: records/s and bytes/record for encode and decode of the
// record kinds that dominate a stream (spans and expert loads).
#include <benchmark/benchmark.h>

#include "inferscope/wire/codec.hpp"
#include "sample_records.hpp"

namespace {

using namespace inferscope::wire;

constexpr int kRecordsPerFrame = 4096;

template <class Make>
void encode_bench(benchmark::State& state, Make make, bool compress) {
  EncoderOptions options;
  options.compress = compress;
  FrameEncoder enc(options);
  std::vector<decltype(make(0))> inputs;
  for (int i = 0; i < kRecordsPerFrame; ++i) inputs.push_back(make(i));
  std::vector<uint8_t> out;
  out.reserve(1 << 20);
  size_t bytes = 0;
  int64_t records = 0;
  for (auto _ : state) {
    out.clear();
    for (const auto& r : inputs) enc.add(r);
    enc.finish(out);
    bytes += out.size();
    records += kRecordsPerFrame;
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(records);
  state.counters["bytes_per_record"] = static_cast<double>(bytes) / static_cast<double>(records);
  state.counters["records_per_s"] =
      benchmark::Counter(static_cast<double>(records), benchmark::Counter::kIsRate);
}

template <class Make>
void decode_bench(benchmark::State& state, Make make, bool compress) {
  EncoderOptions options;
  options.compress = compress;
  FrameEncoder enc(options);
  for (int i = 0; i < kRecordsPerFrame; ++i) enc.add(make(i));
  std::vector<uint8_t> frame;
  enc.finish(frame);
  FrameDecoder dec;
  Record record;
  int64_t records = 0;
  for (auto _ : state) {
    if (!dec.open(frame).ok()) state.SkipWithError("frame did not decode");
    while (dec.next(record)) ++records;
    benchmark::DoNotOptimize(record);
  }
  state.SetItemsProcessed(records);
  state.counters["bytes_per_record"] = static_cast<double>(frame.size()) / kRecordsPerFrame;
  state.counters["records_per_s"] =
      benchmark::Counter(static_cast<double>(records), benchmark::Counter::kIsRate);
}

Span cpu_span(int i) {
  Span s;
  s.track_id = 12345;
  s.name_id = static_cast<uint32_t>(1 + i % 32);
  s.depth = static_cast<uint16_t>(i % 4);
  s.start_ns = 1'000'000'000'000 + int64_t(i) * 2'500;
  s.end_ns = s.start_ns + 1'800 + i % 300;
  s.request_id = 1000 + i / 64;
  return s;
}

ExpertLoad load_64(int i) {
  ExpertLoad e = testing::sample_load();
  e.layer = static_cast<uint32_t>(i % 24);
  e.step = static_cast<uint64_t>(i / 24);
  e.timestamp_ns = 1'000'000'000'000 + int64_t(i) * 40'000;
  e.routed.resize(64);
  for (size_t x = 0; x < 64; ++x) e.routed[x] = static_cast<uint32_t>((x * 7 + i) % 50);
  return e;
}

void BM_EncodeSpan(benchmark::State& s) {
  encode_bench(s, cpu_span, false);
}
void BM_EncodeSpanZstd(benchmark::State& s) {
  encode_bench(s, cpu_span, true);
}
void BM_DecodeSpan(benchmark::State& s) {
  decode_bench(s, cpu_span, false);
}
void BM_DecodeSpanZstd(benchmark::State& s) {
  decode_bench(s, cpu_span, true);
}
void BM_EncodeExpertLoad64(benchmark::State& s) {
  encode_bench(s, load_64, false);
}
void BM_DecodeExpertLoad64(benchmark::State& s) {
  decode_bench(s, load_64, false);
}

BENCHMARK(BM_EncodeSpan);
BENCHMARK(BM_EncodeSpanZstd);
BENCHMARK(BM_DecodeSpan);
BENCHMARK(BM_DecodeSpanZstd);
BENCHMARK(BM_EncodeExpertLoad64);
BENCHMARK(BM_DecodeExpertLoad64);

}  // namespace

BENCHMARK_MAIN();
