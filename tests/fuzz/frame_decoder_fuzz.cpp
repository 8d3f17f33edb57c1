// libFuzzer target: arbitrary bytes as a stream of frames into the decoder, the
// way the collector's ingest sees them. Must never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <span>

#include "inferscope/wire/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferscope::wire;
  DecoderOptions options;
  options.max_frame_bytes = 1u << 16;
  FrameDecoder decoder(options);
  std::span<const uint8_t> stream(data, size);
  Record record;
  while (!stream.empty()) {
    size_t frame_bytes = 0;
    DecodeStatus status = decoder.frame_size(stream, frame_bytes);
    if (!status.ok()) break;
    if (decoder.open(stream.first(frame_bytes)).ok()) {
      while (decoder.next(record)) {
      }
    }
    stream = stream.subspan(frame_bytes);
  }
  return 0;
}
