// Per-lane run merging (span_merge.hpp).
#include "span_merge.hpp"

#include <algorithm>

namespace inferscope::collector {

uint64_t merged_span_count(const wire::Span& s) {
  if (s.name_id == wire::kMergedSpansStringId && s.num_args >= 1 &&
      s.args[0].key_id == wire::kMergedSpansStringId && s.args[0].value > 0)
    return static_cast<uint64_t>(s.args[0].value);
  return 1;
}

size_t SpanMerger::LaneHash::operator()(const LaneKey& k) const {
  uint64_t h = (uint64_t{std::get<0>(k)} << 32) ^ std::get<2>(k);
  h ^= (uint64_t{std::get<3>(k)} << 20) ^ (uint64_t{std::get<4>(k)} << 8) ^ std::get<1>(k);
  h *= 0x9E3779B97F4A7C15ull;
  return static_cast<size_t>(h ^ (h >> 29));
}

void SpanMerger::add(uint32_t source, const wire::Span& s) {
  if (res_ <= 0) {
    emit_(source, s);
    return;
  }
  const LaneKey key{source, static_cast<uint8_t>(s.track_kind), s.track_id, s.stream, s.depth};
  const uint64_t count = merged_span_count(s);
  // A merged input is a run of short spans, whatever its extent (see the header).
  const bool short_span = count > 1 || s.end_ns - s.start_ns < res_;
  // Spans come in runs of one lane (an agent sends a thread's spans together):
  // the last lane's run is looked up without hashing.
  // (A pointer, not an iterator: a rehash keeps elements where they are.)
  Entry* hit = last_ && last_->first == key ? last_ : nullptr;
  if (!hit) {
    auto found = runs_.find(key);
    hit = found == runs_.end() ? nullptr : &*found;
  }
  if (hit) {
    last_ = hit;
    Run& run = hit->second;
    if (short_span && s.start_ns >= run.first.start_ns && s.start_ns - run.end_ns < res_) {
      run.end_ns = std::max(run.end_ns, s.end_ns);
      run.count += count;
      return;
    }
    flush(source, run);
    if (!short_span) {
      runs_.erase(key);
      last_ = nullptr;
      emit_(source, s);
      return;
    }
    run = Run{s, s.end_ns, count};
    return;
  }
  if (!short_span) {
    emit_(source, s);
    return;
  }
  last_ = &*runs_.emplace(key, Run{s, s.end_ns, count}).first;
}

void SpanMerger::flush(uint32_t source, const Run& run) {
  if (run.count == 1) {
    emit_(source, run.first);
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
  emit_(source, m);
}

void SpanMerger::finish() {
  for (auto& [key, run] : runs_) flush(std::get<0>(key), run);
  runs_.clear();
  last_ = nullptr;
}

}  // namespace inferscope::collector
