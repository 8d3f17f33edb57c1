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

std::span<const SummaryBlock> SummaryBuilder::build(const wire::RawBlock& data) {
  size_t used = 0;
  if (!data.summary.has_time()) return {};
  others_.clear();
  spans_.clear();
  // The first level merges the spans as they are decoded: the block's spans are
  // never copied out (most of a block's cost here), only what that level emits.
  size_t block_spans = 0;
  SpanMerger first(
      wire::summary_level_ns(kFirstLevel),
      [this](uint32_t source, const wire::Span& s) { spans_.emplace_back(source, s); });
  wire::FrameDecoder decoder(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  std::span<const uint8_t> rest(data.bytes);
  wire::Record r;
  while (!rest.empty()) {
    size_t n = 0;
    if (!decoder.frame_size(rest, n).ok()) break;  // as a range query would stop here
    if (decoder.open(rest.first(n)).ok()) {
      const uint32_t source = decoder.header().source_id;
      while (decoder.next(r)) {
        if (const auto* s = std::get_if<wire::Span>(&r)) {
          ++block_spans;
          first.add(source, *s);
        } else {
          others_.emplace_back(source, std::move(r));
        }
      }
    }
    rest = rest.subspan(n);
  }
  first.finish();
  if (block_spans < kMinSpans) return {};
  const int64_t extent = data.summary.max_ns - data.summary.min_ns;
  size_t kept = block_spans;
  for (int level = kFirstLevel; level <= wire::kMaxSummaryLevel; ++level) {
    if (level > kFirstLevel) {
      merged_.clear();
      SpanMerger merger(
          wire::summary_level_ns(level),
          [this](uint32_t source, const wire::Span& s) { merged_.emplace_back(source, s); });
      for (const auto& [source, s] : spans_) merger.add(source, s);
      merger.finish();
      spans_.swap(merged_);  // the next level merges this one's output (exact: span_merge.hpp)
    }
    if (spans_.size() * 8 <= kept) {
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
