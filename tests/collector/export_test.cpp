// Chrome Trace Event export: the JSON parses back and holds what was recorded.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inferscope/collector/chrome_export.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

wire::Span span(wire::TrackKind kind, uint32_t track, uint32_t stream, uint32_t name,
                wire::SpanCategory cat, int64_t start, int64_t end, uint64_t corr = 0) {
  wire::Span s;
  s.track_kind = kind;
  s.track_id = track;
  s.stream = stream;
  s.name_id = name;
  s.category = cat;
  s.start_ns = start;
  s.end_ns = end;
  s.correlation_id = corr;
  return s;
}

}  // namespace

TEST(ChromeExport, SpansFlowsCountersAndAlertsRoundTrip) {
  const fs::path dir =
      fs::temp_directory_path() / ("inferscope-export-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    TraceStoreOptions o;
    o.dir = dir.string();
    TraceStore store(o, nullptr, nullptr);
    std::string error;
    ASSERT_TRUE(store.open(error)) << error;
    auto hello = make_hello("demo", 3, 1, 4);
    hello.instance = "host:42";
    wire::Span launch = span(wire::TrackKind::kCpuThread, 17, 0, 1, wire::SpanCategory::kRuntime,
                             1'000'000, 1'010'000, 77);
    wire::Span kernel = span(wire::TrackKind::kGpuStream, 0, 7, 2, wire::SpanCategory::kKernel,
                             1'050'000, 1'550'000, 77);
    kernel.num_args = 1;
    kernel.args[0] = {3, 4};  // range = layer.0.attention+moe
    wire::StageTiming st{9, wire::Stage::kConnector, wire::Device::kCpu, 2'000'000, 3'000'000, 0};
    wire::AlertEpisode closed{
        wire::AlertKind::kHotExpert, 3, 0, 2, 0, 4'000'000, 0.5f, 2.0f, "demo"};
    store.write(frame_from(1, {hello, wire::StringDef{1, "cudaLaunchKernel"},
                               wire::StringDef{2, "moe_gemm"}, wire::StringDef{3, "range"},
                               wire::StringDef{4, "layer.0.attention+moe"}}),
                0);
    store.write(
        frame_from(1, {launch, kernel, st,
                       wire::MemorySample{1'200'000, 3, wire::MemoryKind::kKvCache, 512, 1024}}),
        0);
    store.write(frame_from(0, {closed}), 0);
  }
  std::string error;
  auto files = trace_inputs(dir.string(), error);
  ASSERT_EQ(files.size(), 1u) << error;
  std::ostringstream out;
  ExportStats stats;
  ASSERT_TRUE(export_chrome_trace(files, out, {}, stats, error)) << error;
  const auto j = nlohmann::json::parse(out.str());  // throws (fails the test) if invalid
  EXPECT_EQ(j["displayTimeUnit"], "ns");
  const auto& ev = j["traceEvents"];
  auto find = [&](const std::string& ph, const std::string& name) -> const nlohmann::json* {
    for (const auto& e : ev)
      if (e["ph"] == ph && (name.empty() || e.value("name", "") == name)) return &e;
    return nullptr;
  };
  const auto* k = find("X", "moe_gemm");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ((*k)["pid"], 1);
  EXPECT_EQ((*k)["tid"], 1000000 + 0 * 1000 + 7);
  EXPECT_DOUBLE_EQ((*k)["ts"].get<double>(), 1050.0);
  EXPECT_DOUBLE_EQ((*k)["dur"].get<double>(), 500.0);
  EXPECT_EQ((*k)["cat"], "kernel");
  EXPECT_EQ((*k)["args"]["range"], "layer.0.attention+moe");
  const auto* l = find("X", "cudaLaunchKernel");
  ASSERT_NE(l, nullptr);
  EXPECT_EQ((*l)["tid"], 17);
  const auto* s = find("s", "launch");
  const auto* f = find("f", "launch");
  ASSERT_NE(s, nullptr);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ((*s)["id"], (*f)["id"]);
  EXPECT_EQ((*f)["bp"], "e");
  const auto* m = find("C", "memory kv_cache");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ((*m)["args"]["used_bytes"], 512);
  const auto* a = find("X", "hot_expert layer 0 expert 2");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ((*a)["pid"], 0);
  EXPECT_DOUBLE_EQ((*a)["dur"].get<double>(), 4000.0);
  const auto* p = find("M", "process_name");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ((*p)["args"]["name"], "demo rank 3 (host:42)");
  EXPECT_NE(find("b", "connector"), nullptr);
  EXPECT_NE(find("e", "connector"), nullptr);
  // A time range keeps only overlapping events.
  ExportOptions only_alert;
  only_alert.start_ns = 3'500'000;
  std::ostringstream out2;
  ExportStats stats2;
  ASSERT_TRUE(export_chrome_trace(files, out2, only_alert, stats2, error));
  const auto j2 = nlohmann::json::parse(out2.str());
  size_t spans = 0, alerts = 0;
  for (const auto& e : j2["traceEvents"]) {
    if (e["ph"] != "X") continue;
    (e["cat"] == "alert" ? alerts : spans)++;
  }
  EXPECT_EQ(spans, 0u);
  EXPECT_EQ(alerts, 1u);
  fs::remove_all(dir);
}

TEST(ChromeExport, MissingInputSaysWhy) {
  std::string error;
  EXPECT_TRUE(trace_inputs("/nonexistent/inferscope", error).empty());
  EXPECT_NE(error.find("no such"), std::string::npos);
}
