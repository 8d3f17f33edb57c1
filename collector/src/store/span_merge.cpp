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

uint64_t SpanMerger::hash(const LaneKey& k) {
  // Multiplicative hashing; the slot is taken from the top bits, which depend on every key bit.
  return (k.a * 0x9E3779B97F4A7C15ull) ^ ((k.b ^ (k.b >> 29)) * 0xC2B2AE3D27D4EB4Full);
}

uint32_t SpanMerger::lane_of(const LaneKey& key) {
  // Spans come in runs of one lane (an agent sends a thread's spans together):
  // the last lane is checked before hashing.
  if (last_ < lanes_.size() && lanes_[last_].key == key) return last_;
  // Keep the table at most half full.
  if ((lanes_.size() + 1) * 2 > slots_.size()) rehash(std::max<size_t>(64, slots_.size() * 2));
  const size_t mask = slots_.size() - 1;
  size_t at = hash(key) >> shift_;
  while (slots_[at] != 0) {
    const uint32_t i = slots_[at] - 1;
    if (lanes_[i].key == key) return last_ = i;
    at = (at + 1) & mask;
  }
  lanes_.push_back(Lane{key, false, mark_, {}});
  slots_[at] = static_cast<uint32_t>(lanes_.size());
  return last_ = static_cast<uint32_t>(lanes_.size() - 1);
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
  Lane& lane = touch(lane_of(key));
  if (lane.open) {
    Run& run = lane.run;
    if (short_span && s.start_ns >= run.first.start_ns && s.start_ns - run.end_ns < res_) {
      run.end_ns = std::max(run.end_ns, s.end_ns);
      run.count += count;
      return;
    }
    flush(source, run);
    if (!short_span) {
      lane.open = false;
      emit(source, s);
      return;
    }
    run = Run{s, s.end_ns, count};
    return;
  }
  if (!short_span) {
    emit(source, s);
    return;
  }
  lane.open = true;
  lane.run = Run{s, s.end_ns, count};
}

void SpanMerger::flush(uint32_t source, const Run& run) {
  if (run.count == 1) {
    emit(source, run.first);
    return;
  }
  wire::Span m = run.first;
  m.end_ns = run.end_ns;
  m.name_id = wire::kMergedSpansStringId;
  m.correlation_id = 0;
  m.request_id = 0;
  m.num_args = 1;
  m.args[0] = {wire::kMergedSpansStringId, static_cast<int64_t>(run.count)};
  ++merged_;
  emit(source, m);
}

void SpanMerger::finish() {
  for (const Lane& lane : lanes_)
    if (lane.open) flush(lane.key.source(), lane.run);
  lanes_.clear();
  slots_.clear();
  last_ = UINT32_MAX;
  mark();  // nothing to undo across a finish()
}

SpanMerger::Lane& SpanMerger::touch(uint32_t index) {
  Lane& lane = lanes_[index];
  if (lane.mark != mark_) {
    lane.mark = mark_;
    if (index < lanes_at_mark_) saved_.emplace_back(index, lane);  // newer lanes are cut instead
  }
  return lane;
}

void SpanMerger::mark() {
  ++mark_;
  saved_.clear();
  lanes_at_mark_ = lanes_.size();
  merged_at_mark_ = merged_;
}

void SpanMerger::undo() {
  for (const auto& [index, lane] : saved_) lanes_[index] = lane;
  saved_.clear();
  merged_ = merged_at_mark_;
  last_ = UINT32_MAX;
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

void SpanMerger::rehash(size_t slots) {
  slots_.assign(slots, 0);
  shift_ = 64 - std::countr_zero(slots_.size());
  const size_t mask = slots_.size() - 1;
  for (uint32_t i = 0; i < lanes_.size(); ++i) {
    size_t at = hash(lanes_[i].key) >> shift_;
    while (slots_[at] != 0) at = (at + 1) & mask;
    slots_[at] = i + 1;
  }
}

}  // namespace inferscope::collector
