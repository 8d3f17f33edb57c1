// The viewer API's range query: stored frames of a time range, reduced to what
// a timeline of a given resolution can show (docs/collector.md, "Viewer protocol").
//
// The store hands over only the blocks its index says overlap the range (plus
// each segment's definition blocks). Spans are merged per track as they stream
// by: a span at least resolution_ns long goes out as it is; a run of shorter
// spans whose gaps are below resolution_ns becomes one summary span
// (name kMergedSpansStringId, args[0] = count). Other records with a time in
// the range pass through (counters and memory samples thinned to one per
// series per resolution step). Memory is bounded by the reply, not the range.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

inline constexpr uint32_t kDefaultRangeMaxRecords = 2'000'000;

struct RangeReply {
  std::vector<std::vector<uint8_t>> frames;  // RangeQuery echo, the records, RangeEnd
  wire::RangeEnd end;
};

// Answers one query from the store (nullptr: no store). Thread-safe with the
// store's writer; run it off the io thread, it decompresses.
void answer_range(const TraceStore* store, const wire::RangeQuery& query, RangeReply& reply);

}  // namespace inferscope::collector
