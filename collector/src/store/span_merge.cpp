// Per-lane run merging (span_merge.hpp).
#include "span_merge.hpp"

#include <algorithm>
#include <bit>

namespace inferscope::collector {

uint64_t merged_span_count(const wire::Span& s) {
  if (s.name_id == wire::kMergedSpansStringId && s.num_args >= 1 &&
      s.args[0].key_id == wire::kMergedSpansStringId && s.args[0].value > 0)
    return static_cast<uint64_t>(s.args[0].value);
  return 1;
}

namespace {

// Multiplicative hashing; the slot is taken from the top bits, which depend on every key bit.
inline uint64_t lane_hash(uint64_t a, uint64_t b) {
  return (a * 0x9E3779B97F4A7C15ull) ^ ((b ^ (b >> 29)) * 0xC2B2AE3D27D4EB4Full);
}

}  // namespace

[[gnu::always_inline]] inline uint32_t SpanMerger::slot_of(const LaneKey& key) {
  size_t mask = slots_.size() - 1;
  size_t at = 0;
  if (!slots_.empty()) {
    at = lane_hash(key.a, key.b) >> shift_;
    // Lanes are few (tracks x depths): the first slot is nearly always the lane's.
    for (;;) {
      const Slot& slot = slots_[at];
      if (slot.key == key && slot.lane != 0) return static_cast<uint32_t>(at);
      if (slot.lane == 0) break;
      at = (at + 1) & mask;
    }
  }
  // A new lane. Keep the table at most half full.
  if ((lanes_.size() + 1) * 2 > slots_.size()) {
    rehash(std::max<size_t>(64, slots_.size() * 2));
    mask = slots_.size() - 1;
    at = lane_hash(key.a, key.b) >> shift_;
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

[[gnu::always_inline]] inline void SpanMerger::touch(Slot& slot) {
  if (slot.mark != mark_) {
    slot.mark = mark_;
    const uint32_t lane = slot.lane - 1;
    // Lanes added since the mark are cut instead.
    if (lane < lanes_at_mark_) saved_.push_back(Saved{lane, slot, lanes_[lane].first});
  }
}

void SpanMerger::add(uint32_t source, const wire::Span& s) {
  if (res_ <= 0) {
    emit(source, s);
    return;
  }
  const uint64_t count = merged_span_count(s);
  // A merged input is a run of short spans, whatever its extent (see the header).
  const bool short_span = count > 1 || s.end_ns - s.start_ns < res_;
  const LaneKey key{(uint64_t{source} << 32) | s.track_id, (uint64_t{s.stream} << 32) |
                                                               (uint64_t{s.depth} << 8) |
                                                               static_cast<uint8_t>(s.track_kind)};
  Slot& slot = slots_[slot_of(key)];
  touch(slot);
  if (slot.count != 0) {
    if (short_span && s.start_ns >= slot.first_start && s.start_ns - slot.end_ns < res_) {
      slot.end_ns = std::max(slot.end_ns, s.end_ns);
      slot.count += count;
      return;
    }
    flush(source, lanes_[slot.lane - 1].first, slot.end_ns, slot.count);
    if (!short_span) {
      slot.count = 0;
      emit(source, s);
      return;
    }
  } else if (!short_span) {
    emit(source, s);
    return;
  }
  lanes_[slot.lane - 1].first = s;
  slot.first_start = s.start_ns;
  slot.end_ns = s.end_ns;
  slot.count = count;
}

void SpanMerger::flush(uint32_t source, const wire::Span& first, int64_t end_ns, uint64_t count) {
  if (count == 1) {
    emit(source, first);
    return;
  }
  wire::Span m = first;
  m.end_ns = end_ns;
  m.name_id = wire::kMergedSpansStringId;
  m.correlation_id = 0;
  m.request_id = 0;
  m.num_args = 1;
  m.args[0] = {wire::kMergedSpansStringId, static_cast<int64_t>(count)};
  ++merged_;
  emit(source, m);
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
    size_t at = lane_hash(lane.key.a, lane.key.b) >> shift_;
    while (slots_[at].lane != 0) at = (at + 1) & mask;
    slots_[at] = old[lane.slot];
    lane.slot = static_cast<uint32_t>(at);
  }
}

}  // namespace inferscope::collector
