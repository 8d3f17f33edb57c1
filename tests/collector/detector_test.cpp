// Hot / cold / dead / drop-burst episodes: M windows to open, hysteresis to close.
#include "inferscope/collector/detector.hpp"

#include <gtest/gtest.h>

#include "inferscope/analysis/layer_stats.hpp"

using namespace inferscope::collector;
using inferscope::analysis::compute_layer_stats;
using inferscope::wire::AlertKind;

namespace {

constexpr int64_t kW = 200'000'000;  // 200 ms windows

struct Harness {
  AggregatorOptions options;
  LayerDetector detector;
  int64_t window = 0;
  explicit Harness(uint32_t experts, AggregatorOptions o = {}) : options(o), detector(o, experts) {}
  std::vector<EpisodeEvent> feed(std::vector<uint64_t> load, uint64_t dropped = 0) {
    std::vector<EpisodeEvent> ev;
    const int64_t start = window * kW;
    detector.observe(compute_layer_stats(load, dropped), start, start + kW, ev);
    ++window;
    return ev;
  }
};

}  // namespace

TEST(Detector, HotNeedsMWindowsAndClearsWithHysteresis) {
  Harness h(4);
  // 60 of 100 assignments on expert 0: utilization 2.4 (ideal 25).
  EXPECT_TRUE(h.feed({60, 20, 10, 10}).empty());
  EXPECT_TRUE(h.feed({55, 25, 10, 10}).empty());  // 2.2: still only two windows
  auto ev = h.feed({50, 30, 10, 10});             // 2.0 == threshold: third window opens it
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].opened);
  EXPECT_EQ(ev[0].kind, AlertKind::kHotExpert);
  EXPECT_EQ(ev[0].expert, 0u);
  EXPECT_EQ(ev[0].start_ns, 0);  // the streak's first window
  EXPECT_FLOAT_EQ(ev[0].peak_utilization, 2.4f);
  EXPECT_FLOAT_EQ(ev[0].peak_share, 0.6f);
  EXPECT_EQ(h.detector.open_kind(0), static_cast<int>(AlertKind::kHotExpert));
  EXPECT_EQ(h.detector.count_open(AlertKind::kHotExpert), 1u);
  // 1.6: below the hot threshold but above the clear threshold (1.5): stays open.
  EXPECT_TRUE(h.feed({40, 20, 20, 20}).empty());
  ev = h.feed({30, 30, 20, 20});  // 1.2 < 1.5: closes
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].opened);
  EXPECT_EQ(ev[0].start_ns, 0);
  EXPECT_EQ(ev[0].end_ns, 4 * kW);
  EXPECT_FLOAT_EQ(ev[0].peak_utilization, 2.4f);
  EXPECT_EQ(h.detector.count_open(AlertKind::kHotExpert), 0u);
}

TEST(Detector, ABrokenStreakStartsOver) {
  Harness h(4);
  h.feed({60, 20, 10, 10});
  h.feed({60, 20, 10, 10});
  h.feed({30, 30, 20, 20});  // breaks the streak
  EXPECT_TRUE(h.feed({60, 20, 10, 10}).empty());
  EXPECT_TRUE(h.feed({60, 20, 10, 10}).empty());
  auto ev = h.feed({60, 20, 10, 10});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].start_ns, 3 * kW);
}

TEST(Detector, ColdThenDeadThenRevived) {
  Harness h(4);
  // Expert 3: 5 of 100 -> utilization 0.2 < 0.25.
  h.feed({40, 40, 15, 5});
  h.feed({40, 40, 15, 5});
  auto ev = h.feed({40, 40, 15, 5});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, AlertKind::kColdExpert);
  EXPECT_EQ(ev[0].expert, 3u);
  EXPECT_FLOAT_EQ(ev[0].peak_utilization, 0.2f);
  // Now it gets nothing: after 3 zero windows the cold episode ends and a dead one opens.
  EXPECT_TRUE(h.feed({40, 30, 30, 0}).empty());
  EXPECT_TRUE(h.feed({40, 30, 30, 0}).empty());
  ev = h.feed({40, 30, 30, 0});
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_FALSE(ev[0].opened);
  EXPECT_EQ(ev[0].kind, AlertKind::kColdExpert);
  EXPECT_EQ(ev[0].end_ns, 5 * kW);
  EXPECT_TRUE(ev[1].opened);
  EXPECT_EQ(ev[1].kind, AlertKind::kDeadExpert);
  EXPECT_EQ(ev[1].start_ns, 3 * kW);
  EXPECT_FLOAT_EQ(ev[1].peak_share, 0.0f);
  // Any assignment revives it; at a fair load it is neither dead nor cold.
  ev = h.feed({25, 25, 25, 25});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].opened);
  EXPECT_EQ(ev[0].kind, AlertKind::kDeadExpert);
  EXPECT_EQ(h.detector.open_kind(3), -1);
}

TEST(Detector, ColdClearsOnlyAboveTheClearThreshold) {
  Harness h(4);
  for (int i = 0; i < 3; ++i) h.feed({40, 40, 15, 5});
  EXPECT_EQ(h.detector.open_kind(3), static_cast<int>(AlertKind::kColdExpert));
  // 0.4: above the cold threshold (0.25) but below the clear threshold (0.5).
  EXPECT_TRUE(h.feed({40, 35, 15, 10}).empty());
  auto ev = h.feed({30, 30, 25, 15});  // 0.6: clears
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].opened);
}

TEST(Detector, ThresholdsAndWindowCountAreConfigurable) {
  AggregatorOptions o;
  o.windows = 1;
  o.hot_threshold = 3.0;
  o.hot_clear_threshold = 2.5;
  o.cold_threshold = 0.1;
  Harness h(4, o);
  EXPECT_TRUE(h.feed({60, 20, 10, 10}).empty());  // 2.4 < 3
  auto ev = h.feed({80, 10, 5, 5});               // 3.2: one window is enough
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, AlertKind::kHotExpert);
}

TEST(Detector, DropBurstOpensAndCloses) {
  Harness h(4);
  EXPECT_TRUE(h.feed({25, 25, 25, 25}, 2).empty());  // 2%: below 5%
  auto ev = h.feed({25, 25, 25, 25}, 10);            // 10%
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, AlertKind::kDropBurst);
  EXPECT_TRUE(ev[0].opened);
  EXPECT_TRUE(h.detector.drop_burst_open());
  EXPECT_TRUE(h.feed({25, 25, 25, 25}, 20).empty());
  ev = h.feed({25, 25, 25, 25}, 0);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].opened);
  EXPECT_FLOAT_EQ(ev[0].peak_share, 0.2f);  // peak drop ratio
  EXPECT_EQ(ev[0].start_ns, 1 * kW);
  EXPECT_EQ(ev[0].end_ns, 3 * kW);
}
