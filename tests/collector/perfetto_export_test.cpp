// Perfetto export: the file decodes with the .proto (libprotobuf and protoc
// --decode) and its tracks, nesting, flows, counters and interning match the
// records that were stored.
#include "inferscope/collector/perfetto_export.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "inferscope/collector/trace_store.hpp"
#include "perfetto_decoded.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
using inferscope::testing::decode_perfetto;
using inferscope::testing::DecodedTrace;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

wire::Span span(wire::TrackKind kind, uint32_t track, uint32_t stream, uint32_t name,
                wire::SpanCategory cat, int64_t start, int64_t end, uint16_t depth = 0,
                uint64_t corr = 0) {
  wire::Span s;
  s.track_kind = kind;
  s.track_id = track;
  s.stream = stream;
  s.name_id = name;
  s.category = cat;
  s.depth = depth;
  s.start_ns = start;
  s.end_ns = end;
  s.correlation_id = corr;
  return s;
}

// Writes frames into a store in dir, sealing a block after each (so the time
// index has one block per frame).
void store_frames(const fs::path& dir, const std::vector<std::vector<uint8_t>>& frames) {
  TraceStoreOptions o;
  o.dir = dir.string();
  o.background = false;
  TraceStore store(o, nullptr, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  for (const auto& f : frames) {
    store.write(f, 0);
    store.flush();
  }
}

ExportNode node(const fs::path& dir, const std::string& label) {
  std::string error;
  auto files = trace_inputs(dir.string(), error);
  EXPECT_FALSE(files.empty()) << error;
  return {label, files};
}

std::string export_to_string(const std::vector<ExportNode>& nodes, const ExportOptions& o,
                             ExportStats& stats) {
  std::ostringstream out;
  std::string error;
  EXPECT_TRUE(export_perfetto_trace(nodes, out, o, stats, error)) << error;
  return out.str();
}

wire::Hello hello(uint32_t rank, const std::string& host, int64_t realtime_offset) {
  auto h = make_hello("demo", rank, 4, 4);
  h.instance = host + ":" + std::to_string(100 + rank);
  h.host = host;
  h.clock.realtime_minus_monotonic_ns = realtime_offset;
  return h;
}

// One rank's worth of everything the exporter draws.
std::vector<std::vector<uint8_t>> rich_node(uint32_t source, const wire::Hello& h) {
  wire::Span outer = span(wire::TrackKind::kCpuThread, 17, 0, 5, wire::SpanCategory::kCpuRange,
                          900'000, 1'100'000);
  wire::Span launch = span(wire::TrackKind::kCpuThread, 17, 0, 1, wire::SpanCategory::kRuntime,
                           1'000'000, 1'010'000, 1, 77);
  launch.request_id = 9;
  wire::Span kernel = span(wire::TrackKind::kGpuStream, 0, 7, 2, wire::SpanCategory::kKernel,
                           1'050'000, 1'550'000, 0, 77);
  kernel.num_args = 2;
  kernel.args[0] = {3, 4};   // range = layer.0.attention+moe
  kernel.args[1] = {6, 42};  // tokens = 42
  wire::RequestEvent req{
      9, 2'000'000, 2'600'000, 5'000'000, 100, 20, 0, 64, wire::RequestStatus::kOk};
  wire::StageTiming prefill{
      9, wire::Stage::kBackbonePrefill, wire::Device::kGpu, 2'100'000, 2'500'000, 300'000};
  wire::StageTiming decode{
      9, wire::Stage::kBackboneDecode, wire::Device::kGpu, 2'500'000, 4'900'000, 0};
  wire::ExpertLoad load;
  load.layer = 2;
  load.timestamp_ns = 3'000'000;
  load.routed = {10, 0, 30, 0};  // max / mean = 30 / 10 = 3
  wire::PrefixCacheSample pc{3'100'000, 400, 100, 0, 0};
  wire::CounterSample c1{3'200'000, 8, false, 5.0};
  wire::CounterSample c2{3'300'000, 8, false, 2.0};  // deltas: the track shows 7
  return {
      frame_from(source, {h, wire::StringDef{1, "cudaLaunchKernel"}, wire::StringDef{2, "moe_gemm"},
                          wire::StringDef{3, "range"}, wire::StringDef{4, "layer.0.attention+moe"},
                          wire::StringDef{5, "forward"}, wire::StringDef{6, "tokens"},
                          wire::StringDef{8, "scheduler.preemptions"}}),
      // The child is recorded before its parent (it closes first), as agents do.
      frame_from(source,
                 {launch, outer, kernel,
                  wire::MemorySample{1'200'000, 3, wire::MemoryKind::kKvCache, 512, 1024},
                  wire::MemorySample{1'300'000, 3, wire::MemoryKind::kSsmState, 256, 1024}}),
      frame_from(source, {decode, prefill, req, load, pc, c1, c2}),
  };
}

const inferscope::testing::DecodedSlice* only(const DecodedTrace& d, const std::string& name) {
  auto v = d.slices_named(name);
  EXPECT_EQ(v.size(), 1u) << name;
  return v.empty() ? nullptr : v[0];
}

}  // namespace

TEST(PerfettoExport, TracksNestingFlowsCountersAndInterningMatchTheRecords) {
  TempDir dir("inferscope-pf-rich");
  auto frames = rich_node(1, hello(3, "hostA", 1'000'000'000));
  wire::AlertEpisode closed{
      wire::AlertKind::kHotExpert, 3, 0, 2, 1'000'000, 4'000'000, 0.5f, 2.0f, "demo"};
  wire::AlertEpisode open{wire::AlertKind::kDropBurst, 3, 1, 0, 4'500'000, 0, 0.1f, 0.0f, "demo"};
  frames.push_back(frame_from(0, {closed, open}));
  store_frames(dir.path, frames);

  ExportStats stats;
  const DecodedTrace d = decode_perfetto(export_to_string({node(dir.path, "node-a")}, {}, stats));
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  EXPECT_GE(d.clears, 2u);  // every sequence (the rank's, the alerts') starts cleared

  // One process track for the rank, labelled with rank, instance and node.
  const auto* proc = d.track_named("demo rank 3 (hostA:103) @ node-a");
  ASSERT_NE(proc, nullptr);
  const auto* thread = d.track_named("thread 17");
  const auto* stream = d.track_named("GPU 0 stream 7");
  ASSERT_NE(thread, nullptr);
  ASSERT_NE(stream, nullptr);
  EXPECT_EQ(thread->parent_uuid(), proc->uuid());
  EXPECT_EQ(stream->parent_uuid(), proc->uuid());

  // CPU spans nest on the thread track (the child was stored first).
  const auto* outer = only(d, "forward");
  const auto* launch = only(d, "cudaLaunchKernel");
  const auto* kernel = only(d, "moe_gemm");
  ASSERT_TRUE(outer && launch && kernel);
  EXPECT_EQ(launch->track, thread->uuid());
  EXPECT_EQ(launch->depth, 1);
  EXPECT_EQ(&d.slices[launch->parent], outer);
  EXPECT_EQ(launch->start, 1'000'000);
  EXPECT_EQ(launch->end, 1'010'000);
  EXPECT_EQ(launch->category, "runtime");
  EXPECT_EQ(launch->args.at("request_id"), "9");
  // The kernel sits on its stream track, with the flow from its launch.
  EXPECT_EQ(kernel->track, stream->uuid());
  EXPECT_EQ(kernel->start, 1'050'000);
  EXPECT_EQ(kernel->end, 1'550'000);
  EXPECT_EQ(kernel->category, "kernel");
  EXPECT_EQ(kernel->args.at("range"), "layer.0.attention+moe");
  EXPECT_EQ(kernel->args.at("tokens"), "42");
  EXPECT_EQ(kernel->args.at("correlation_id"), "77");
  ASSERT_EQ(launch->flows_out.size(), 1u);
  ASSERT_EQ(kernel->flows_in.size(), 1u);
  EXPECT_EQ(launch->flows_out[0], kernel->flows_in[0]);

  // Request and stages: prefill and decode told apart by name and category,
  // nested in their request on one track.
  const auto* request = only(d, "request");
  const auto* prefill = only(d, "backbone_prefill");
  const auto* decode = only(d, "backbone_decode");
  ASSERT_TRUE(request && prefill && decode);
  EXPECT_EQ(request->start, 2'000'000);
  EXPECT_EQ(request->end, 5'000'000);
  EXPECT_EQ(request->args.at("cached_tokens"), "64");
  EXPECT_EQ(prefill->category, "prefill");
  EXPECT_EQ(decode->category, "decode");
  EXPECT_EQ(prefill->track, request->track);
  EXPECT_EQ(&d.slices[prefill->parent], request);
  EXPECT_EQ(&d.slices[decode->parent],
            request);  // adjacent stages: the decode is not nested in prefill
  EXPECT_EQ(d.tracks.at(request->track).name(), "requests");
  EXPECT_EQ(d.tracks.at(request->track).parent_uuid(), proc->uuid());
  bool first_token = false;
  for (const auto& i : d.instants) first_token |= i.name == "first token" && i.ts == 2'600'000;
  EXPECT_TRUE(first_token);

  // Counters.
  auto counter = [&](const std::string& track_name) -> std::vector<double> {
    std::vector<double> v;
    const auto* t = d.track_named(track_name);
    if (!t) return v;
    EXPECT_EQ(t->parent_uuid(), proc->uuid()) << track_name;
    for (const auto& c : d.counters)
      if (c.track == t->uuid()) v.push_back(c.value);
    return v;
  };
  EXPECT_EQ(counter("kv_cache used"), std::vector<double>{512});
  EXPECT_EQ(counter("ssm_state used"), std::vector<double>{256});
  EXPECT_EQ(d.track_named("kv_cache used")->counter().unit(),
            ::perfetto::protos::CounterDescriptor::UNIT_SIZE_BYTES);
  EXPECT_EQ(counter("prefix cache hit rate (attention)"), std::vector<double>{0.25});
  EXPECT_EQ(counter("layer 2 imbalance (max/mean)"), std::vector<double>{3.0});
  EXPECT_EQ(counter("scheduler.preemptions"), (std::vector<double>{5.0, 7.0}));

  // Alerts: instants on the node's alert track, the closed episode as a slice.
  const auto* alerts = d.track_named("inferscope alerts @ node-a");
  ASSERT_NE(alerts, nullptr);
  std::map<std::string, int64_t> instants;
  for (const auto& i : d.instants)
    if (i.track == alerts->uuid()) instants[i.name] = i.ts;
  EXPECT_EQ(instants.at("hot_expert rank 3 layer 0 expert 2 closed"), 4'000'000);
  EXPECT_EQ(instants.at("drop_burst rank 3 layer 1 opened"), 4'500'000);
  const auto* episode = only(d, "hot_expert");
  ASSERT_NE(episode, nullptr);
  EXPECT_EQ(episode->start, 1'000'000);
  EXPECT_EQ(episode->end, 4'000'000);
  EXPECT_EQ(episode->args.at("episode"), "hot_expert-r3-l0-e2-1000000");
  EXPECT_EQ(d.tracks.at(episode->track).parent_uuid(), alerts->uuid());

  // The clock snapshot maps the trace clock to REALTIME by the hello's offset.
  bool snapshot = false;
  for (const auto& p : d.trace.packet())
    if (p.has_clock_snapshot()) {
      ASSERT_EQ(p.clock_snapshot().clocks_size(), 2);
      EXPECT_EQ(p.clock_snapshot().clocks(1).timestamp() - p.clock_snapshot().clocks(0).timestamp(),
                1'000'000'000u);
      snapshot = true;
    }
  EXPECT_TRUE(snapshot);
  EXPECT_EQ(stats.damage.size(), 0u);
}

TEST(PerfettoExport, ProtocDecodesTheFileWithTheProto) {
  TempDir dir("inferscope-pf-protoc");
  store_frames(dir.path, rich_node(1, hello(0, "hostA", 0)));
  ExportStats stats;
  const std::string bytes = export_to_string({node(dir.path, "n")}, {}, stats);
  const fs::path file = dir.path / "out.perfetto-trace";
  {
    std::ofstream f(file, std::ios::binary);
    f << bytes;
  }
  const std::string cmd = std::string(PROTOC_BIN) + " --proto_path=" + PERFETTO_PROTO_DIR +
                          " --decode=perfetto.protos.Trace perfetto_trace.proto < " +
                          file.string() + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  EXPECT_EQ(::pclose(p), 0) << text.substr(0, 2000);
  EXPECT_NE(text.find("track_event {"), std::string::npos);
  EXPECT_NE(text.find("name: \"moe_gemm\""), std::string::npos);  // an interned name entry
  EXPECT_NE(text.find("terminating_flow_ids:"), std::string::npos);
  EXPECT_EQ(text.find("\n1: "), std::string::npos) << "fields unknown to the .proto";
}

TEST(PerfettoExport, SeveralNodesBecomeOneTraceOnTheEarliestBootedHostsClock) {
  TempDir a("inferscope-pf-node-a"), b("inferscope-pf-node-b");
  // Node b's host: realtime - monotonic is 2 ms smaller (it booted 2 ms earlier),
  // so its clock is the trace's and node a's monotonic time t is b's t + 2 ms.
  store_frames(a.path, rich_node(1, hello(0, "hostA", 5'000'000'000)));
  store_frames(b.path, rich_node(1, hello(1, "hostB", 4'998'000'000)));
  ExportStats stats;
  const DecodedTrace d =
      decode_perfetto(export_to_string({node(a.path, "a"), node(b.path, "b")}, {}, stats));
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  const auto* pa = d.track_named("demo rank 0 (hostA:100) @ a");
  const auto* pb = d.track_named("demo rank 1 (hostB:101) @ b");
  ASSERT_TRUE(pa && pb);
  EXPECT_NE(pa->uuid(), pb->uuid());
  EXPECT_NE(pa->process().pid(), pb->process().pid());
  auto kernels = d.slices_named("moe_gemm");
  ASSERT_EQ(kernels.size(), 2u);
  std::map<uint64_t, int64_t> start_by_process;
  for (const auto* k : kernels) start_by_process[d.tracks.at(k->track).parent_uuid()] = k->start;
  EXPECT_EQ(start_by_process.at(pa->uuid()), 1'050'000 + 2'000'000);
  EXPECT_EQ(start_by_process.at(pb->uuid()), 1'050'000);
  // The clock snapshot maps the trace's clock (b's) to REALTIME.
  for (const auto& p : d.trace.packet()) {
    if (p.has_clock_snapshot()) {
      EXPECT_EQ(p.clock_snapshot().clocks(1).timestamp() - p.clock_snapshot().clocks(0).timestamp(),
                4'998'000'000u);
    }
  }
  // Same source id and correlation id on both nodes: the flows stay apart.
  EXPECT_NE(kernels[0]->flows_in.at(0), kernels[1]->flows_in.at(0));
}

TEST(PerfettoExport, WindowReadsOnlyTheBlocksItNeeds) {
  TempDir dir("inferscope-pf-window");
  auto h = hello(0, "hostA", 0);
  std::vector<std::vector<uint8_t>> frames = {frame_from(1, {h, wire::StringDef{1, "step"}})};
  for (int i = 0; i < 10; ++i)  // one block per 1 ms step
    frames.push_back(
        frame_from(1, {span(wire::TrackKind::kCpuThread, 1, 0, 1, wire::SpanCategory::kCpuRange,
                            i * 1'000'000, i * 1'000'000 + 500'000)}));
  store_frames(dir.path, frames);
  ExportOptions o;
  o.start_ns = 4'600'000;
  o.end_ns = 6'100'000;
  ExportStats stats;
  const DecodedTrace d = decode_perfetto(export_to_string({node(dir.path, "n")}, o, stats));
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  std::vector<int64_t> starts;
  for (const auto& s : d.slices) starts.push_back(s.start);
  EXPECT_EQ(starts, (std::vector<int64_t>{5'000'000, 6'000'000}));
  // The definitions block and the two steps' blocks; the other 8 were skipped
  // by the index.
  EXPECT_EQ(stats.blocks_read, 3u);
  EXPECT_GE(stats.blocks_skipped, 8u);
}

TEST(PerfettoExport, EpisodeIsFoundByIdThroughTheIndex) {
  TempDir dir("inferscope-pf-episode");
  auto frames = rich_node(1, hello(3, "hostA", 0));
  wire::AlertEpisode opened{wire::AlertKind::kHotExpert, 3, 0, 2, 1'000'000, 0, 0.5f, 2.0f, "demo"};
  wire::AlertEpisode closed = opened;
  closed.end_ns = 4'000'000;
  frames.push_back(frame_from(0, {opened}));
  frames.push_back(frame_from(0, {closed}));
  store_frames(dir.path, frames);
  std::vector<ExportNode> nodes{node(dir.path, "n")};
  FoundEpisode found;
  std::string error;
  ASSERT_TRUE(find_episode(nodes, "hot_expert-r3-l0-e2-1000000", found, error)) << error;
  EXPECT_EQ(found.episode.end_ns, 4'000'000);  // the closing record
  EXPECT_FALSE(find_episode(nodes, "hot_expert-r3-l0-e2-999", found, error));
  EXPECT_NE(error.find("no stored alert episode"), std::string::npos);
  EXPECT_FALSE(find_episode(nodes, "garbage", found, error));
  EXPECT_NE(error.find("is not"), std::string::npos);
  std::vector<FoundEpisode> all;
  ASSERT_TRUE(list_episodes(nodes, all, error)) << error;
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(episode_id(all[0].episode), "hot_expert-r3-l0-e2-1000000");
}

TEST(PerfettoExport, InterningStaysBoundedAndRestartsTheSequence) {
  TempDir dir("inferscope-pf-intern");
  std::vector<std::vector<uint8_t>> frames = {frame_from(1, {hello(0, "hostA", 0)})};
  // More distinct span names than one interning table holds, 5000 per frame.
  const uint32_t total = static_cast<uint32_t>(perfetto_interning_cap() + 10'000);
  for (uint32_t base = 0; base < total; base += 5000) {
    std::vector<wire::Record> recs;
    for (uint32_t i = base; i < std::min(base + 5000, total); ++i) {
      recs.push_back(wire::StringDef{i + 1, "span" + std::to_string(i)});
      recs.push_back(span(wire::TrackKind::kCpuThread, 1, 0, i + 1, wire::SpanCategory::kCpuRange,
                          int64_t(i) * 10, int64_t(i) * 10 + 5));
    }
    frames.push_back(frame_from(1, recs));
  }
  // After the restart, the fixed strings (request, correlation_id, ...) must be
  // interned again in the new incremental state. (Same instance: the hello is a
  // repeat; the string ids 1..8 are redefined for what follows.)
  for (auto& f : rich_node(1, hello(0, "hostA", 0))) frames.push_back(f);
  store_frames(dir.path, frames);
  ExportStats stats;
  const DecodedTrace d = decode_perfetto(export_to_string({node(dir.path, "n")}, {}, stats));
  for (size_t i = 0; i < std::min<size_t>(d.problems.size(), 5); ++i)
    ADD_FAILURE() << d.problems[i];
  EXPECT_GE(d.clears, 2u);  // the start, and at least one restart of the incremental state
  std::vector<const inferscope::testing::DecodedSlice*> numbered;
  for (const auto& sl : d.slices)
    if (sl.name.rfind("span", 0) == 0) numbered.push_back(&sl);
  ASSERT_EQ(numbered.size(), total);
  for (uint32_t i = 0; i < total; i += 997)
    EXPECT_EQ(numbered[i]->name, "span" + std::to_string(i));
  ASSERT_EQ(d.slices_named("request").size(), 1u);
  EXPECT_EQ(d.slices_named("request")[0]->args.at("request_id"), "9");
  ASSERT_EQ(d.slices_named("moe_gemm").size(), 1u);
  EXPECT_EQ(d.slices_named("moe_gemm")[0]->args.at("correlation_id"), "77");
}
