// The whole /metrics exposition and the alert list for one fixed record
// sequence that touches every concern of the aggregator (MoE routing with
// episodes and drop bursts, placement and the EPLB what-if, expert parallelism,
// memory / prefix cache / stages / requests / SSM checkpoint counters, kernel
// time per MoE layer, agent health, a rank leaving), compared with a file
// recorded before the aggregator was split by concern. Any change in a value, a
// label, a series that appears or goes, or an alert fails it.
//
// prometheus-cpp keeps a family's series in an unordered_map, so the lines are
// compared sorted: the content is pinned, not the hash order. To record the file
// again after an intended change: INFERSCOPE_UPDATE_GOLDEN=1 ./collector_unit_tests
// --gtest_filter='ExpositionGolden.*', and review the diff.
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "inferscope/collector/pipeline.hpp"
#include "inferscope/wire/counter_names.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;

namespace {

constexpr int64_t kW = 200'000'000;
constexpr uint32_t kLayers = 3, kExperts = 8;

wire::Hello golden_hello(uint32_t rank) {
  std::vector<uint32_t> placement;
  for (uint32_t e = 0; e < kExperts; ++e) placement.push_back(e % 2);
  wire::Hello h = make_hello("golden", rank, kLayers, kExperts, placement);
  h.world_size = 2;
  return h;
}

constexpr uint32_t kLayerKey = 32;  // the string "layer" (strings())

// A kernel span as the agent makes it: the enclosing range's name, and for a
// range tied to a layer (intern_layer) the typed arg "layer" (-1: none).
wire::Span kernel(int64_t start, uint32_t range_id, uint32_t range_key, int64_t layer = -1) {
  wire::Span s;
  s.track_kind = wire::TrackKind::kGpuStream;
  s.category = wire::SpanCategory::kKernel;
  s.name_id = 10;
  s.start_ns = start;
  s.end_ns = start + 150'000;
  s.num_args = 1;
  s.args[0] = {range_key, static_cast<int64_t>(range_id)};
  if (layer >= 0) s.args[s.num_args++] = {kLayerKey, layer};
  return s;
}

// One window of one rank's records.
std::vector<wire::Record> window_records(uint32_t rank, int64_t w) {
  const int64_t t = w * kW + 1'000 + rank;
  std::vector<wire::Record> out;
  // Layer 0: expert 3 hot on rank 0 (expert 4 on rank 1); layer 1: expert 5 dead;
  // layer 2: a drop burst from window 2 on.
  std::vector<uint32_t> l0(kExperts, 50), l1(kExperts, 60), l2(kExperts, 40);
  l0[rank == 0 ? 3 : 4] = 400;
  l1[5] = 0;
  l1[1] = 5;  // cold
  out.push_back(make_load(0, t, l0));
  out.push_back(make_load(1, t + 10, l1));
  out.push_back(make_load(2, t + 20, l2, w >= 2 ? 200 : 0));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    wire::ExpertParallelStep s;
    s.step = static_cast<uint64_t>(w);
    s.layer = layer;
    s.timestamp_ns = t + 30;
    s.dispatch_ns = 20'000 + rank * 1'000;
    s.compute_ns = rank == 1 ? 90'000 : 30'000;  // rank 1 carries more
    s.combine_ns = rank == 1 ? 10'000 : 70'000;
    s.rows_sent = 100;
    s.rows_computed = rank == 1 ? 300 : 100;
    s.row_bytes = 4096;
    s.rows_to_rank = {rank == 0 ? 40u : 150u, rank == 0 ? 60u : 150u};
    out.push_back(s);
  }
  out.push_back(wire::MemorySample{t + 40, rank, wire::MemoryKind::kKvCache,
                                   static_cast<uint64_t>(1000 + w), 4096});
  out.push_back(wire::MemorySample{t + 41, rank, wire::MemoryKind::kSsmState, 77, 128});
  out.push_back(wire::PrefixCacheSample{t + 50, 100, static_cast<uint64_t>(30 + w), 10, 4});
  out.push_back(wire::StageTiming{static_cast<uint64_t>(w), wire::Stage::kBackbonePrefill,
                                  wire::Device::kGpu, t + 60, t + 60 + 3'000'000, 2'000'000});
  out.push_back(wire::StageTiming{static_cast<uint64_t>(w), wire::Stage::kEncoder,
                                  wire::Device::kCpu, t + 61, t + 61 + 700'000, 0});
  wire::RequestEvent ok;
  ok.request_id = static_cast<uint64_t>(w);
  ok.arrival_ns = t - 50'000'000;
  ok.first_token_ns = t - 30'000'000;
  ok.finish_ns = t + 70;
  ok.prompt_tokens = 100;
  ok.output_tokens = 11;
  ok.image_tokens = 3;
  ok.cached_tokens = 40;
  out.push_back(ok);
  wire::RequestEvent failed = ok;
  failed.status = w % 2 ? wire::RequestStatus::kError : wire::RequestStatus::kCancelled;
  failed.first_token_ns = 0;
  out.push_back(failed);
  // Kernels in MoE layers 1 and 2 and one outside any layer.
  out.push_back(kernel(t + 80, 21, 20, 1));
  out.push_back(kernel(t + 90, 22, 20, 2));
  out.push_back(kernel(t + 95, 23, 20));
  wire::CounterSample evicted{t + 100, 30, false, 2.0 + static_cast<double>(w)};
  out.push_back(evicted);
  out.push_back(wire::CounterSample{t + 101, 31, false, 1.0});
  out.push_back(wire::CounterSample{t + 102, 32, false, 5.0});  // "layer": not a metric
  wire::AgentHealth h;
  h.timestamp_ns = t + 110;
  h.records_sent = static_cast<uint64_t>(100 * (w + 1));
  h.reconnects = w >= 3 ? 1 : 0;
  h.records_unconfirmed = static_cast<uint64_t>(w);
  h.dropped_by_kind[static_cast<size_t>(wire::RecordKind::kSpan)] = static_cast<uint64_t>(7 * w);
  // CUPTI detached after each window from window 1 on, attached again for the
  // next; rank 1's one failed detach in window 3.
  h.gpu.cupti_detaches = static_cast<uint64_t>(w);
  h.gpu.cupti_reattaches = w > 1 ? static_cast<uint64_t>(w - 1) : 0;
  h.gpu.cupti_detach_errors = rank == 1 && w >= 3 ? 1 : 0;
  out.push_back(h);
  return out;
}

std::vector<wire::Record> strings() {
  return {wire::StringDef{10, "moe_gemm"}, wire::StringDef{20, "range"},
          wire::StringDef{21, "layer.1.attention+moe"}, wire::StringDef{22, "moe.layer.2.gate_up"},
          wire::StringDef{23, "decode"},
          wire::StringDef{30, std::string(wire::counter_names::kSsmCheckpointsEvictedUnused)},
          wire::StringDef{31, std::string(wire::counter_names::kSsmCheckpointsEvictedReused)},
          // The span arg key, and a counter name that is no metric (one string
          // serves both, so that the record counts stay those of the recording).
          wire::StringDef{kLayerKey, "layer"}};
}

std::string render() {
  CollectorOptions options;
  options.aggregation.window_ns = kW;
  CollectorMetrics metrics;
  Pipeline pipeline(options, metrics, nullptr);
  Session s0(options.limits), s1(options.limits);
  Rejection why;
  auto send = [&](Session& s, const std::vector<wire::Record>& recs) {
    auto f = frame_of(recs);
    EXPECT_TRUE(pipeline.on_frame(s, f, why)) << why.message;
  };
  for (uint32_t r = 0; r < 2; ++r) {
    std::vector<wire::Record> first{golden_hello(r)};
    for (auto& d : strings()) first.push_back(d);
    send(r == 0 ? s0 : s1, first);
  }
  for (int64_t w = 0; w < 7; ++w) {
    send(s0, window_records(0, w));
    if (w < 5) send(s1, window_records(1, w));  // rank 1 leaves after window 4
    if (w == 4) pipeline.on_close(s1);
  }
  send(s0, {make_load(0, 9 * kW, std::vector<uint32_t>(kExperts, 10))});  // closes window 6

  prometheus::TextSerializer ser;
  std::istringstream text(ser.Serialize(metrics.registry->Collect()));
  std::vector<std::string> lines;
  for (std::string line; std::getline(text, line);) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  std::ostringstream out;
  for (const auto& l : lines) out << l << '\n';
  out << "# alerts, in the order they happened\n";
  for (const auto& a : pipeline.aggregator().recent_alerts())
    out << wire::to_string(a.kind) << " model=" << a.model << " rank=" << a.rank
        << " layer=" << a.layer << " expert=" << a.expert << " start=" << a.start_ns
        << " end=" << a.end_ns << " share=" << a.peak_share << " util=" << a.peak_utilization
        << '\n';
  return out.str();
}

TEST(ExpositionGolden, FixedRecordsGiveTheRecordedExposition) {
  const std::string path = std::string(INFERSCOPE_GOLDEN_DIR) + "/aggregator_exposition.txt";
  const std::string got = render();
  if (const char* update = std::getenv("INFERSCOPE_UPDATE_GOLDEN"); update && *update == '1') {
    std::ofstream(path) << got;
    GTEST_SKIP() << "recorded " << path;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in) << "missing " << path;
  std::stringstream want;
  want << in.rdbuf();
  // Line by line, so a failure names the first line that differs.
  std::istringstream g(got), e(want.str());
  std::string gl, el;
  for (int n = 1;; ++n) {
    const bool more_g = static_cast<bool>(std::getline(g, gl));
    const bool more_e = static_cast<bool>(std::getline(e, el));
    if (!more_g && !more_e) break;
    ASSERT_EQ(more_g, more_e) << "line " << n << ": got " << (more_g ? gl : "<end>") << ", want "
                              << (more_e ? el : "<end>");
    ASSERT_EQ(gl, el) << "line " << n;
  }
  // The sequence reaches every concern (a golden file of zeros would pin nothing).
  for (const char* needle :
       {"inferscope_moe_routed_tokens_total", "hot_expert", "cold_expert", "dead_expert",
        "drop_burst", "hot_rank", "inferscope_moe_layer_gpu_seconds_total",
        "inferscope_ep_idle_seconds_total", "inferscope_moe_ep_eplb_balancedness_ratio",
        "inferscope_agent_records_dropped_total", "inferscope_agent_gpu_cupti_events_total",
        "inferscope_ssm_checkpoint_evictions_total", "inferscope_stage_gpu_seconds_total",
        "inferscope_request_ttft_seconds", "inferscope_ep_traffic_top_pair_rows_per_second"})
    EXPECT_NE(got.find(needle), std::string::npos) << needle;
}

}  // namespace
