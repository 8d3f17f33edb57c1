// Level of detail: merged items partition exactly the spans in view, only
// sub-threshold spans merge, and the item count is bounded by the pixel count.
#include "inferscope/viewer/lod.hpp"

#include <gtest/gtest.h>

#include <random>

namespace inferscope::viewer {
namespace {

Lane random_lane(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(1.0 / 200), dur(1.0 / 150);
  Lane lane;
  int64_t t = 0;
  for (size_t i = 0; i < n; ++i) {
    t += static_cast<int64_t>(gap(rng));
    // Now and then a long span, so singles and runs alternate.
    int64_t d = (rng() % 50 == 0) ? 20000 + static_cast<int64_t>(rng() % 50000)
                                  : static_cast<int64_t>(dur(rng));
    SpanRec s;
    s.start_ns = t;
    s.end_ns = t + d;
    s.name = static_cast<uint32_t>(i);
    lane.spans.push_back(s);
    t += d;
  }
  return lane;
}

void check_query(const Lane& lane, int64_t t0, int64_t t1, int64_t min_ns) {
  std::vector<DrawItem> items;
  query_lane(lane, t0, t1, min_ns, items);
  const auto& s = lane.spans;
  // Indexes of the spans that intersect [t0, t1].
  size_t first = 0;
  while (first < s.size() && s[first].end_ns < t0) ++first;
  size_t last = first;
  while (last < s.size() && s[last].start_ns <= t1) ++last;  // one past
  if (first == last) {
    EXPECT_TRUE(items.empty());
    return;
  }
  ASSERT_FALSE(items.empty());
  EXPECT_EQ(items.front().first, first);
  EXPECT_GE(items.back().last + 1, last);  // a run may run on a little past t1
  for (size_t k = 0; k < items.size(); ++k) {
    const DrawItem& it = items[k];
    ASSERT_LE(it.first, it.last);
    if (k > 0) {
      ASSERT_EQ(it.first, items[k - 1].last + 1) << "items must be contiguous";
    }
    EXPECT_EQ(it.start_ns, s[it.first].start_ns);
    EXPECT_EQ(it.end_ns, s[it.last].end_ns);
    if (it.merged()) {
      for (uint32_t i = it.first; i <= it.last; ++i) {
        ASSERT_LT(s[i].end_ns - s[i].start_ns, min_ns) << "a long span was merged away";
        if (i > it.first) {
          ASSERT_LT(s[i].start_ns - s[i - 1].end_ns, 2 * min_ns);
        }
      }
    }
  }
  // Bounded by the view: at most about two items per min_ns (one run, one gap).
  EXPECT_LE(items.size(), static_cast<size_t>(2 * (t1 - t0) / min_ns + 4));
}

TEST(ViewerLod, MergedItemsPartitionTheVisibleSpans) {
  Lane lane = random_lane(200000, 7);
  const int64_t end = lane.spans.back().end_ns;
  std::mt19937_64 rng(3);
  for (int q = 0; q < 200; ++q) {
    int64_t a = static_cast<int64_t>(rng() % static_cast<uint64_t>(end));
    int64_t w = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(end / (1 + rng() % 1000)));
    int64_t min_ns = std::max<int64_t>(1, w / (200 + static_cast<int64_t>(rng() % 3000)));
    check_query(lane, a, a + w, min_ns);
  }
  check_query(lane, 0, end, end / 2000);  // fully zoomed out
  check_query(lane, -1000, end + 1000, end / 100);
}

TEST(ViewerLod, OnePixelPerNanosecondGivesEverySpan) {
  Lane lane = random_lane(1000, 11);
  std::vector<DrawItem> items;
  query_lane(lane, 0, lane.spans.back().end_ns, 1, items);
  ASSERT_EQ(items.size(), lane.spans.size());
  for (size_t i = 0; i < items.size(); ++i) EXPECT_FALSE(items[i].merged());
}

TEST(ViewerLod, ZoomedOutManySpansBecomeFewItems) {
  Lane lane = random_lane(500000, 5);
  std::vector<DrawItem> items;
  const int64_t end = lane.spans.back().end_ns;
  query_lane(lane, 0, end, end / 1500, items);  // ~1500 px wide, 1 px threshold
  EXPECT_LT(items.size(), 3100u);
  uint64_t covered = 0;
  for (const DrawItem& it : items) covered += it.count();
  EXPECT_EQ(covered, lane.spans.size());
}

TEST(ViewerLod, SpanAtFindsTheSpanUnderTheCursor) {
  Lane lane;
  for (int i = 0; i < 10; ++i) {
    SpanRec s;
    s.start_ns = i * 100;
    s.end_ns = i * 100 + 50;
    lane.spans.push_back(s);
  }
  EXPECT_EQ(span_at(lane, 325, 0), 3);
  EXPECT_EQ(span_at(lane, 375, 0), -1);
  EXPECT_EQ(span_at(lane, 355, 10), 3);
  EXPECT_EQ(span_at(lane, 5000, 10), -1);
  EXPECT_EQ(first_ending_at_or_after(lane, 260), 3u);
}

TEST(ViewerLod, EmptyLane) {
  Lane lane;
  std::vector<DrawItem> items;
  query_lane(lane, 0, 100, 1, items);
  EXPECT_TRUE(items.empty());
  EXPECT_EQ(span_at(lane, 5, 5), -1);
}

}  // namespace
}  // namespace inferscope::viewer
