// inferscope viewer: level of detail for the timeline.
//
// query_lane() turns the spans of one lane that intersect [t0, t1] into draw
// items for a view where min_ns nanoseconds are about one pixel. Spans at least
// min_ns long come out one by one; runs of shorter spans that lie within min_ns
// of each other come out as one merged item (drawn as a single block, as Tracy
// does). Items are in time order and their index ranges [first, last] partition
// the lane's intersecting spans: every original is in exactly one item.
//
// Cost: one binary search to find the start, then per item either a step or a
// binary search over ends, so a lane costs O(pixels * log n), not O(n).
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/viewer/trace_model.hpp"

namespace inferscope::viewer {

struct DrawItem {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  uint32_t first = 0;  // lane index of the first span in the item
  uint32_t last = 0;   // and of the last (== first for a single span)
  uint32_t count() const { return last - first + 1; }
  bool merged() const { return last != first; }
};

void query_lane(const Lane& lane, int64_t t0, int64_t t1, int64_t min_ns,
                std::vector<DrawItem>& out);

// Index of the first span in the lane whose end is >= t (lane.spans.size() if none).
uint32_t first_ending_at_or_after(const Lane& lane, int64_t t);
// The span of the lane under time t, with a slack of slack_ns either side; -1 if none.
int64_t span_at(const Lane& lane, int64_t t, int64_t slack_ns);

}  // namespace inferscope::viewer
