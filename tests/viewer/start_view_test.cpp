// Where the viewer opens: the start range and the worst expert it preselects.
#include "inferscope/viewer/start_view.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

constexpr int64_t kS = 1'000'000'000;

wire::AlertEpisode alert(int64_t start_ns, int64_t end_ns, uint32_t layer = 1,
                         uint32_t expert = 0) {
  wire::AlertEpisode a;
  a.kind = wire::AlertKind::kHotExpert;
  a.layer = layer;
  a.expert = expert;
  a.start_ns = start_ns;
  a.end_ns = end_ns;
  return a;
}

// A minute of trace: spans at 0 s and 60 s.
TraceModel minute() {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, test::cpu_span(0, 0, kS));
  m.add(1, test::cpu_span(0, 59 * kS, 60 * kS));
  return m;
}

TEST(ViewerStartView, OpensOnTheMostRecentAlertWithASecondBeforeIt) {
  TraceModel m = minute();
  m.add(0, alert(40 * kS, 50 * kS));
  m.add(0, alert(10 * kS, 20 * kS));  // older, arrives later: not the one
  m.finalize();
  TimeRange r = start_range(m);
  EXPECT_EQ(r.t0, 39 * kS);
  EXPECT_EQ(r.t1, 44 * kS);
}

TEST(ViewerStartView, WithoutAlertsOpensOnTheLastSeconds) {
  TraceModel m = minute();
  m.finalize();
  TimeRange r = start_range(m);
  EXPECT_EQ(r.t1, 60 * kS);
  EXPECT_EQ(r.t0, 60 * kS - static_cast<int64_t>(kStartViewSeconds * kS));
}

TEST(ViewerStartView, AnAlertAtTheEndStillGetsAFullRangeInsideTheTrace) {
  TraceModel m = minute();
  m.add(0, alert(59 * kS + kS / 2, 0));  // still open
  m.finalize();
  TimeRange r = start_range(m);
  EXPECT_EQ(r.t1, 60 * kS);
  EXPECT_EQ(r.t1 - r.t0, static_cast<int64_t>(kStartViewSeconds * kS));
}

TEST(ViewerStartView, AShortTraceIsShownWhole) {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, test::cpu_span(0, 2 * kS, 4 * kS));
  m.finalize();
  TimeRange r = start_range(m);
  EXPECT_EQ(r.t0, 2 * kS);
  EXPECT_EQ(r.t1, 4 * kS);
  EXPECT_EQ(start_range(TraceModel()).t1, 0);
}

TEST(ViewerStartView, AnAlertThatStartsBeforeTheFirstRecordWidensTheTrace) {
  // The collector's first window began before the first record (windows are
  // aligned to multiples of --window): the demo's "-911.4 ms" start.
  TraceModel m = minute();
  m.add(0, alert(-911'400'000, 3 * kS));
  m.finalize();
  EXPECT_EQ(m.min_ns(), -911'400'000);
  EXPECT_GE(m.alerts().front().alert.start_ns - m.min_ns(), 0);
}

TEST(ViewerStartView, WorstExpertIsTheHighestUtilizationNotTheFirstAlert) {
  Heatmap h;
  h.experts = 4;
  HeatmapLayer a;
  a.layer = 1;
  a.assignments = {10, 10, 10, 30};  // expert 3 at 2.0x
  a.total = 60;
  HeatmapLayer b;
  b.layer = 3;
  b.assignments = {5, 5, 50, 0};  // expert 2 at 3.33x
  b.total = 60;
  h.layers = {a, b};
  auto w = worst_expert(h);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->layer, 3u);
  EXPECT_EQ(w->expert, 2u);
  EXPECT_NEAR(w->utilization, 4 * 50.0 / 60.0, 1e-12);
  EXPECT_FALSE(worst_expert(Heatmap{}));
}

}  // namespace
}  // namespace inferscope::viewer
