// TraceModel: tracks, lanes, names per source, flows, find, live increments.
#include <gtest/gtest.h>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/codec.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

using test::cpu_span;

void expect_lanes_valid(const TraceModel& m) {
  for (const Track& t : m.tracks())
    for (const Lane& l : t.lanes)
      for (size_t i = 1; i < l.spans.size(); ++i) {
        ASSERT_LE(l.spans[i - 1].end_ns, l.spans[i].start_ns) << t.label;
        ASSERT_LE(l.spans[i].start_ns, l.spans[i].end_ns);
      }
}

TEST(ViewerTraceModel, NestedRangesGetTheirDepth) {
  TraceModel m;
  m.add(1, wire::StringDef{1, "outer"});
  m.add(1, wire::StringDef{2, "inner"});
  m.add(1, wire::StringDef{3, "leaf"});
  // Out of order on purpose: the model sorts.
  m.add(1, cpu_span(3, 120, 130));
  m.add(1, cpu_span(2, 110, 150));
  m.add(1, cpu_span(1, 100, 200));
  m.add(1, cpu_span(2, 160, 190));
  m.add(1, cpu_span(1, 300, 400));
  m.finalize();
  ASSERT_EQ(m.tracks().size(), 1u);
  const Track& t = m.tracks()[0];
  ASSERT_EQ(t.lanes.size(), 3u);
  EXPECT_EQ(t.lanes[0].spans.size(), 2u);
  EXPECT_EQ(t.lanes[1].spans.size(), 2u);
  ASSERT_EQ(t.lanes[2].spans.size(), 1u);
  EXPECT_EQ(m.name(t.lanes[2].spans[0].name), "leaf");
  EXPECT_EQ(m.name(t.lanes[1].spans[1].name), "inner");
  EXPECT_EQ(t.lanes[1].spans[1].start_ns, 160);
  EXPECT_EQ(m.span_count(), 5u);
  EXPECT_EQ(m.min_ns(), 100);
  EXPECT_EQ(m.max_ns(), 400);
  expect_lanes_valid(m);
}

TEST(ViewerTraceModel, OverlappingRequestsPackIntoFewLanes) {
  TraceModel m;
  // Three requests, each overlapping the next only: two lanes suffice.
  m.add(1, wire::RequestEvent{1, 0, 10, 100, 5, 5, 0, 0, wire::RequestStatus::kOk});
  m.add(1, wire::RequestEvent{2, 50, 60, 150, 5, 5, 0, 0, wire::RequestStatus::kOk});
  m.add(1, wire::RequestEvent{3, 120, 130, 300, 5, 5, 0, 0, wire::RequestStatus::kOk});
  m.finalize();
  ASSERT_EQ(m.tracks().size(), 1u);
  EXPECT_EQ(m.tracks()[0].type, TrackType::kRequests);
  EXPECT_EQ(m.tracks()[0].lanes.size(), 2u);
  SpanRef r = m.find_request_span(1, 3);
  ASSERT_TRUE(r.valid());
  EXPECT_EQ(m.span(r)->start_ns, 120);
  EXPECT_EQ(m.span(r)->end_ns, 300);
  expect_lanes_valid(m);
}

TEST(ViewerTraceModel, StringIdsArePerSource) {
  TraceModel m;
  m.add(1, wire::StringDef{5, "alpha"});
  m.add(2, wire::StringDef{5, "beta"});
  m.add(1, cpu_span(5, 0, 10));
  m.add(2, cpu_span(5, 0, 10));
  m.add(2, cpu_span(7, 20, 30));  // never defined
  m.finalize();
  ASSERT_EQ(m.tracks().size(), 2u);
  for (const Track& t : m.tracks()) {
    const auto& s = t.lanes[0].spans;
    EXPECT_EQ(m.name(s[0].name), t.source == 1 ? "alpha" : "beta");
    if (t.source == 2) {
      EXPECT_EQ(m.name(s[1].name), "#7");
    }
  }
  EXPECT_NE(m.find_name("alpha"), 0u);
  EXPECT_EQ(m.find_name("gamma"), 0u);
}

TEST(ViewerTraceModel, FlowPartnersLinkLaunchAndKernel) {
  TraceModel m;
  m.add(1, wire::StringDef{1, "cudaLaunchKernel"});
  m.add(1, wire::StringDef{2, "gemm"});
  wire::Span launch = cpu_span(1, 100, 110);
  launch.category = wire::SpanCategory::kRuntime;
  launch.correlation_id = 42;
  wire::Span kernel;
  kernel.track_kind = wire::TrackKind::kGpuStream;
  kernel.track_id = 0;
  kernel.stream = 7;
  kernel.name_id = 2;
  kernel.category = wire::SpanCategory::kKernel;
  kernel.start_ns = 130;
  kernel.end_ns = 500;
  kernel.correlation_id = 42;
  m.add(1, launch);
  m.add(1, kernel);
  // Same correlation id from another process must not link.
  m.add(2, wire::StringDef{1, "cudaLaunchKernel"});
  m.add(2, launch);
  m.finalize();
  auto found = m.find_spans("GEMM");
  ASSERT_EQ(found.size(), 1u);
  SpanRef k = found[0];
  SpanRef l = m.flow_partner(k);
  ASSERT_TRUE(l.valid());
  EXPECT_EQ(m.tracks()[l.track].source, 1u);
  EXPECT_EQ(m.span(l)->start_ns, 100);
  EXPECT_EQ(m.flow_partner(l), k);
  EXPECT_EQ(m.find_spans("launch").size(), 2u);
  EXPECT_TRUE(m.find_spans("nothing-like-this").empty());
}

TEST(ViewerTraceModel, IncrementalFinalizeKeepsEverything) {
  TraceModel m;
  m.add(1, wire::StringDef{1, "s"});
  for (int i = 0; i < 100; ++i) m.add(1, cpu_span(1, i * 10, i * 10 + 5));
  m.finalize();
  uint64_t g = m.generation();
  m.finalize();  // nothing new: no rebuild
  EXPECT_EQ(m.generation(), g);
  for (int i = 100; i < 250; ++i) m.add(1, cpu_span(1, i * 10, i * 10 + 5));
  m.add(1, cpu_span(1, 3, 4));  // a late, nested arrival
  m.finalize();
  EXPECT_GT(m.generation(), g);
  EXPECT_EQ(m.span_count(), 251u);
  ASSERT_EQ(m.tracks()[0].lanes.size(), 2u);
  EXPECT_EQ(m.tracks()[0].lanes[0].spans.size(), 250u);
  expect_lanes_valid(m);
}

TEST(ViewerTraceModel, LiveChunksGiveTheSameLanesAsOneLoad) {
  // Feed a trace frame by frame with a finalize after each (as the live view
  // does): only the tail is re-placed each time, and the result must match
  // loading everything at once, flows included.
  SampleOptions o;
  o.target_spans = 20000;
  o.compress = false;
  std::vector<std::vector<uint8_t>> frames;
  generate_sample_trace(
      o, [&](std::span<const uint8_t> f) { frames.emplace_back(f.begin(), f.end()); });
  TraceModel live, whole;
  wire::FrameDecoder dec;
  for (const auto& f : frames) {
    ASSERT_TRUE(dec.open(f).ok());
    wire::Record r;
    size_t n = 0;
    while (dec.next(r)) {
      live.add(dec.header().source_id, r);
      whole.add(dec.header().source_id, r);
      if (++n % 700 == 0) live.finalize();
    }
    live.finalize();
  }
  whole.finalize();
  ASSERT_EQ(live.tracks().size(), whole.tracks().size());
  EXPECT_EQ(live.span_count(), whole.span_count());
  for (size_t t = 0; t < live.tracks().size(); ++t) {
    const Track& a = live.tracks()[t];
    const Track& b = whole.tracks()[t];
    ASSERT_EQ(a.lanes.size(), b.lanes.size()) << a.label;
    for (size_t l = 0; l < a.lanes.size(); ++l) {
      ASSERT_EQ(a.lanes[l].spans.size(), b.lanes[l].spans.size()) << a.label << " lane " << l;
      for (size_t i = 0; i < a.lanes[l].spans.size(); ++i) {
        ASSERT_EQ(a.lanes[l].spans[i].start_ns, b.lanes[l].spans[i].start_ns);
        ASSERT_EQ(a.lanes[l].spans[i].end_ns, b.lanes[l].spans[i].end_ns);
      }
    }
  }
  expect_lanes_valid(live);
  auto k = live.find_spans("moe_grouped_gemm", 50);
  ASSERT_FALSE(k.empty());
  for (SpanRef ref : k) {
    SpanRef launch = live.flow_partner(ref);
    ASSERT_TRUE(launch.valid());
    EXPECT_EQ(live.flow_partner(launch), ref);
  }
}

// A level-of-detail window is built into a span_scratch() (on a worker thread) and swapped in:
// the result is what clear_spans() + the same adds give, request tracks and their records stay,
// new names and tracks come along, flows link, and a scratch of a model that changed since is
// refused.
TEST(ViewerTraceModel, SpansBuiltInAScratchAreAdoptedLikeAddedOnes) {
  auto base = [](TraceModel& m) {
    m.add(1, test::hello(0));
    m.add(1, wire::StringDef{1, "cudaLaunchKernel"});
    m.add(1, wire::StringDef{2, "old"});
    m.add(1, cpu_span(2, 0, 50));
    wire::RequestEvent req;
    req.request_id = 9;
    req.arrival_ns = 10;
    req.finish_ns = 900;
    m.add(1, req);
    m.finalize();
  };
  auto window = [](TraceModel& m) {
    m.add(1, wire::StringDef{3, "gemm"});  // a name the model did not have
    wire::Span launch = cpu_span(1, 100, 110);
    launch.correlation_id = 42;
    wire::Span kernel;
    kernel.track_kind = wire::TrackKind::kGpuStream;  // a track the model did not have
    kernel.stream = 7;
    kernel.name_id = 3;
    kernel.start_ns = 130;
    kernel.end_ns = 500;
    kernel.correlation_id = 42;
    kernel.num_args = 1;
    kernel.args[0] = wire::SpanArg{1, 5};
    m.add(1, launch);
    m.add(1, kernel);
    m.add(1, cpu_span(99, 120, 125, 3));  // a name never defined: shown as "#99"
  };
  TraceModel direct, adopted;
  base(direct);
  base(adopted);
  direct.clear_spans();
  window(direct);
  direct.finalize();

  TraceModel scratch = adopted.span_scratch();
  EXPECT_EQ(scratch.span_count(), 0u);
  EXPECT_TRUE(scratch.requests().empty());
  window(scratch);
  scratch.finalize();
  const uint64_t generation = adopted.generation();
  ASSERT_TRUE(adopted.adopt_spans(scratch));
  EXPECT_GT(adopted.generation(), generation);

  EXPECT_EQ(adopted.span_count(), direct.span_count());
  EXPECT_EQ(adopted.tracks().size(), direct.tracks().size());
  EXPECT_EQ(adopted.track_order().size(), adopted.tracks().size());
  EXPECT_EQ(adopted.requests().size(), 1u);
  EXPECT_TRUE(adopted.find_spans("old").empty());
  auto kernels = adopted.find_spans("GEMM");
  ASSERT_EQ(kernels.size(), 1u);
  const SpanRec* k = adopted.span(kernels[0]);
  ASSERT_EQ(k->num_args, 1);
  EXPECT_EQ(adopted.name(adopted.args()[k->args].key_id), "cudaLaunchKernel");
  EXPECT_EQ(adopted.args()[k->args].value, 5);
  SpanRef l = adopted.flow_partner(kernels[0]);
  ASSERT_TRUE(l.valid());
  EXPECT_EQ(adopted.span(l)->start_ns, 100);
  EXPECT_TRUE(adopted.find_request_span(1, 9).valid());
  for (const TraceModel* m : {&direct, &adopted}) EXPECT_EQ(m->find_spans("#").size(), 1u);

  // A scratch is only valid for the model as it was: not after it changed, not twice.
  TraceModel stale = adopted.span_scratch();
  adopted.intern("something new");
  EXPECT_FALSE(adopted.adopt_spans(stale));
  EXPECT_FALSE(adopted.adopt_spans(scratch));
  TraceModel other;
  TraceModel foreign = other.span_scratch();
  EXPECT_FALSE(adopted.adopt_spans(foreign));
  EXPECT_EQ(adopted.span_count(), direct.span_count());
}

TEST(ViewerTraceModel, SpanCapIsEnforcedAndCounted) {
  ModelLimits limits;
  limits.max_spans = 10;
  TraceModel m(limits);
  for (int i = 0; i < 25; ++i) m.add(1, cpu_span(0, i, i + 1));
  m.finalize();
  EXPECT_EQ(m.span_count(), 10u);
  EXPECT_EQ(m.dropped_spans(), 15u);
}

TEST(ViewerTraceModel, SampleTraceHasTheExpectedShape) {
  SampleOptions o;
  o.ranks = 3;
  o.target_spans = 20000;
  SampleSummary sum;
  TraceModel m;
  LoadResult r = load_trace_bytes(sample_trace_bytes(o, &sum), m);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.warnings.empty());
  // Every generated span, plus one synthetic span per request and per stage timing.
  EXPECT_EQ(m.span_count(), sum.spans + sum.requests + sum.stages);
  // Per rank: the scheduler thread, two GPU streams, requests, stages.
  EXPECT_EQ(m.tracks().size(), 3u * 5u);
  EXPECT_EQ(m.alerts().size(), 3u);
  EXPECT_EQ(m.expert_loads().size(), sum.expert_loads);
  int with_hello = 0;
  for (const auto& [id, s] : m.sources()) with_hello += s.has_hello;
  EXPECT_EQ(with_hello, 3);
  expect_lanes_valid(m);
  // Every kernel has its launch.
  size_t kernels = 0, linked = 0;
  for (uint32_t ti = 0; ti < m.tracks().size(); ++ti) {
    const Track& t = m.tracks()[ti];
    if (t.type != TrackType::kGpuStream) continue;
    for (uint32_t li = 0; li < t.lanes.size(); ++li)
      for (uint32_t i = 0; i < t.lanes[li].spans.size(); ++i) {
        if (t.lanes[li].spans[i].correlation_id == 0) continue;
        ++kernels;
        linked += m.flow_partner({ti, li, i}).valid();
      }
  }
  EXPECT_EQ(kernels, sum.kernels);
  EXPECT_EQ(linked, kernels);
}

}  // namespace
}  // namespace inferscope::viewer
