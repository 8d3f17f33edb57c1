// Level-of-detail summaries of a block: decode once, merge level by level, re-encode per source.
#include "block_summary.hpp"

#include <map>
#include <utility>

#include "inferscope/wire/codec.hpp"
#include "span_merge.hpp"

namespace inferscope::collector {

namespace {

// Below this many spans a block is read whole faster than a summary pays for itself.
constexpr size_t kMinSpans = 256;
// The finest level written (65 us). Finer ones cost the writer a pass each and
// would serve only queries finer than 65 us a pixel: windows of a few blocks,
// which read the blocks themselves as fast.
constexpr int kFirstLevel = 3;
// A level is written when it has at most 1/kKeepRatio of the spans of the level
// written before it (or of the block); the first level, 1/kFirstLevelKeepRatio.
// It is the largest, and the writer pays for every span of it (encoded, split,
// compressed, written: in collector_bench's agent-like blocks, kept at 1/8.1 of
// the spans, ~3 ns a record, 4% of ingest with the store, and 4% of the disk).
// It serves a reader only windows of 65-262 us a pixel, and saves it the ratio:
// where spans are dense (a block covers a few ms, such windows span many
// blocks) it shrinks blocks far more than 16x and is kept; where it shrinks them
// less, a block covers a long stretch and such windows read few blocks whole.
// (The first level kept, whichever, at 1/16 lost the viewer's overview of its
// sample trace: docs/collector.md, eighth pass.)
constexpr size_t kKeepRatio = 8;
constexpr size_t kFirstLevelKeepRatio = 16;
// Where a block's level 3 is not written, the next blocks' first level is
// merged at level 4 directly (the tap's merge and the coarser levels then work
// on a quarter as many runs, and the levels above come out the same: merging is
// exact level to level, span_merge.hpp); every kCheckEvery-th block is merged
// at level 3 again to see whether it pays by then. The io thread decides, from
// the block it has just merged, so every writer mode writes the same summaries.
constexpr int kCheckEvery = 64;

// Whether a block whose first level (level 3) is `seed` would have it written.
bool first_level_written(const LevelSeed& seed) {
  return seed.spans.size() * kFirstLevelKeepRatio <= seed.block_spans;
}

using SourceSpan = std::pair<uint32_t, wire::Span>;

// The frames of one level: the block's other records, then its merged spans, per source.
void encode_level(const std::vector<std::pair<uint32_t, wire::Record>>& others,
                  const std::vector<SourceSpan>& spans, const wire::RawBlock& data,
                  std::map<uint32_t, wire::FrameEncoder>& encoders, std::vector<uint8_t>& frame,
                  wire::RawBlock& out) {
  out.clear();
  uint32_t records = 0;
  auto add = [&](uint32_t source, const auto& record) {
    auto it = encoders.find(source);
    if (it == encoders.end()) {
      wire::EncoderOptions eo;
      eo.source_id = source;
      it = encoders.emplace(source, wire::FrameEncoder(eo)).first;
    }
    it->second.add(record);
    ++records;
    if (it->second.full()) {
      frame.clear();  // finish() appends
      it->second.finish(frame);
      out.add(frame, {});
    }
  };
  for (const auto& [source, r] : others) add(source, r);
  for (const auto& [source, s] : spans) add(source, s);
  for (auto& [source, enc] : encoders) {
    if (enc.empty()) continue;
    frame.clear();
    enc.finish(frame);
    out.add(frame, {});
  }
  // The data block's times and definitions flag: the index treats both alike.
  out.summary = data.summary;
  out.summary.records = records;
}

}  // namespace

void LevelSeed::clear() {
  block_spans = 0;
  others.clear();
  spans.clear();
}

FirstLevel::FirstLevel()
    : merger_(wire::summary_level_ns(kFirstLevel), &seed_.spans), level_(kFirstLevel) {}

void FirstLevel::begin_frame() {
  merger_.mark();
  others_at_mark_ = seed_.others.size();
  spans_at_mark_ = seed_.spans.size();
  block_spans_at_mark_ = seed_.block_spans;
}

void FirstLevel::undo_frame() {
  merger_.undo();
  seed_.others.resize(others_at_mark_);
  seed_.spans.resize(spans_at_mark_);
  seed_.block_spans = block_spans_at_mark_;
}

void FirstLevel::add_frame(std::span<const uint8_t> frame) {
  wire::FrameDecoder decoder(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  if (!decoder.open(frame).ok()) return;  // as a range query would skip it
  begin_frame();
  const uint32_t source = decoder.header().source_id;
  while (decoder.next(scratch_)) add(source, scratch_);
  // Records before a bad one stay: the summaries hold what a reader of the block finds.
}

void FirstLevel::take(LevelSeed& out) {
  merger_.finish();
  seed_.level = level_;
  // The next block's level (blocks too small for summaries tell nothing).
  if (level_ == kFirstLevel) {
    if (seed_.block_spans >= kMinSpans && !first_level_written(seed_)) {
      level_ = kFirstLevel + 1;
      blocks_to_check_ = kCheckEvery - 1;
    }
  } else if (--blocks_to_check_ <= 0) {
    level_ = kFirstLevel;
  }
  merger_.set_resolution(wire::summary_level_ns(level_));
  std::swap(out, seed_);
  seed_.clear();
  begin_frame();
}

std::span<const SummaryBlock> SummaryBuilder::build(const wire::RawBlock& data) {
  FirstLevel first;
  std::span<const uint8_t> rest(data.bytes);
  wire::FrameDecoder sizer(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  while (!rest.empty()) {
    size_t n = 0;
    if (!sizer.frame_size(rest, n).ok()) break;  // as a range query would stop here
    first.add_frame(rest.first(n));
    rest = rest.subspan(n);
  }
  first.take(decoded_);
  return build(data, decoded_);
}

std::span<const SummaryBlock> SummaryBuilder::build(const wire::RawBlock& data, LevelSeed& seed) {
  size_t used = 0;
  if (!data.summary.has_time()) return {};
  const size_t block_spans = seed.block_spans;
  spans_.swap(seed.spans);
  seed.spans.clear();
  const auto& others_ = seed.others;
  if (block_spans < kMinSpans) return {};
  const int64_t extent = data.summary.max_ns - data.summary.min_ns;
  size_t kept = block_spans;
  for (int level = seed.level; level <= wire::kMaxSummaryLevel; ++level) {
    if (level > seed.level) {
      merged_.clear();
      SpanMerger merger(wire::summary_level_ns(level), &merged_);
      for (const auto& [source, s] : spans_) merger.add(source, s);
      merger.finish();
      spans_.swap(merged_);  // the next level merges this one's output (exact: span_merge.hpp)
    }
    if (spans_.size() * (level == kFirstLevel ? kFirstLevelKeepRatio : kKeepRatio) <= kept) {
      if (levels_.size() <= used) levels_.emplace_back();
      SummaryBlock& sb = levels_[used++];
      sb.level = level;
      encode_level(others_, spans_, data, encoders_, frame_, sb.block);
      kept = spans_.size();
    }
    if (wire::summary_level_ns(level) > extent) break;  // every lane is one run now
  }
  return {levels_.data(), used};
}

}  // namespace inferscope::collector
