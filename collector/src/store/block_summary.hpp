// Level-of-detail summaries of one trace block, built when the block is
// compressed (wire/trace_block.hpp describes the summary blocks on disk).
//
// Level k merges each lane's short spans at summary_level_ns(k) with the same
// rule a range query uses (span_merge.hpp), starting from the level below, and
// copies every other record. A level is kept only when it has at most an
// eighth of the spans of the level kept before it (or of the block), so the
// summaries' spans together are at most a seventh of the block's.
// Levels start at 3 (65 us; finer ones would serve only windows of a few
// blocks) and stop at the first one coarser than the block's time extent:
// there, each lane is already one merged span.
#pragma once

#include <map>
#include <span>
#include <utility>
#include <vector>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::collector {

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
  std::span<const SummaryBlock> build(const wire::RawBlock& data);

 private:
  std::vector<std::pair<uint32_t, wire::Record>> others_;
  std::vector<std::pair<uint32_t, wire::Span>> spans_, merged_;
  std::vector<SummaryBlock> levels_;                 // the first `used` are this block's
  std::map<uint32_t, wire::FrameEncoder> encoders_;  // per source, empty between levels
  std::vector<uint8_t> frame_;
};

}  // namespace inferscope::collector
