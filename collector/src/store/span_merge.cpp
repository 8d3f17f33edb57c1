// Per-lane run merging (span_merge.hpp).
#include "span_merge.hpp"

#include <algorithm>
#include <bit>

namespace inferscope::collector {

uint32_t SpanMerger::add_lane(const LaneKey& key, size_t at) {
  // Keep the table at most half full.
  if ((lanes_.size() + 1) * 2 > slots_.size()) {
    rehash(std::max<size_t>(64, slots_.size() * 2));
    const size_t mask = slots_.size() - 1;
    at = span_lane_hash(key.a, key.b) >> shift_;
    while (slots_[at].lane != 0) at = (at + 1) & mask;
  }
  lanes_.push_back(Lane{key, static_cast<uint32_t>(at), {}});
  Slot& slot = slots_[at];
  slot = Slot{};
  slot.key = key;
  slot.lane = static_cast<uint32_t>(lanes_.size());
  slot.mark = mark_;
  return static_cast<uint32_t>(at);
}

void SpanMerger::save(Slot& slot) {
  slot.mark = mark_;
  const uint32_t lane = slot.lane - 1;
  // Lanes added since the mark are cut instead.
  if (lane < lanes_at_mark_) saved_.push_back(Saved{lane, slot, lanes_[lane].first});
}

namespace {

// first, as the merged span of its run: count spans up to end_ns.
void make_merged(wire::Span& m, int64_t end_ns, uint64_t count) {
  m.end_ns = end_ns;
  m.name_id = wire::kMergedSpansStringId;
  m.correlation_id = 0;
  m.request_id = 0;
  m.num_args = 1;
  m.args[0] = {wire::kMergedSpansStringId, static_cast<int64_t>(count)};
}

}  // namespace

void SpanMerger::flush(uint32_t source, const wire::Span& first, int64_t end_ns, uint64_t count) {
  if (count == 1) {
    emit(source, first);
    return;
  }
  ++merged_;
  if (out_) {  // built in place: one copy of the span, not two
    make_merged(out_->emplace_back(source, first).second, end_ns, count);
    return;
  }
  wire::Span m = first;
  make_merged(m, end_ns, count);
  emit_(source, m);
}

void SpanMerger::finish() {
  for (const Lane& lane : lanes_) {
    const Slot& slot = slots_[lane.slot];
    if (slot.count != 0) flush(lane.key.source(), lane.first, slot.end_ns, slot.count);
  }
  lanes_.clear();
  slots_.clear();
  shift_ = 64;
  mark();  // nothing to undo across a finish()
}

void SpanMerger::mark() {
  ++mark_;
  saved_.clear();
  lanes_at_mark_ = lanes_.size();
  merged_at_mark_ = merged_;
}

void SpanMerger::undo() {
  for (const Saved& saved : saved_) {
    Lane& lane = lanes_[saved.lane];
    slots_[lane.slot] = saved.slot;
    lane.first = saved.first;
  }
  saved_.clear();
  merged_ = merged_at_mark_;
  if (lanes_.size() == lanes_at_mark_) return;
  // Lanes first seen since the mark go, and the table is rebuilt without them (rare: a
  // rejected frame).
  lanes_.resize(lanes_at_mark_);
  if (lanes_.empty()) {
    slots_.clear();
    shift_ = 64;
  } else {
    rehash(std::max<size_t>(64, std::bit_ceil(lanes_.size() * 2)));
  }
}

void SpanMerger::rehash(size_t size) {
  std::vector<Slot> old(size);
  old.swap(slots_);
  shift_ = 64 - std::countr_zero(slots_.size());
  const size_t mask = slots_.size() - 1;
  for (Lane& lane : lanes_) {
    size_t at = span_lane_hash(lane.key.a, lane.key.b) >> shift_;
    while (slots_[at].lane != 0) at = (at + 1) & mask;
    slots_[at] = old[lane.slot];
    lane.slot = static_cast<uint32_t>(at);
  }
}

}  // namespace inferscope::collector
