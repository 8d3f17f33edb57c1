// inferscope collector: the trace store, rotating segment files of wire frames.
//
// Files are DIR/trace-<n>.istrace (n from 1, zero-padded; names are made here,
// nothing from the network becomes a path). Each is a TraceFileWriter file: a
// header and whole, CRC-checked frames, so a crash or a full disk leaves every
// complete frame readable. A new segment starts with every source's hello and
// string definitions (the replay callback), so each segment can be read alone
// and the oldest can be deleted to keep the total under max_bytes.
//
// A write error (disk full) is counted and logged once per error episode; the
// store keeps trying (at most once a second, in a fresh segment) and ingest
// never waits for it.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "inferscope/wire/trace_file.hpp"

namespace inferscope::collector {

struct TraceStoreOptions {
  std::string dir;
  uint64_t max_bytes = 1ull << 30;
  uint64_t segment_bytes = 0;  // 0: max_bytes / 8 clamped to [64 KiB, 64 MiB]
};

class TraceStore {
 public:
  using Replay = std::function<void(std::vector<std::vector<uint8_t>>&)>;
  using Log = std::function<void(const std::string&)>;

  TraceStore(TraceStoreOptions options, Replay replay, Log log);
  ~TraceStore();

  // Creates the directory, finds existing segments (their bytes count towards
  // the bound; numbering continues after them) and opens a new segment.
  bool open(std::string& error);
  void write(std::span<const uint8_t> frame, int64_t steady_now_ns);
  void flush();
  void close();

  uint64_t total_bytes() const;                  // all segments on disk
  uint64_t write_errors() const { return write_errors_; }
  const std::vector<std::string> segment_paths() const;
  static std::string segment_name(uint64_t index);  // "trace-000001.istrace"
  // Segment files of a directory, oldest first.
  static std::vector<std::string> list_segments(const std::string& dir);

 private:
  bool start_segment();
  void enforce_bound();
  void on_error(const std::string& what, int64_t steady_now_ns);

  struct Segment {
    uint64_t index;
    std::string path;
    uint64_t bytes;
  };
  TraceStoreOptions options_;
  Replay replay_;
  Log log_;
  std::deque<Segment> closed_;
  uint64_t closed_bytes_ = 0;
  uint64_t next_index_ = 1;
  Segment current_{0, "", 0};
  wire::TraceFileWriter writer_;
  bool failing_ = false;
  int64_t last_retry_ns_ = 0;
  uint64_t write_errors_ = 0;
};

}  // namespace inferscope::collector
