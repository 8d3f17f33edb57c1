// Which summary levels a block gets (collector/src/store/block_summary.hpp):
// level 3 (65 us) only where it has at most a sixteenth of the block's spans,
// each level above it where it has at most an eighth of the level kept before.
#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <vector>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "store/block_summary.hpp"

namespace inferscope::collector {
namespace {

// One lane of 1 us spans in groups of `group` (1 us apart), the groups 99 us
// apart: at 65 us each group merges into one span, at 262 us the whole lane does.
wire::RawBlock grouped_spans(int spans, int group) {
  wire::EncoderOptions eo;
  eo.source_id = 1;
  wire::FrameEncoder enc(eo);
  int64_t t = 1'000'000'000;
  for (int i = 0; i < spans; ++i) {
    wire::Span s;
    s.track_id = 7;
    s.name_id = 1;
    s.start_ns = t;
    s.end_ns = t + 1'000;
    enc.add(s);
    t += (i + 1) % group == 0 ? 100'000 : 2'000;
  }
  std::vector<uint8_t> frame;
  enc.finish(frame);
  wire::RawBlock block;
  block.add(frame, wire::summarize_frame(frame));
  return block;
}

std::vector<int> levels_of(std::span<const SummaryBlock> summaries) {
  std::vector<int> levels;
  for (const auto& s : summaries) levels.push_back(s.level);
  return levels;
}

TEST(SummaryLadder, LevelThreeIsWrittenOnlyWhereItShrinksTheBlockSixteenfold) {
  SummaryBuilder builder;
  // Groups of 10: level 3 holds 200 of 2000 spans (a tenth; an eighth would
  // keep it). Not written; level 4 (one span) is.
  EXPECT_EQ(levels_of(builder.build(grouped_spans(2000, 10))), (std::vector<int>{4}));
  // Groups of 20: level 3 holds 100 (a twentieth): written, and level 4 above it.
  EXPECT_EQ(levels_of(builder.build(grouped_spans(2000, 20))), (std::vector<int>{3, 4}));
}

}  // namespace
}  // namespace inferscope::collector
