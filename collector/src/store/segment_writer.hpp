// The trace store's back half: segment files, their block index, retention.
//
// The front (trace_store.cpp) gathers frames into raw blocks on the io thread
// and submits each sealed block here, flagged when it must start a new segment
// (it then begins with the sources' replay). The writer compresses it, appends
// it with one write(), and records its location and times in the index that
// range queries read. With a thread, submit() only queues (bounded); without,
// it does the work at once.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "block_summary.hpp"
#include "inferscope/collector/trace_store.hpp"

namespace inferscope::collector {

class TraceStore::Writer {
 public:
  Writer(const TraceStoreOptions& options, TraceStore::Log log);
  ~Writer();

  // Finds the existing segments (index, torn tails cut) and creates the first new one.
  bool open(std::string& error);
  // last_ticket: the store's ticket of the block's last frame; settled once written.
  // seed: the block's first summary level.
  void submit(wire::RawBlock&& block, LevelSeed&& seed, bool starts_segment, uint64_t last_ticket);
  // The buffers of a written block and its seed, cleared, for the front's next
  // block (false: none yet). A block's frames and spans are megabytes; freed on
  // the writer thread they would go to that thread's malloc arena, and the io
  // thread would fault in fresh pages for every block.
  bool take_spare(wire::RawBlock& block, LevelSeed& seed);
  // Every ticket up to `ticket` is settled when nothing is queued or being written.
  void settle_if_idle(uint64_t ticket);
  uint64_t settled() const { return settled_.load(std::memory_order_acquire); }
  // Frames refused without building a block (the store is failing, no retry due).
  void refuse(uint64_t frames);
  // Waits until every submitted block has been written (or refused).
  void drain();
  void close();

  bool failing() const { return failing_.load(std::memory_order_relaxed); }
  // Whether the next block will be column-split (BlockCompressor::splits_next_block);
  // with a thread, as of the last block written: a hint.
  bool splits_next_block() const { return splits_next_.load(std::memory_order_relaxed); }
  // The open segment has reached segment_bytes: the next block should start a new one.
  bool segment_full() const {
    return current_bytes_.load(std::memory_order_relaxed) >= options_.segment_bytes;
  }
  // Deletes segments beyond the size and age bounds (never the open one).
  void enforce_retention();

  TraceStoreStats stats() const;
  std::vector<std::string> segment_paths() const;

  // A copy of what a range query needs, taken under the index lock.
  struct SegmentView {
    std::string path;
    std::vector<wire::BlockLocation> blocks;
  };
  std::vector<SegmentView> snapshot() const;

 private:
  struct Segment {
    uint64_t index = 0;
    std::string path;
    uint64_t bytes = 0;
    int format = 2;  // 1: a legacy frame file (no index)
    std::vector<wire::BlockLocation> blocks;
    int64_t min_ns = INT64_MAX, max_ns = INT64_MIN;
  };
  struct Pending {
    wire::RawBlock block;
    LevelSeed seed;
    bool starts_segment = false;
    uint64_t last_ticket = 0;
    size_t bytes() const { return block.bytes.size() + seed.bytes(); }
  };
  void settle(uint64_t ticket);
  void give_back(wire::RawBlock&& block, LevelSeed&& seed);

  void run();
  void write_block(const wire::RawBlock& block, LevelSeed& seed, bool starts_segment);
  bool start_segment();
  void close_file();
  void on_error(const std::string& what, uint64_t frames);
  void add_stats(const Segment& s, int sign);
  void delete_front(bool by_age);

  const TraceStoreOptions& options_;
  TraceStore::Log log_;
  wire::BlockCompressor compressor_;
  std::vector<uint8_t> sealed_;  // the data block, then its summary blocks
  std::vector<uint8_t> summary_sealed_;
  SummaryBuilder summaries_;

  // The file being appended (writer thread only).
  int fd_ = -1;

  // Index and stats (index_mu_).
  mutable std::mutex index_mu_;
  std::deque<Segment> segments_;  // oldest first; the last is open while fd_ >= 0
  uint64_t next_index_ = 1;
  uint64_t bytes_ = 0;
  TraceStoreStats counters_;
  std::atomic<uint64_t> current_bytes_{0};
  std::atomic<bool> failing_{false};
  std::atomic<bool> splits_next_{false};  // splits_next_block()
  std::atomic<uint64_t> settled_{0};      // see TraceStore::settled_ticket()

  // Background queue.
  std::mutex queue_mu_;
  std::condition_variable queue_cv_, drained_cv_;
  std::deque<Pending> queue_;
  size_t queued_bytes_ = 0;  // of queue_: frames and seeds
  std::mutex spare_mu_;
  std::vector<Pending> spares_;  // at most two, cleared (take_spare)
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace inferscope::collector
