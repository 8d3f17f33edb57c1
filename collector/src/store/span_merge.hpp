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

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

// How many stored spans a span stands for: the count of a merged span, else 1.
inline uint64_t merged_span_count(const wire::Span& s) {
  if (s.name_id == wire::kMergedSpansStringId && s.num_args >= 1 &&
      s.args[0].key_id == wire::kMergedSpansStringId && s.args[0].value > 0)
    return static_cast<uint64_t>(s.args[0].value);
  return 1;
}

class SpanMerger {
 public:
  using Emit = std::function<void(uint32_t source, const wire::Span&)>;

  // res <= 0: no merging, every span goes out as it is.
  SpanMerger(int64_t res, Emit emit) : res_(res), emit_(std::move(emit)) {}
  // Emits into `out` (appended): the store's summaries, where a call through
  // std::function per span shows in profiles.
  using Output = std::vector<std::pair<uint32_t, wire::Span>>;
  SpanMerger(int64_t res, Output* out) : res_(res), out_(out) {}

  // Inline (below): the store calls it for every span it is handed, and the
  // calls and the lookup were a fifth of its cost per record.
  void add(uint32_t source, const wire::Span& s);
  // Emits the open runs, in the order their lanes were first seen.
  void finish();
  // The resolution of the spans added from now on; only between finish() and
  // the next add().
  void set_resolution(int64_t res) { res_ = res; }
  uint64_t merged() const { return merged_; }  // merged spans emitted

  // A frame is merged whole or not at all: mark() before its spans, undo() puts
  // the lanes back as they were at mark() (the caller drops what was emitted
  // since). Costs a compare per span and a copy of each lane a frame touches.
  void mark();
  void undo();

 private:
  // source and track | stream, depth and track kind: two words, compared and hashed whole.
  struct LaneKey {
    uint64_t a = 0, b = 0;
    bool operator==(const LaneKey&) const = default;
    uint32_t source() const { return static_cast<uint32_t>(a >> 32); }
  };
  // What add() reads and writes for almost every span, kept in the hash table's
  // slot itself: one cache line, found with one load. This is the store's
  // per-span cost when it writes summaries (agent threads interleave, so the
  // previous span's lane is rarely the next one's), and each extra dependent
  // load (slot -> lane -> run) cost an L2 round trip while the frames being
  // decoded stream through L1.
  // One cache line each (aligned): the lookup's load never straddles two.
  struct alignas(64) Slot {
    LaneKey key;
    int64_t first_start = 0;  // of the open run
    int64_t end_ns = 0;       // the open run's latest end
    uint64_t count = 0;       // spans in the open run; 0: no run open
    uint32_t lane = 0;        // index in lanes_ + 1; 0: an empty slot
    uint32_t mark = 0;        // the mark() it was last saved for (see touch())
  };
  // Every lane seen since the last finish(), in first-seen order (finish()
  // emits in that order): the open run's first span, and where its slot is.
  struct Lane {
    LaneKey key;
    uint32_t slot = 0;  // index in slots_
    wire::Span first;
  };
  // The lane of key (added when new): its slot index.
  uint32_t slot_of(const LaneKey& key);
  uint32_t add_lane(const LaneKey& key, size_t at);  // a key slot_of did not find; at: its slot
  void touch(Slot& slot);     // saves the lane for undo() first when the mark is new to it
  void save(Slot& slot);      // touch()'s first change since the mark (once per lane and frame)
  void rehash(size_t slots);  // slots_ of that size (a power of 2), lanes_ pointed at them
  void flush(uint32_t source, const wire::Span& first, int64_t end_ns, uint64_t count);

  int64_t res_;
  Emit emit_;
  Output* out_ = nullptr;  // instead of emit_ when set
  void emit(uint32_t source, const wire::Span& s) {
    if (out_) {
      out_->emplace_back(source, s);
    } else {
      emit_(source, s);
    }
  }
  uint64_t merged_ = 0;
  std::vector<Lane> lanes_;
  std::vector<Slot> slots_;  // open addressing, size 2^(64 - shift_), at most half full
  int shift_ = 64;           // 64 - log2(slots_.size()): a hash's top bits pick the slot
  // Since mark(): lanes as they were before their first change, and what to cut back to.
  struct Saved {
    uint32_t lane;
    Slot slot;
    wire::Span first;
  };
  uint32_t mark_ = 0;
  std::vector<Saved> saved_;
  size_t lanes_at_mark_ = 0;
  uint64_t merged_at_mark_ = 0;
};

// Multiplicative hashing; the slot is taken from the top bits, which depend on every key bit.
inline uint64_t span_lane_hash(uint64_t a, uint64_t b) {
  return (a * 0x9E3779B97F4A7C15ull) ^ ((b ^ (b >> 29)) * 0xC2B2AE3D27D4EB4Full);
}

[[gnu::always_inline]] inline uint32_t SpanMerger::slot_of(const LaneKey& key) {
  size_t at = 0;
  if (!slots_.empty()) {
    const size_t mask = slots_.size() - 1;
    at = span_lane_hash(key.a, key.b) >> shift_;
    // Lanes are few (tracks x depths): the first slot is nearly always the lane's.
    for (;;) {
      const Slot& slot = slots_[at];
      if (slot.key == key && slot.lane != 0) return static_cast<uint32_t>(at);
      if (slot.lane == 0) break;
      at = (at + 1) & mask;
    }
  }
  return add_lane(key, at);
}

[[gnu::always_inline]] inline void SpanMerger::touch(Slot& slot) {
  if (slot.mark != mark_) [[unlikely]]
    save(slot);
}

[[gnu::always_inline]] inline void SpanMerger::add(uint32_t source, const wire::Span& s) {
  if (res_ <= 0) [[unlikely]] {
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

}  // namespace inferscope::collector
