// Capture windows: an alert finds the GPU spans its capture traced (arg `capture` = the
// episode's tag, as the agent writes it), and nothing else: other captures, untagged spans and
// CPU spans with the same argument stay out. The model keeps the windows as spans arrive: a
// lookup never rescans, the number of tags is bounded, clear_spans() forgets them.
#include "inferscope/viewer/captures.hpp"

#include <gtest/gtest.h>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/wire/episode_id.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

wire::Span gpu_span(uint32_t name, int64_t a, int64_t b, uint32_t capture_key, int64_t tag) {
  wire::Span s;
  s.track_kind = wire::TrackKind::kGpuStream;
  s.track_id = 0;
  s.stream = 7;
  s.category = wire::SpanCategory::kKernel;
  s.name_id = name;
  s.start_ns = a;
  s.end_ns = b;
  if (tag != 0) {
    s.num_args = 1;
    s.args[0] = wire::SpanArg{capture_key, tag};
  }
  return s;
}

TEST(ViewerCaptures, AnAlertFindsTheWindowOfItsOwnCaptureOnly) {
  wire::AlertEpisode hot;
  hot.kind = wire::AlertKind::kHotExpert;
  hot.model = "m";
  hot.layer = 3;
  hot.expert = 5;
  hot.start_ns = 1000;
  wire::AlertEpisode other = hot;
  other.expert = 6;
  const auto tag = int64_t(wire::episode_capture_tag(hot));
  const auto other_tag = int64_t(wire::episode_capture_tag(other));

  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, wire::StringDef{1, "gemm"});
  m.add(1, wire::StringDef{2, "capture"});
  m.add(1, gpu_span(1, 100, 200, 2, 0));      // traced outside any capture
  m.add(1, gpu_span(1, 2000, 2100, 2, tag));  // the hot episode's capture
  m.add(1, gpu_span(1, 2200, 2500, 2, tag));
  m.add(1, gpu_span(1, 9000, 9100, 2, other_tag));  // another episode's
  wire::Span cpu = test::cpu_span(1, 5000, 8000);
  cpu.num_args = 1;
  cpu.args[0] = wire::SpanArg{2, tag};  // not a GPU span: not part of the capture
  m.add(1, cpu);
  m.finalize();

  EXPECT_EQ(m.capture_windows().size(), 2u);
  const CaptureWindow* w = capture_for_episode(m, hot);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->start_ns, 2000);
  EXPECT_EQ(w->end_ns, 2500);
  EXPECT_EQ(w->spans, 2u);
  const CaptureWindow* o = capture_for_episode(m, other);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->start_ns, 9000);
  wire::AlertEpisode never = hot;
  never.start_ns = 1;
  EXPECT_EQ(capture_for_episode(m, never), nullptr);

  // New spans of the same capture widen its window on the next lookup.
  m.add(1, gpu_span(1, 2600, 2700, 2, tag));
  m.finalize();
  EXPECT_EQ(capture_for_episode(m, hot)->end_ns, 2700);
  EXPECT_EQ(capture_for_episode(m, hot)->spans, 3u);
}

// Spans added after the first lookup update the window by visiting only those spans: the
// model never rescans the spans it already holds (the old index rescanned every GPU span each
// time the span count changed, i.e. on each frame of a live session).
TEST(ViewerCaptures, NewSpansUpdateTheWindowWithoutARescan) {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, wire::StringDef{1, "gemm"});
  m.add(1, wire::StringDef{2, "capture"});
  constexpr int kSpans = 1000;
  for (int i = 0; i < kSpans; ++i) m.add(1, gpu_span(1, 1000 * i, 1000 * i + 500, 2, 42));
  m.finalize();
  ASSERT_NE(m.capture_window(42), nullptr);
  EXPECT_EQ(m.capture_window(42)->spans, uint64_t(kSpans));
  const uint64_t seen = m.capture_spans_seen();
  EXPECT_EQ(seen, uint64_t(kSpans));
  for (int look = 0; look < 3; ++look) ASSERT_NE(m.capture_window(42), nullptr);
  EXPECT_EQ(m.capture_spans_seen(), seen);  // lookups visit nothing

  m.add(1, gpu_span(1, 5'000'000, 5'000'700, 2, 42));  // live: one more tagged kernel
  m.add(1, gpu_span(1, 6'000'000, 6'000'100, 2, 0));   // and an untagged one
  EXPECT_EQ(m.capture_window(42)->end_ns, 5'000'700);  // even before finalize()
  m.finalize();
  EXPECT_EQ(m.capture_window(42)->start_ns, 0);
  EXPECT_EQ(m.capture_window(42)->end_ns, 5'000'700);
  EXPECT_EQ(m.capture_window(42)->spans, uint64_t(kSpans) + 1);
  EXPECT_EQ(m.capture_spans_seen(), seen + 1);  // the one new tagged span, nothing else

  // A level-of-detail rebuild drops the GPU spans and with them the windows.
  m.clear_spans();
  m.finalize();
  EXPECT_EQ(m.capture_window(42), nullptr);
  m.add(1, gpu_span(1, 7000, 7100, 2, 42));
  EXPECT_EQ(m.capture_window(42)->spans, 1u);
  m.clear();
  EXPECT_TRUE(m.capture_windows().empty());
  EXPECT_EQ(m.capture_spans_seen(), 0u);
}

TEST(ViewerCaptures, TheNumberOfTagsIsBoundedAndTheRestCounted) {
  ModelLimits limits;
  limits.max_capture_tags = 3;
  TraceModel m(limits);
  m.add(1, test::hello(0));
  m.add(1, wire::StringDef{1, "gemm"});
  m.add(1, wire::StringDef{2, "capture"});
  for (int64_t tag = 1; tag <= 5; ++tag) {
    m.add(1, gpu_span(1, tag * 100, tag * 100 + 10, 2, tag));
    m.add(1, gpu_span(1, tag * 100 + 20, tag * 100 + 30, 2, tag));
  }
  m.finalize();
  EXPECT_EQ(m.capture_windows().size(), 3u);
  EXPECT_EQ(m.capture_window(3)->spans, 2u);  // the first three tags are tracked whole
  EXPECT_EQ(m.capture_window(4), nullptr);
  EXPECT_EQ(m.dropped_capture_spans(), 4u);  // tags 4 and 5, two spans each
  EXPECT_EQ(m.span_count(), 10u);            // the spans themselves are all kept
}

TEST(ViewerCaptures, ATraceWithoutCapturesHasNone) {
  TraceModel m;
  m.add(1, test::hello(0));
  m.add(1, wire::StringDef{1, "gemm"});
  m.add(1, gpu_span(1, 100, 200, 0, 0));
  m.finalize();
  EXPECT_TRUE(m.capture_windows().empty());
}

// The sample trace's hot-expert episode asked the hot rank for a capture: from the alert as the
// viewer reads it, the model finds exactly the kernels the generator tagged, after the episode
// opened, on that rank's GPU track.
TEST(ViewerCaptures, TheSampleTracesHotEpisodeLeadsToItsCapture) {
  SampleOptions o;
  o.seconds = 20;
  o.target_spans = 200'000;
  SampleSummary sum;
  const auto bytes = sample_trace_bytes(o, &sum);
  ASSERT_GT(sum.captured_kernels, 0u);
  TraceModel m;
  const LoadResult loaded = load_trace_bytes(bytes, m);
  ASSERT_TRUE(loaded.ok) << loaded.error;
  size_t with_capture = 0;
  for (const AlertRec& a : m.alerts()) {
    const CaptureWindow* w = capture_for_episode(m, a.alert);
    if (!w) continue;
    ++with_capture;
    EXPECT_EQ(a.alert.kind, wire::AlertKind::kHotExpert);
    EXPECT_EQ(w->spans, sum.captured_kernels);
    EXPECT_GE(w->start_ns, a.alert.start_ns);
  }
  EXPECT_EQ(with_capture, 1u);
}

}  // namespace
}  // namespace inferscope::viewer
