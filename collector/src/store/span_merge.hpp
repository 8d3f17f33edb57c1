// Per-lane merging of short spans: the one rule that range query replies and
// the store's level-of-detail summaries share, so a reply built from summaries
// is the reply built from the spans themselves.
//
// A lane is one track at one nesting depth, where spans do not overlap. At a
// resolution res, a span at least res long goes out as it is; a run of shorter
// spans whose gaps are below res becomes one merged span (name
// kMergedSpansStringId, args[0] = {kMergedSpansStringId, count}, the first
// span's track, depth, category and start, the run's last end).
//
// Merged spans may come in again (a summary merged at a finer level): they
// count as their `count` short spans. That is exact: every span inside one is
// shorter than the finer level, so at least as short as res, and its gaps are
// below res too, so the spans of a merged input always land in one run here,
// the same run they would have joined one by one.
#pragma once

#include <cstdint>
#include <functional>
#include <tuple>
#include <unordered_map>

#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

// How many stored spans a span stands for: the count of a merged span, else 1.
uint64_t merged_span_count(const wire::Span& s);

class SpanMerger {
 public:
  using Emit = std::function<void(uint32_t source, const wire::Span&)>;

  // res <= 0: no merging, every span goes out as it is.
  SpanMerger(int64_t res, Emit emit) : res_(res), emit_(std::move(emit)) {}

  void add(uint32_t source, const wire::Span& s);
  // Emits the open runs (in no particular lane order).
  void finish();
  uint64_t merged() const { return merged_; }  // merged spans emitted

 private:
  using LaneKey = std::tuple<uint32_t /*source*/, uint8_t /*track kind*/, uint32_t /*track*/,
                             uint32_t /*stream*/, uint16_t /*depth*/>;
  struct LaneHash {
    size_t operator()(const LaneKey& k) const;
  };
  struct Run {
    wire::Span first;
    int64_t end_ns = 0;
    uint64_t count = 0;
  };
  void flush(uint32_t source, const Run& run);

  int64_t res_;
  Emit emit_;
  uint64_t merged_ = 0;
  std::unordered_map<LaneKey, Run, LaneHash> runs_;
  using Entry = std::pair<const LaneKey, Run>;
  Entry* last_ = nullptr;  // the last lane's run (see add())
};

}  // namespace inferscope::collector
