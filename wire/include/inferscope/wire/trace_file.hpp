// inferscope trace files: a 16-byte file header followed by wire frames.
//
// Two formats, told apart by the header's magic:
//   v1 "ISTRACE1": the frames themselves, one after the other. Written by
//       TraceFileWriter (the viewer's saves, tools); simple and streamable.
//   v2 "ISTRACE2": zstd-compressed blocks of frames with a time index
//       (trace_block.hpp). Written by the collector's trace store.
// TraceFileReader reads both and hands out the same frames.
//
// Each frame is self-checking (CRC-32), so a reader recovers every complete
// frame of a file that was truncated by a crash or a full disk, and skips a
// corrupt frame in the middle by scanning to the next frame magic (v2: a
// corrupt block is skipped whole, by its size when its header is good, else by
// scanning to the next block magic; every skip is counted). Frames carry
// their source id: string ids are per source, and each source's hello and
// string definitions precede its other records in the same file.
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "inferscope/wire/codec.hpp"

namespace inferscope::wire {

inline constexpr char kTraceFileMagic[8] = {'I', 'S', 'T', 'R', 'A', 'C', 'E', '1'};
inline constexpr size_t kTraceFileHeaderBytes = 16;

// 1 or 2 when the first 8 bytes are a trace file magic, else 0.
int trace_file_format(std::span<const uint8_t> first_bytes);

class TraceFileWriter {
 public:
  TraceFileWriter() = default;
  ~TraceFileWriter();
  TraceFileWriter(const TraceFileWriter&) = delete;
  TraceFileWriter& operator=(const TraceFileWriter&) = delete;

  // Creates (truncates) the file and writes the header. False with error() set on failure.
  bool open(const std::string& path);
  // Appends one whole encoded frame. On a short write (disk full) the partial
  // frame is cut off again so the file stays a sequence of whole frames.
  bool write_frame(std::span<const uint8_t> frame);
  bool flush();
  void close();
  bool is_open() const { return file_ != nullptr; }
  uint64_t bytes_written() const { return bytes_written_; }
  const std::string& error() const { return error_; }

 private:
  std::FILE* file_ = nullptr;
  uint64_t bytes_written_ = 0;
  std::string error_;
};

struct TraceReadStats {
  int format = 0;  // 1 or 2
  uint64_t frames = 0;
  uint64_t corrupt_frames = 0;  // skipped by scanning to the next magic
  uint64_t blocks = 0;          // v2: blocks read
  uint64_t corrupt_blocks = 0;  // v2: skipped (bad header, payload CRC or decompression)
  uint64_t bytes_skipped = 0;
  bool truncated_tail = false;  // the file ended inside a frame (v2: inside a block)
};

class TraceFileReader {
 public:
  // Reads the whole file into memory; false with error() set if it is not a trace.
  bool open(const std::string& path);
  // Same, over bytes already in memory (used by the fuzzer and by tests).
  bool open_bytes(std::vector<uint8_t> bytes);

  // The next complete, checksum-valid frame (a view into the reader's bytes,
  // valid until the next call). False at the end.
  bool next_frame(std::span<const uint8_t>& frame);
  const TraceReadStats& stats() const { return stats_; }
  const std::string& error() const { return error_; }
  // A one-line account of what was skipped, for the user; empty when nothing was.
  std::string damage_report() const;

 private:
  bool next_frame_in(std::span<const uint8_t> region, size_t& offset,
                     std::span<const uint8_t>& frame);
  bool next_block();  // v2: decompresses the next good block into block_

  std::vector<uint8_t> bytes_;
  size_t offset_ = 0;
  std::vector<uint8_t> block_;  // v2: the frames of the current block
  size_t block_offset_ = 0;
  TraceReadStats stats_;
  std::string error_;
  FrameDecoder decoder_;
};

}  // namespace inferscope::wire
