// Which summary levels a block gets (collector/src/store/block_summary.hpp):
// level 3 (65 us) only where it has at most a sixteenth of the block's spans,
// each level above it where it has at most an eighth of the level kept before;
// after a block without level 3 the first level is merged at level 4 directly,
// to the same summaries, until it is checked again.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <tuple>
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

// A summary's spans as a reader gets them: start, end, name, count, sorted.
using SpanKey = std::tuple<int64_t, int64_t, uint32_t, int64_t>;
std::vector<SpanKey> spans_of(const wire::RawBlock& block) {
  std::vector<SpanKey> out;
  std::span<const uint8_t> rest(block.bytes);
  wire::FrameDecoder decoder;
  wire::Record r;
  while (!rest.empty()) {
    size_t n = 0;
    if (!decoder.frame_size(rest, n).ok() || !decoder.open(rest.first(n)).ok()) break;
    while (decoder.next(r))
      if (const auto* s = std::get_if<wire::Span>(&r))
        out.emplace_back(s->start_ns, s->end_ns, s->name_id, s->num_args ? s->args[0].value : 0);
    rest = rest.subspan(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The first level of `block` merged as the store does (FirstLevel, across blocks).
LevelSeed merge_first_level(FirstLevel& first, const wire::RawBlock& block) {
  first.add_frame(block.bytes);  // one frame
  LevelSeed seed;
  first.take(seed);
  return seed;
}

TEST(SummaryLadder, LevelThreeIsWrittenOnlyWhereItShrinksTheBlockSixteenfold) {
  SummaryBuilder builder;
  // Groups of 10: level 3 holds 200 of 2000 spans (a tenth; an eighth would
  // keep it). Not written; level 4 (one span) is.
  EXPECT_EQ(levels_of(builder.build(grouped_spans(2000, 10))), (std::vector<int>{4}));
  // Groups of 20: level 3 holds 100 (a twentieth): written, and level 4 above it.
  EXPECT_EQ(levels_of(builder.build(grouped_spans(2000, 20))), (std::vector<int>{3, 4}));
}

TEST(SummaryLadder, AfterABlockWithoutLevelThreeTheFirstLevelIsMergedAtLevelFour) {
  FirstLevel first;
  SummaryBuilder store, reference;
  const wire::RawBlock sparse = grouped_spans(2000, 10), dense = grouped_spans(2000, 20);
  // The first block is merged at level 3, which is not written.
  LevelSeed seed = merge_first_level(first, sparse);
  EXPECT_EQ(seed.level, 3);
  EXPECT_EQ(levels_of(store.build(sparse, seed)), (std::vector<int>{4}));
  // The next 63 at level 4 directly: the same level 4 as from level 3 (here
  // decoded and merged from level 3 by build(data)), even for a dense block.
  for (int block = 1; block <= 63; ++block) {
    const wire::RawBlock& data = block == 63 ? dense : sparse;
    seed = merge_first_level(first, data);
    ASSERT_EQ(seed.level, 4) << block;
    const auto got = store.build(data, seed);
    ASSERT_EQ(levels_of(got), (std::vector<int>{4})) << block;
    const auto want = reference.build(data);
    ASSERT_EQ(spans_of(got.back().block), spans_of(want.back().block)) << block;
  }
  // Then level 3 again, which the dense block pays for: written, and kept at.
  for (int block = 0; block < 2; ++block) {
    seed = merge_first_level(first, dense);
    EXPECT_EQ(seed.level, 3);
    EXPECT_EQ(levels_of(store.build(dense, seed)), (std::vector<int>{3, 4}));
  }
}

}  // namespace
}  // namespace inferscope::collector
