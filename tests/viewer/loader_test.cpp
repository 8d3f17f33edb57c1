// Loading: trace files, damaged files, segment directories, Chrome JSON.
#include "inferscope/viewer/loader.hpp"

#include <gtest/gtest.h>

#include <fstream>

#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/wire/trace_file.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

SampleOptions small() {
  SampleOptions o;
  o.target_spans = 30000;
  o.compress = false;  // more, smaller frames: damage hits fewer records
  return o;
}

TEST(ViewerLoader, WholeFileFromDisk) {
  test::TempDir dir;
  SampleSummary sum;
  std::string err;
  ASSERT_TRUE(write_sample_trace(dir.file("a.trace"), small(), &sum, &err)) << err;
  TraceModel m;
  LoadResult r = load_path(dir.file("a.trace"), m);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.frames, sum.frames);
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(m.span_count(), sum.spans + sum.requests + sum.stages);
  EXPECT_NE(r.summary().find("loaded"), std::string::npos);
}

TEST(ViewerLoader, TruncatedFileKeepsEveryCompleteFrame) {
  SampleSummary sum;
  std::vector<uint8_t> full = sample_trace_bytes(small(), &sum);
  TraceModel whole;
  LoadResult rw = load_trace_bytes(full, whole);
  ASSERT_GT(rw.frames, 3u);
  // Cut inside the last third of the file.
  std::vector<uint8_t> cut(full.begin(),
                           full.begin() + static_cast<long>(full.size() * 2 / 3 + 13));
  TraceModel m;
  LoadResult r = load_trace_bytes(cut, m);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_GT(r.frames, 0u);
  EXPECT_LT(r.frames, rw.frames);
  ASSERT_FALSE(r.warnings.empty());
  EXPECT_NE(r.warnings[0].find("ends inside a frame"), std::string::npos) << r.warnings[0];
  EXPECT_GT(m.span_count(), 0u);
  EXPECT_LT(m.span_count(), whole.span_count());
  // What was recovered is a prefix of the whole: every recovered frame complete.
  EXPECT_EQ(r.bad_frames, 0u);
}

TEST(ViewerLoader, CorruptFrameInTheMiddleIsSkipped) {
  std::vector<uint8_t> bytes = sample_trace_bytes(small());
  TraceModel whole;
  LoadResult rw = load_trace_bytes(bytes, whole);
  bytes[bytes.size() / 2] ^= 0x5A;  // breaks one frame's CRC
  TraceModel m;
  LoadResult r = load_trace_bytes(bytes, m);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.frames + 1, rw.frames);
  EXPECT_FALSE(r.warnings.empty());
  EXPECT_LT(m.record_count(), whole.record_count());
  EXPECT_GT(m.record_count(), whole.record_count() / 2);
}

TEST(ViewerLoader, GarbageIsAClearError) {
  test::TempDir dir;
  write_bytes(dir.file("junk.bin"), std::vector<uint8_t>(1000, 0xAB));
  TraceModel m;
  LoadResult r = load_path(dir.file("junk.bin"), m);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("not an inferscope trace"), std::string::npos) << r.error;
  LoadResult missing = load_path(dir.file("nope.trace"), m);
  EXPECT_FALSE(missing.ok);
  EXPECT_NE(missing.error.find("no such file"), std::string::npos);
  write_bytes(dir.file("bad.json"), {'{', '"', 'x'});
  LoadResult bad_json = load_path(dir.file("bad.json"), m);
  EXPECT_FALSE(bad_json.ok);
  EXPECT_NE(bad_json.error.find("JSON"), std::string::npos) << bad_json.error;
  EXPECT_TRUE(m.empty());
}

TEST(ViewerLoader, DirectoryOfSegmentsEachWithHellos) {
  test::TempDir dir;
  // Two segments as the collector writes them: each re-emits Hello + strings.
  SampleOptions a = small(), b = small();
  b.t0_ns = a.t0_ns + static_cast<int64_t>(a.seconds * 1e9);
  b.seed = 2;
  SampleSummary sa, sb;
  std::string err;
  ASSERT_TRUE(write_sample_trace(dir.file("segment-000001.trace"), a, &sa, &err)) << err;
  ASSERT_TRUE(write_sample_trace(dir.file("segment-000002.trace"), b, &sb, &err)) << err;
  write_bytes(dir.file("README.txt"), {'h', 'i'});  // not a trace: ignored
  TraceModel m;
  LoadResult r = load_path(dir.path.string(), m);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.files, 2u);
  EXPECT_EQ(m.span_count(),
            sa.spans + sa.requests + sa.stages + sb.spans + sb.requests + sb.stages);
  EXPECT_EQ(m.tracks().size(), 10u);  // same sources, same tracks
  EXPECT_EQ(m.max_ns() - m.min_ns() > static_cast<int64_t>(1.5 * a.seconds * 1e9), true);
}

TEST(ViewerLoader, ChromeJsonImport) {
  // The shapes inferscope-export writes: pid = source, GPU tids 1000000 + device * 1000 + stream,
  // s/f flows, b/e requests and stages, memory counters, alert events on pid 0.
  const char* json = R"({"traceEvents":[
    {"ph":"M","name":"process_name","pid":1,"args":{"name":"rank 0 engine"}},
    {"ph":"M","name":"process_sort_index","pid":1,"args":{"sort_index":3}},
    {"ph":"X","name":"forward","cat":"cpu_range","pid":1,"tid":17,"ts":10.0,"dur":100.5,"args":{"step":3}},
    {"ph":"X","name":"cudaLaunchKernel","cat":"runtime","pid":1,"tid":17,"ts":20.0,"dur":2.0},
    {"ph":"X","name":"gemm","cat":"kernel","pid":1,"tid":1000007,"ts":25.0,"dur":40.0,"args":{"request_id":9}},
    {"ph":"s","id":77,"pid":1,"tid":17,"ts":21.0,"name":"launch","cat":"flow"},
    {"ph":"f","id":77,"pid":1,"tid":1000007,"ts":25.0,"name":"launch","cat":"flow","bp":"e"},
    {"ph":"X","name":"forward","pid":2,"tid":5,"ts":0,"dur":1},
    {"ph":"b","cat":"request","name":"request","id":9,"pid":1,"tid":0,"ts":5.0,
     "args":{"request_id":9,"prompt_tokens":100,"output_tokens":11,"image_tokens":576,"cached_tokens":40,"status":0,"ttft_ms":0.02}},
    {"ph":"b","cat":"stage","name":"encoder","id":9,"pid":1,"tid":0,"ts":6.0,"args":{"device":"gpu","gpu_ms":0.001}},
    {"ph":"e","cat":"stage","name":"encoder","id":9,"pid":1,"tid":0,"ts":9.0},
    {"ph":"e","cat":"request","name":"request","id":9,"pid":1,"tid":0,"ts":125.0},
    {"ph":"C","name":"memory kv_cache","pid":1,"ts":30.0,"args":{"used_bytes":1000,"capacity_bytes":4000}},
    {"ph":"M","name":"process_name","pid":0,"args":{"name":"inferscope-collector alerts"}},
    {"ph":"X","name":"hot_expert layer 3 expert 5","cat":"alert","pid":0,"tid":0,"ts":40.0,"dur":50.0,
     "args":{"model":"m","rank":3,"layer":3,"expert":5,"peak_share":0.3,"peak_utilization":4.8}},
    {"ph":"i","s":"p","name":"cold_expert layer 3 expert 9 opened","cat":"alert","pid":0,"tid":2,"ts":60.0,
     "args":{"model":"m","rank":3,"layer":3,"expert":9,"peak_share":0.01,"peak_utilization":0.2}},
    {"ph":"B","name":"unsupported"}
  ],"displayTimeUnit":"ns"})";
  TraceModel m;
  LoadResult r = load_chrome_json_text(json, m);
  ASSERT_TRUE(r.ok) << r.error;
  // 4 X spans + the synthetic request and stage spans.
  EXPECT_EQ(m.span_count(), 6u);
  EXPECT_EQ(m.tracks().size(), 5u);
  auto gemm = m.find_spans("gemm");
  ASSERT_EQ(gemm.size(), 1u);
  const Track& gt = m.tracks()[gemm[0].track];
  EXPECT_EQ(gt.type, TrackType::kGpuStream);
  EXPECT_EQ(gt.thread_or_device, 0u);
  EXPECT_EQ(gt.stream, 7u);
  const SpanRec* g = m.span(gemm[0]);
  EXPECT_EQ(g->start_ns, 25000);
  EXPECT_EQ(g->end_ns, 65000);
  EXPECT_EQ(g->category, wire::SpanCategory::kKernel);
  EXPECT_EQ(g->request_id, 9u);
  SpanRef launch = m.flow_partner(gemm[0]);
  ASSERT_TRUE(launch.valid());
  EXPECT_EQ(m.name(m.span(launch)->name), "cudaLaunchKernel");
  auto fwd = m.find_spans("forward");
  ASSERT_EQ(fwd.size(), 2u);
  const SpanRec* f = m.span(fwd[1]);  // in time order: pid 2's starts at 0
  EXPECT_EQ(f->end_ns - f->start_ns, 100500);
  ASSERT_EQ(f->num_args, 1u);
  EXPECT_EQ(m.name(m.args()[f->args].key_id), "step");
  EXPECT_EQ(m.args()[f->args].value, 3);
  const Source* src = m.source(1);
  ASSERT_NE(src, nullptr);
  EXPECT_NE(src->label.find("rank 0 engine"), std::string::npos);
  EXPECT_EQ(m.rank_of(1), 3u);
  // Requests and stages feed the stage view.
  ASSERT_EQ(m.requests().size(), 1u);
  const wire::RequestEvent& q = m.requests()[0].request;
  EXPECT_EQ(q.arrival_ns, 5000);
  EXPECT_EQ(q.finish_ns, 125000);
  EXPECT_EQ(q.first_token_ns, 25000);
  EXPECT_EQ(q.image_tokens, 576u);
  ASSERT_EQ(m.stages().size(), 1u);
  EXPECT_EQ(m.stages()[0].stage.stage, wire::Stage::kEncoder);
  EXPECT_EQ(m.stages()[0].stage.end_ns - m.stages()[0].stage.start_ns, 3000);
  EXPECT_EQ(m.stages()[0].stage.device, wire::Device::kGpu);
  ASSERT_EQ(m.memory().size(), 1u);
  EXPECT_EQ(m.memory()[0].sample.capacity_bytes, 4000u);
  EXPECT_EQ(m.memory()[0].sample.rank, 3u);
  ASSERT_EQ(m.alerts().size(), 2u);
  EXPECT_EQ(m.alerts()[0].alert.kind, wire::AlertKind::kHotExpert);
  EXPECT_EQ(m.alerts()[0].alert.expert, 5u);
  EXPECT_EQ(m.alerts()[0].alert.end_ns, 90000);
  EXPECT_EQ(m.alerts()[1].alert.kind, wire::AlertKind::kColdExpert);
  EXPECT_EQ(m.alerts()[1].alert.end_ns, 0);
  EXPECT_FALSE(r.warnings.empty());  // the "B" event was skipped and said so
}

TEST(ViewerLoader, ChromeJsonWithoutEventsIsAnError) {
  TraceModel m;
  EXPECT_FALSE(load_chrome_json_text(R"({"foo":1})", m).ok);
  EXPECT_FALSE(load_chrome_json_text("not json", m).ok);
  EXPECT_TRUE(load_chrome_json_text("[]", m).ok);
}

}  // namespace
}  // namespace inferscope::viewer
