// libFuzzer target: arbitrary bytes as a trace file, v1 (frames) or v2
// (compressed blocks with a time index: block headers, payload CRCs, zstd). The
// recovering reader must skip damage and hand out only checksum-valid frames.
// The corpus holds v1 files, v2 files (v2_blocks.bin, v2_torn_block.bin), a
// format 3 file whose blocks are each followed by a level-3 summary (v3_summaries.bin),
// a format 5 file of column-split blocks with delta-coded correlation ids
// (v5_correlation_deltas.bin) and a format 6 file with a block of implied span
// lengths and one holding a record of the marker's tag (v6_implied_span_lengths.bin).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "inferscope/wire/trace_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferscope::wire;
  TraceFileReader reader;
  if (!reader.open_bytes(std::vector<uint8_t>(data, data + size))) return 0;
  std::span<const uint8_t> frame;
  FrameDecoder decoder;
  Record record;
  while (reader.next_frame(frame)) {
    if (!decoder.open(frame).ok()) __builtin_trap();  // the reader promised a valid frame
    while (decoder.next(record)) {
    }
  }
  (void)reader.damage_report();
  return 0;
}
