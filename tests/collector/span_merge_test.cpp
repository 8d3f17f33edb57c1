// SpanMerger (store/span_merge.hpp) against a plain reference of the same rule
// (a std::map of open runs, as the merger was first written): on random
// interleaved lanes, with long spans, merged inputs and more lanes than the
// flat table's first size, the spans emitted while adding must be the same
// in the same order, and the runs emitted by finish() the same set.
#include "store/span_merge.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <tuple>
#include <vector>

using namespace inferscope::collector;
namespace wire = inferscope::wire;

namespace {

using Out = std::vector<std::pair<uint32_t, wire::Span>>;

// The rule written out simply: one open run per lane in an ordered map.
class Reference {
 public:
  Reference(int64_t res, Out& out) : res_(res), out_(out) {}
  void add(uint32_t source, const wire::Span& s) {
    const auto key =
        std::make_tuple(source, static_cast<uint8_t>(s.track_kind), s.track_id, s.stream, s.depth);
    const uint64_t count = merged_span_count(s);
    const bool short_span = count > 1 || s.end_ns - s.start_ns < res_;
    auto it = runs_.find(key);
    if (it != runs_.end()) {
      Run& run = it->second;
      if (short_span && s.start_ns >= run.first.start_ns && s.start_ns - run.end_ns < res_) {
        run.end_ns = std::max(run.end_ns, s.end_ns);
        run.count += count;
        return;
      }
      flush(source, run);
      if (!short_span) {
        runs_.erase(it);
        out_.emplace_back(source, s);
        return;
      }
      run = Run{s, s.end_ns, count};
      return;
    }
    if (!short_span) {
      out_.emplace_back(source, s);
      return;
    }
    runs_.emplace(key, Run{s, s.end_ns, count});
  }
  void finish() {
    for (auto& [key, run] : runs_) flush(std::get<0>(key), run);
    runs_.clear();
  }

 private:
  struct Run {
    wire::Span first;
    int64_t end_ns = 0;
    uint64_t count = 0;
  };
  void flush(uint32_t source, const Run& run) {
    if (run.count == 1) {
      out_.emplace_back(source, run.first);
      return;
    }
    wire::Span m = run.first;
    m.end_ns = run.end_ns;
    m.name_id = wire::kMergedSpansStringId;
    m.correlation_id = 0;
    m.request_id = 0;
    m.num_args = 1;
    m.args[0] = {wire::kMergedSpansStringId, static_cast<int64_t>(run.count)};
    out_.emplace_back(source, m);
  }
  int64_t res_;
  Out& out_;
  std::map<std::tuple<uint32_t, uint8_t, uint32_t, uint32_t, uint16_t>, Run> runs_;
};

auto as_tuple(const std::pair<uint32_t, wire::Span>& p) {
  const wire::Span& s = p.second;
  return std::make_tuple(p.first, static_cast<int>(s.track_kind), s.track_id, s.stream, s.depth,
                         s.start_ns, s.end_ns, s.name_id, s.num_args, s.args[0].key_id,
                         s.args[0].value, s.correlation_id);
}

void expect_same(const Out& a, const Out& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(as_tuple(a[i]), as_tuple(b[i])) << "at " << i;
}

}  // namespace

TEST(SpanMerger, MatchesTheReferenceOnRandomInterleavedLanes) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    // Up to 600 lanes: the flat table grows several times within one merger.
    const uint32_t lanes = 1 + static_cast<uint32_t>(rng() % 600);
    std::vector<int64_t> clock(lanes, 0);
    const int64_t res = int64_t{1} << (8 + rng() % 10);
    Out got, want;
    SpanMerger merger(res,
                      [&](uint32_t source, const wire::Span& s) { got.emplace_back(source, s); });
    Reference reference(res, want);
    for (int i = 0; i < 20000; ++i) {
      const uint32_t lane = static_cast<uint32_t>(rng() % lanes);
      wire::Span s;
      s.track_kind = lane % 3 == 0 ? wire::TrackKind::kGpuStream : wire::TrackKind::kCpuThread;
      s.track_id = 1000 + lane / 12;
      s.stream = s.track_kind == wire::TrackKind::kGpuStream ? 1 + lane % 4 : 0;
      s.depth = static_cast<uint16_t>(lane % 4);
      s.name_id = 1 + static_cast<uint32_t>(rng() % 8);
      // Gaps and durations on both sides of res; now and then a span that starts
      // before the run's first (out of order), which must break the run.
      const int64_t gap = static_cast<int64_t>(rng() % static_cast<uint64_t>(res * 2));
      const bool back = rng() % 50 == 0;
      s.start_ns = back ? std::max<int64_t>(0, clock[lane] - res * 3) : clock[lane] + gap;
      s.end_ns = s.start_ns + static_cast<int64_t>(rng() % static_cast<uint64_t>(res * 3 / 2));
      if (rng() % 10 == 0) {  // a merged input (a summary merged again)
        s.name_id = wire::kMergedSpansStringId;
        s.num_args = 1;
        s.args[0] = {wire::kMergedSpansStringId, 2 + static_cast<int64_t>(rng() % 50)};
      }
      clock[lane] = std::max(clock[lane], s.end_ns);
      const uint32_t source = 1 + lane % 2;
      merger.add(source, s);
      reference.add(source, s);
      ASSERT_EQ(got.size(), want.size()) << "seed " << seed << " span " << i;
    }
    expect_same(got, want);  // emitted while adding: same spans, same order
    const size_t before = got.size();
    merger.finish();
    reference.finish();
    // finish() emits the open runs in its own lane order: compare as sets.
    Out tail_got(got.begin() + static_cast<std::ptrdiff_t>(before), got.end());
    Out tail_want(want.begin() + static_cast<std::ptrdiff_t>(before), want.end());
    auto by_tuple = [](const auto& a, const auto& b) { return as_tuple(a) < as_tuple(b); };
    std::sort(tail_got.begin(), tail_got.end(), by_tuple);
    std::sort(tail_want.begin(), tail_want.end(), by_tuple);
    expect_same(tail_got, tail_want);
    EXPECT_GT(merger.merged(), 0u) << "seed " << seed;
    // A merger is reusable after finish(): the next span starts a fresh lane table.
    got.clear();
    wire::Span one;
    one.start_ns = 5;
    one.end_ns = 6;
    merger.add(7, one);
    merger.finish();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].first, 7u);
    EXPECT_EQ(got[0].second.end_ns, 6);
  }
}
