// inferscope collector: the trace store, rotating segment files of compressed blocks.
//
// Files are DIR/trace-<n>.istrace (n from 1, zero-padded; names are made here,
// nothing from the network becomes a path). Each is a v2 trace file
// (wire/trace_block.hpp): zstd-compressed blocks of whole, CRC-checked wire
// frames, each block header carrying its [min, max] record time. A block is
// closed at block_bytes of frames or block_age after its first frame, so a
// kill -9 loses at most the open block (and what the kernel had not written).
// A new segment starts with every source's hello and string definitions (the
// replay callback), so each segment can be read alone and the oldest can be
// deleted to keep the total under max_bytes and the age under max_age.
//
// Threads: write(), tick(), flush(), close() and the record tap are called from
// one thread (the collector's io thread). With background = true, blocks are compressed and
// written by the store's own thread behind a bounded queue (a block that finds
// the queue full is dropped and counted); otherwise inline. stats() and query()
// may be called from any thread.
//
// A write error (disk full) is counted and logged once per error episode; the
// store keeps trying (at most once a second, in a fresh segment) and ingest
// never waits for it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "inferscope/wire/column_builder.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::collector {

class RecordTap;
class FirstLevel;  // store/block_summary.hpp

struct TraceStoreOptions {
  std::string dir;
  uint64_t max_bytes = 1ull << 30;
  int64_t max_age_ns = 0;      // 0: no age bound
  uint64_t segment_bytes = 0;  // 0: max_bytes / 8 clamped to [64 KiB, 64 MiB]
  uint32_t block_bytes = 256u << 10;
  int64_t block_age_ns = 1'000'000'000;
  int zstd_level = 1;
  bool background = true;    // compress and write on the store's own thread
  size_t queue_blocks = 64;  // background: sealed blocks waiting at most (16 MiB of frames)
  // With the blocks queued, their summaries' first level (merged spans and
  // other records, in memory): frames and those together are kept under
  // queue_blocks x block_bytes x 4 (64 MiB), or the block is dropped and counted.
  // Level-of-detail summaries after each block (store/block_summary.hpp): a
  // coarse range query reads them instead of the blocks. Costs the caller's
  // thread the first level's merge (from the records the pipeline decoded, see
  // record_tap(); frames written without it are decoded here) and the writer
  // the coarser levels; off writes format 2 files as before.
  bool summaries = true;
  // With summaries: compress each block's bytes regrouped by field, the
  // correlation ids as deltas and most span lengths left to the reader
  // (wire/trace_block.hpp, format 6): zstd runs about
  // twice as fast on them and the blocks are 15-25% smaller on span-heavy
  // input; exact. Off writes format 3 files as before. (Readers take format >= 3
  // to mean summaries, so without summaries the files stay format 2, unsplit.)
  bool columns = true;
};

// Cumulative since open(); gauges are the current state.
struct TraceStoreStats {
  uint64_t bytes = 0;                   // gauge: all segments on disk
  uint64_t segments = 0;                // gauge
  int64_t oldest_ns = 0;                // gauge: min record time still stored (0: none)
  uint64_t blocks_written = 0;          // data blocks
  uint64_t summary_blocks_written = 0;  // level-of-detail summaries of them
  uint64_t summary_bytes_written = 0;   // on disk, included in bytes
  uint64_t frames_written = 0;
  uint64_t write_errors = 0;     // frames not written (disk full, I/O error)
  uint64_t dropped_blocks = 0;   // background queue full (also in write_errors as frames)
  uint64_t deleted_by_size = 0;  // segments
  uint64_t deleted_by_age = 0;
  uint64_t torn_tails_cut = 0;  // at open: segments whose torn last block was cut
};

// What a range query hands back: the frames of every stored block that overlaps
// the range, and of the definition blocks (hellos, strings) before them in the
// same segment, so every string id can be resolved. Frames are views valid
// during the callback only.
struct RangeScan {
  uint64_t segments = 0;
  uint64_t blocks_read = 0;     // data blocks decompressed
  uint64_t summaries_read = 0;  // summary blocks read instead of their data block
  uint64_t blocks_skipped = 0;  // data blocks outside the range, by the index alone
  uint64_t errors = 0;          // blocks that could not be read (deleted, damaged)
};

class TraceStore {
 public:
  using Replay = std::function<void(std::vector<std::vector<uint8_t>>&)>;
  using Log = std::function<void(const std::string&)>;
  using FrameVisitor = std::function<void(std::span<const uint8_t> frame)>;

  TraceStore(TraceStoreOptions options, Replay replay, Log log);
  ~TraceStore();

  // Creates the directory, finds existing segments (walking each v2 segment's
  // block headers to rebuild its time index; a torn last block is cut off and
  // logged), and opens a new segment. Numbering continues after the old ones.
  bool open(std::string& error);
  // Adds one frame; summary comes from whoever decoded it (the pipeline).
  void write(std::span<const uint8_t> frame, const wire::FrameSummary& summary,
             int64_t steady_now_ns);
  // For Pipeline::set_record_tap: the records of the frames the pipeline
  // forwards, as it decodes them, so the level-of-detail summaries' first level
  // is merged from them and no block is decoded again (record_tap.hpp). Frames
  // written without it are decoded here. A frame written while a tapped one is
  // still being decoded (an alert it raised) is stored right after it.
  RecordTap& record_tap();
  // Same, decoding the frame to summarize it (tools and tests).
  void write(std::span<const uint8_t> frame, int64_t steady_now_ns);
  // Closes the open block when it is older than block_age; call periodically.
  void tick(int64_t steady_now_ns);
  // Seals the open block and waits until everything before it is on disk.
  void flush();
  void close();

  // Durability, for acknowledgements that mean "persisted" (docs/reliability.md).
  // write() gives each frame the next ticket (io thread: last_ticket()); the
  // settled ticket T says every frame up to T is in its segment file, or was
  // refused or lost there and counted in write_errors. Any thread.
  uint64_t last_ticket() const { return tickets_; }
  uint64_t settled_ticket() const;
  // The highest frame number of each agent stream (wire::FrameSequence) in the
  // newest segments found at open(): a restarted collector must not apply again
  // what its predecessor stored before it died.
  const std::vector<std::pair<uint64_t, uint64_t>>& recovered_sequences() const {
    return recovered_;
  }

  TraceStoreStats stats() const;
  uint64_t total_bytes() const { return stats().bytes; }
  uint64_t write_errors() const { return stats().write_errors; }
  std::vector<std::string> segment_paths() const;

  // Visits stored frames for [start_ns, end_ns] (see RangeScan). The open block
  // (at most block_age old) is not included: flush() first to see it.
  //
  // lod_ns > 0 lets a block whose records all lie inside the range be answered
  // by its coarsest summary whose level is at most lod_ns: the visitor then sees
  // merged spans (kMergedSpansStringId, args[0] = count) for runs of spans
  // shorter than that level. Merging those again at any resolution >= lod_ns
  // with span_merge.hpp's rule (as answer_range does) gives exactly the result
  // of merging the stored spans. lod_ns = 0: every stored record as it is.
  RangeScan query(int64_t start_ns, int64_t end_ns, const FrameVisitor& visit,
                  int64_t lod_ns = 0) const;

  static std::string segment_name(uint64_t index);  // "trace-000001.istrace"
  // Segment files of a directory, oldest first.
  static std::vector<std::string> list_segments(const std::string& dir);

  class Writer;  // segment files, index and retention (store/segment_writer.hpp)
  class Tap;     // the record tap (trace_store.cpp)

 private:
  void begin_block();  // the replay first when the block opens a segment
  // Begins the open block when due (and allowed); false: the frame is refused.
  bool prepare_block(int64_t steady_now_ns);
  void add_frame(std::span<const uint8_t> frame, const wire::FrameSummary& summary,
                 int64_t steady_now_ns, bool tapped);
  void write_deferred();
  void seal_block(int64_t steady_now_ns);
  void recover_sequences();

  TraceStoreOptions options_;
  Replay replay_;
  Log log_;
  std::unique_ptr<Writer> writer_;
  std::unique_ptr<FirstLevel> first_level_;  // of the open block's summaries
  // The open block's column form, built as its frames arrive (null when
  // blocks are not column-split): tapped frames split by the pipeline's
  // decoder as it decodes them, the others whole.
  std::unique_ptr<wire::ColumnBuilder> columns_;
  bool open_block_columns_ = false;  // the open block's frames go to columns_ (begin_block())
  std::unique_ptr<Tap> tap_;
  struct Deferred {
    std::vector<uint8_t> frame;
    wire::FrameSummary summary;
    int64_t steady_now_ns;
  };
  std::vector<Deferred> deferred_;  // written while a tapped frame was open
  wire::RawBlock open_block_;
  int64_t open_block_since_ns_ = 0;
  bool open_block_begun_ = false;     // the segment decision (and replay) is made
  bool open_block_has_data_ = false;  // holds a frame beyond the replay
  bool open_block_starts_segment_ = true;
  int64_t last_retry_ns_ = 0;
  bool opened_ = false;
  uint64_t tickets_ = 0;                                  // frames given to write()
  uint64_t open_block_last_ticket_ = 0;                   // the last of them in the open block
  std::vector<std::pair<uint64_t, uint64_t>> recovered_;  // stream, last frame number
};

}  // namespace inferscope::collector
