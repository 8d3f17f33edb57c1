// Level-of-detail summaries of one trace block, built when the block is
// compressed (wire/trace_block.hpp describes the summary blocks on disk).
//
// Level k merges each lane's short spans at summary_level_ns(k) with the same
// rule a range query uses (span_merge.hpp), starting from the level below, and
// copies every other record. A level is kept only when it has at most an
// eighth of the spans of the level kept before it (or of the block; the first
// level, 3, a sixteenth), so the summaries' spans together are at most a
// seventh of the block's.
// Levels start at 3 (65 us; finer ones would serve only windows of a few
// blocks) and stop at the first one coarser than the block's time extent:
// there, each lane is already one merged span.
//
// The first level is merged on the io thread as frames reach the open block,
// from the records the pipeline has decoded anyway (FirstLevel below, fed by
// TraceStore's record tap), so no block is ever decoded a second time; the
// writer builds the coarser levels from that level's output. Where level 3 is
// not written, the next blocks' first level is level 4 (block_summary.cpp).
#pragma once

#include <map>
#include <span>
#include <utility>
#include <vector>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "span_merge.hpp"

namespace inferscope::collector {

// The first level of one block: its spans merged at the first level's
// resolution (level 3, or 4 where level 3 is not written), and every other
// record, each with its source, in block order.
struct LevelSeed {
  int level = 0;           // the level `spans` are merged at
  size_t block_spans = 0;  // spans in the block (before merging)
  std::vector<std::pair<uint32_t, wire::Record>> others;
  std::vector<std::pair<uint32_t, wire::Span>> spans;

  // Memory held, for the store's queue bound.
  size_t bytes() const {
    return others.size() * sizeof(others[0]) + spans.size() * sizeof(spans[0]);
  }
  void clear();  // keeps the capacity
};

// Merges the open block's first level as its frames' records arrive. A frame
// is added whole or not at all: begin_frame() before its records, undo_frame()
// when it is not stored after all (a frame rejected part-way).
class FirstLevel {
 public:
  FirstLevel();
  FirstLevel(const FirstLevel&) = delete;
  FirstLevel& operator=(const FirstLevel&) = delete;

  void begin_frame();
  // Inline: the store's record tap calls it for every record, and a span goes
  // on to the merger's inline add() (one call per span in all).
  [[gnu::always_inline]] void add(uint32_t source, const wire::Record& record) {
    if (const auto* s = std::get_if<wire::Span>(&record)) [[likely]] {
      ++seed_.block_spans;
      merger_.add(source, *s);
    } else {
      seed_.others.emplace_back(source, record);
    }
  }
  void undo_frame();
  // Decodes a frame (one that nobody decoded before: tools, replays, alerts)
  // and adds its records; a frame that does not decode adds none.
  void add_frame(std::span<const uint8_t> frame);
  // Ends the block: `out` gets its seed (and should come back cleared with its
  // capacity, so the next block reuses the buffers).
  void take(LevelSeed& out);

 private:
  LevelSeed seed_;
  SpanMerger merger_;
  // The level this block is merged at: 3, or 4 after a block whose level 3
  // was not worth writing (block_summary.cpp), until the next check.
  int level_;
  int blocks_to_check_ = 0;
  size_t others_at_mark_ = 0, spans_at_mark_ = 0, block_spans_at_mark_ = 0;
  wire::Record scratch_;
};

struct SummaryBlock {
  int level = 0;         // 1..kMaxSummaryLevel
  wire::RawBlock block;  // frames; times and flags are the data block's
};

// Keeps its buffers between blocks: a block's spans are megabytes, and fresh
// allocations of that size cost more in page faults than the merging itself.
class SummaryBuilder {
 public:
  // The summaries worth keeping for this block (none for a block with few
  // spans, or one whose spans do not merge), valid until the next build().
  // seed: the block's first level (FirstLevel); its spans are consumed.
  std::span<const SummaryBlock> build(const wire::RawBlock& data, LevelSeed& seed);
  // Same, decoding the block to merge its first level (tests and tools).
  std::span<const SummaryBlock> build(const wire::RawBlock& data);

 private:
  std::vector<std::pair<uint32_t, wire::Span>> spans_, merged_;
  LevelSeed decoded_;                                // build(data) only
  std::vector<SummaryBlock> levels_;                 // the first `used` are this block's
  std::map<uint32_t, wire::FrameEncoder> encoders_;  // per source, empty between levels
  std::vector<uint8_t> frame_;
};

}  // namespace inferscope::collector
