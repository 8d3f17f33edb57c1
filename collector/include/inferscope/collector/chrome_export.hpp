// inferscope collector: trace files -> Chrome Trace Event JSON (Perfetto, speedscope,
// chrome://tracing, and the inferscope viewer's importer).
//
// Streams: events are written as frames are read, so memory stays bounded by
// one file's bytes (TraceFileReader holds a segment) plus per-source string
// tables, whatever the trace's length.
//
// Mapping (the shared contract, docs/collector.md):
//   span            -> "X" (pid = source id, tid = CPU thread id or
//                      1000000 + device * 1000 + stream for GPU streams)
//   correlation id  -> flow "s" at the CPU launch (runtime span), "f" (bp "e") at
//                      the GPU kernel / memcpy / memset with the same id
//   stage, request  -> async "b"/"e" pairs (they overlap across requests)
//   memory, counter -> "C" counters
//   alert           -> "i" instant at the start (open) or "X" over [start, end] (closed), pid 0
//   hello           -> "M" process_name / process_sort_index (by rank); thread_name per track
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace inferscope::collector {

struct ExportOptions {
  int64_t start_ns = std::numeric_limits<int64_t>::min();  // keep events that end at or after
  int64_t end_ns = std::numeric_limits<int64_t>::max();    // ... and start at or before
};

struct ExportStats {
  uint64_t files = 0;
  uint64_t frames = 0;
  uint64_t records = 0;
  uint64_t events = 0;
  uint64_t corrupt_frames = 0;
  uint64_t blocks_read = 0;         // Perfetto export: store blocks decompressed
  uint64_t blocks_skipped = 0;      // ... and skipped by the time index
  uint64_t bytes = 0;               // ... and the bytes written
  std::vector<std::string> damage;  // one line per damaged file
};

// A trace file, or a directory of trace-<n>.istrace segments (oldest first).
std::vector<std::string> trace_inputs(const std::string& path, std::string& error);

bool export_chrome_trace(const std::vector<std::string>& files, std::ostream& out,
                         const ExportOptions& options, ExportStats& stats, std::string& error);

}  // namespace inferscope::collector
