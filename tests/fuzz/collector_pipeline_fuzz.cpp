// libFuzzer target: arbitrary bytes as one agent connection into the collector's
// protocol layer (Pipeline: hello/token checks, string tables, aggregation,
// episode detection, Prometheus families, forwarding), the code behind the
// decoder that the frame_decoder target does not reach.
//
// Random bytes almost never carry a valid CRC-32, so each frame's checksum is
// recomputed before it is handed over: the fuzzer explores what the records
// say, not whether the checksum guard works (frame_decoder covers that).
// Invariants checked beyond "no crash": a rejected frame ends the connection
// (a new session starts), every forwarded frame decodes again, and the
// exposition of the registry can be serialized.
#include <prometheus/text_serializer.h>

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <vector>

#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/pipeline.hpp"
#include "inferscope/wire/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferscope;
  collector::CollectorOptions options;
  options.limits.max_frame_bytes = 1u << 16;
  options.limits.max_strings = 64;
  options.limits.max_string_bytes = 4096;
  options.aggregation.window_ns = 1'000'000;  // windows close within the input's timestamps
  options.aggregation.windows = 1;
  options.aggregation.max_models = 4;
  options.aggregation.max_ranks = 4;
  options.aggregation.max_episode_series = 16;
  collector::CollectorMetrics metrics;
  collector::Pipeline pipeline(options, metrics, nullptr);
  pipeline.set_frame_sink([](const collector::SharedFrame& frame) {
    std::vector<wire::Record> records;
    if (!wire::decode_frame(*frame, records).ok()) __builtin_trap();  // viewers could not read it
  });

  auto session = std::make_unique<collector::Session>(options.limits);
  std::span<const uint8_t> stream(data, size);
  int64_t now = 0;
  std::vector<uint8_t> frame;
  while (!stream.empty()) {
    size_t frame_bytes = 0;
    if (!session->decoder.frame_size(stream, frame_bytes).ok()) break;
    frame.assign(stream.begin(), stream.begin() + static_cast<long>(frame_bytes));
    wire::restamp_source_id(frame, 0);
    wire::seal_frame_checksum(frame);  // past the CRC check, into the decoder
    collector::Rejection why;
    if (!pipeline.on_frame(*session, frame, why)) {
      if (why.reason.empty()) __builtin_trap();  // every rejection has a metric label
      pipeline.on_close(*session);
      session = std::make_unique<collector::Session>(options.limits);
    }
    now += 5'000'000;
    pipeline.tick(now);
    stream = stream.subspan(frame_bytes);
  }
  pipeline.on_close(*session);
  std::vector<std::vector<uint8_t>> replay;
  pipeline.replay(replay, true);
  for (const auto& f : replay) {
    std::vector<wire::Record> records;
    if (!wire::decode_frame(f, records).ok()) __builtin_trap();
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, metrics.registry->Collect());
  return 0;
}
