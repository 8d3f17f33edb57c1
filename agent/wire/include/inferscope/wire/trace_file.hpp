// inferscope trace files: a 16-byte file header followed by wire frames.
//
// Each frame is self-checking (CRC-32), so a reader recovers every complete
// frame of a file that was truncated by a crash or a full disk, and skips a
// corrupt frame in the middle by scanning to the next frame magic. Frames carry
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
  uint64_t frames = 0;
  uint64_t corrupt_frames = 0;   // skipped by scanning to the next magic
  uint64_t bytes_skipped = 0;
  bool truncated_tail = false;   // the file ended inside a frame
};

class TraceFileReader {
 public:
  // Reads the whole file into memory; false with error() set if it is not a trace.
  bool open(const std::string& path);
  // Same, over bytes already in memory (used by the fuzzer and by tests).
  bool open_bytes(std::vector<uint8_t> bytes);

  // The next complete, checksum-valid frame (a view into the file's bytes,
  // valid until the reader is destroyed). False at the end.
  bool next_frame(std::span<const uint8_t>& frame);
  const TraceReadStats& stats() const { return stats_; }
  const std::string& error() const { return error_; }
  // A one-line account of what was skipped, for the user; empty when nothing was.
  std::string damage_report() const;

 private:
  std::vector<uint8_t> bytes_;
  size_t offset_ = 0;
  TraceReadStats stats_;
  std::string error_;
  FrameDecoder decoder_;
};

}  // namespace inferscope::wire
