// inferscope collector: read-only walks over stored trace files for the exporters.
//
// A v2 segment (the trace store's files) is read block by block through its
// time index: the block headers are walked (seeking over payloads), blocks
// outside [start_ns, end_ns] are skipped without being read, and only the
// definition blocks (hellos, strings) before the last wanted block are read
// besides, so every string id resolves. Memory is one decompressed block at a
// time (at most wire::kMaxBlockRawBytes, 256 KiB by default), whatever the
// file's size. v1 files (viewer saves) have no index and are read whole.
//
// Nothing is written: unlike TraceStore::open(), a scan never creates a segment
// in the directory it reads, so it is safe on a running collector's --trace-dir.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace inferscope::collector {

struct TraceScanStats {
  uint64_t files = 0;
  uint64_t blocks_read = 0;
  uint64_t blocks_skipped = 0;  // outside the range, by the index alone
  uint64_t frames = 0;
  uint64_t corrupt_frames = 0;      // and damaged blocks
  std::vector<std::string> damage;  // one line per damaged file
};

// source_id is the frame header's; the frame is a view valid during the call.
// Returning false ends the scan early (the scan still succeeds).
using TraceFrameVisitor = std::function<bool(uint32_t source_id, std::span<const uint8_t> frame)>;

// Visits the frames of files (oldest first) whose blocks overlap [start_ns, end_ns].
// False with error set when a file cannot be opened or is not a trace file.
bool scan_trace_files(const std::vector<std::string>& files, int64_t start_ns, int64_t end_ns,
                      const TraceFrameVisitor& visit, TraceScanStats& stats, std::string& error);

inline bool scan_trace_files(const std::vector<std::string>& files, const TraceFrameVisitor& visit,
                             TraceScanStats& stats, std::string& error) {
  return scan_trace_files(files, std::numeric_limits<int64_t>::min(),
                          std::numeric_limits<int64_t>::max(), visit, stats, error);
}

}  // namespace inferscope::collector
