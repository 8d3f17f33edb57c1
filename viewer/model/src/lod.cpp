// Level of detail: merge sub-pixel spans with binary-search jumps.
#include "inferscope/viewer/lod.hpp"

#include <algorithm>

namespace inferscope::viewer {

uint32_t first_ending_at_or_after(const Lane& lane, int64_t t) {
  // Lanes do not overlap, so ends are sorted like starts.
  auto it = std::lower_bound(lane.spans.begin(), lane.spans.end(), t,
                             [](const SpanRec& s, int64_t v) { return s.end_ns < v; });
  return static_cast<uint32_t>(it - lane.spans.begin());
}

int64_t span_at(const Lane& lane, int64_t t, int64_t slack_ns) {
  uint32_t i = first_ending_at_or_after(lane, t - slack_ns);
  if (i >= lane.spans.size()) return -1;
  const SpanRec& s = lane.spans[i];
  if (s.start_ns - slack_ns > t) return -1;
  // Prefer the next span if t is really inside it (the slack made us pick a neighbour).
  if (s.end_ns < t && i + 1 < lane.spans.size() && lane.spans[i + 1].start_ns <= t) return i + 1;
  return i;
}

namespace {

// First index >= from whose end is >= target. Galloping (1, 2, 4, ... ahead,
// then a binary search in the last step) keeps the probes near `from`: a run
// jumps about one pixel's worth of spans at a time, so this stays in cache
// where a binary search over the whole rest of the lane would not.
uint32_t gallop_end(const std::vector<SpanRec>& s, uint32_t from, int64_t target) {
  const uint32_t n = static_cast<uint32_t>(s.size());
  uint32_t lo = from, step = 1, hi = from;
  while (hi < n && s[hi].end_ns < target) {
    lo = hi + 1;
    hi = from + step;
    step *= 2;
  }
  if (hi > n) hi = n;
  auto it = std::lower_bound(s.begin() + lo, s.begin() + hi, target,
                             [](const SpanRec& r, int64_t v) { return r.end_ns < v; });
  return static_cast<uint32_t>(it - s.begin());
}

}  // namespace

void query_lane(const Lane& lane, int64_t t0, int64_t t1, int64_t min_ns,
                std::vector<DrawItem>& out) {
  const auto& s = lane.spans;
  const uint32_t n = static_cast<uint32_t>(s.size());
  if (min_ns < 1) min_ns = 1;
  uint32_t i = first_ending_at_or_after(lane, t0);
  while (i < n && s[i].start_ns <= t1) {
    if (s[i].end_ns - s[i].start_ns >= min_ns) {
      out.push_back({s[i].start_ns, s[i].end_ns, i, i});
      ++i;
      continue;
    }
    // A run of short spans: absorb every span that ends within min_ns of the
    // run's end (one binary search jumps over all of them), then a following
    // short span that starts within min_ns; stop at a long span or a gap.
    int64_t run_end = s[i].end_ns;
    uint32_t k = i + 1;
    while (k < n && run_end <= t1) {  // past the view the run may stop anywhere
      uint32_t k2 = gallop_end(s, k, run_end + min_ns);
      if (k2 > k) {
        run_end = s[k2 - 1].end_ns;
        k = k2;
        continue;
      }
      if (s[k].start_ns - run_end < min_ns && s[k].end_ns - s[k].start_ns < min_ns) {
        run_end = s[k].end_ns;
        ++k;
        continue;
      }
      break;
    }
    out.push_back({s[i].start_ns, run_end, i, k - 1});
    i = k;
  }
}

}  // namespace inferscope::viewer
