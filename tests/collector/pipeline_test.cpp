// The pipeline without sockets: frames in, metrics and episodes out, driven by
// record timestamps (no sleeps).
#include "inferscope/collector/pipeline.hpp"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include "inferscope/wire/counter_names.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;

namespace {

constexpr int64_t kW = 200'000'000;

struct Fixture {
  CollectorOptions options;
  CollectorMetrics metrics;
  std::unique_ptr<Pipeline> pipeline;
  std::vector<SharedFrame> forwarded;
  std::vector<wire::AlertEpisode> alerts;

  explicit Fixture(bool per_expert = false, std::string token = "") {
    options.aggregation.window_ns = kW;
    options.aggregation.per_expert_metrics = per_expert;
    options.auth_token = std::move(token);
    pipeline = std::make_unique<Pipeline>(options, metrics, nullptr);
    pipeline->set_frame_sink([this](const SharedFrame& f) {
      forwarded.push_back(f);
      std::vector<wire::Record> recs;
      if (wire::decode_frame(*f, recs).ok())
        for (auto& r : recs)
          if (wire::kind_of(r) == wire::RecordKind::kAlert)
            alerts.push_back(std::get<wire::AlertEpisode>(r));
    });
  }
  bool send(Session& s, const std::vector<wire::Record>& records, Rejection* why_out = nullptr) {
    auto f = frame_of(records);
    Rejection why;
    bool ok = pipeline->on_frame(s, f, why);
    if (why_out) *why_out = why;
    return ok;
  }
  std::map<std::string, double> scrape() {
    prometheus::TextSerializer ser;
    return parse_exposition(ser.Serialize(metrics.registry->Collect()));
  }
};

std::vector<uint32_t> skewed(uint32_t hot_expert, uint32_t experts, uint32_t hot_load,
                             uint32_t other) {
  std::vector<uint32_t> v(experts, other);
  v[hot_expert] = hot_load;
  return v;
}

}  // namespace

TEST(Pipeline, FirstRecordMustBeHello) {
  Fixture f;
  Session s(f.options.limits);
  Rejection why;
  EXPECT_FALSE(f.send(s, {make_load(0, 1, {1, 2})}, &why));
  EXPECT_EQ(why.reason, "no_hello");
  EXPECT_EQ(find_series(f.scrape(), "inferscope_collector_rejected_frames_total",
                        {"reason=\"no_hello\""}),
            1.0);
}

TEST(Pipeline, AuthTokenIsCheckedAndNeverForwarded) {
  Fixture f(false, "s3cret");
  Session bad(f.options.limits);
  Rejection why;
  auto h = make_hello("m", 0, 1, 4);
  h.auth_token = "wrong";
  EXPECT_FALSE(f.send(bad, {h}, &why));
  EXPECT_EQ(why.reason, "auth");
  Session good(f.options.limits);
  h.auth_token = "s3cret";
  ASSERT_TRUE(f.send(good, {h}));
  ASSERT_EQ(f.forwarded.size(), 1u);
  std::vector<wire::Record> recs;
  ASSERT_TRUE(wire::decode_frame(*f.forwarded[0], recs).ok());
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(std::get<wire::Hello>(recs[0]).auth_token, "");
  EXPECT_EQ(std::get<wire::Hello>(recs[0]).model.name, "m");
  EXPECT_TRUE(tokens_equal("abc", "abc"));
  EXPECT_FALSE(tokens_equal("abc", "abd"));
  EXPECT_FALSE(tokens_equal("abc", "abcd"));
}

TEST(Pipeline, ForwardedFramesCarryTheSourceId) {
  Fixture f;
  Session a(f.options.limits), b(f.options.limits);
  ASSERT_TRUE(f.send(a, {make_hello("m", 0, 1, 4)}));
  ASSERT_TRUE(f.send(b, {make_hello("m", 1, 1, 4)}));
  ASSERT_TRUE(f.send(b, {wire::StringDef{7, "decode"}, make_load(0, 10, {1, 2, 3, 4})}));
  EXPECT_EQ(a.source_id, 1u);
  EXPECT_EQ(b.source_id, 2u);
  ASSERT_EQ(f.forwarded.size(), 3u);
  wire::FrameDecoder dec;
  ASSERT_TRUE(dec.open(*f.forwarded[2]).ok());  // CRC still valid after restamping
  EXPECT_EQ(dec.header().source_id, 2u);
  EXPECT_EQ(f.pipeline->sources().find(2)->string(7), "decode");
}

TEST(Pipeline, ExpertLoadMustMatchTheHello) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 2, 4)}));
  Rejection why;
  EXPECT_FALSE(f.send(s, {make_load(1, 10, {1, 2, 3})}, &why));  // 3 experts, hello says 4
  EXPECT_EQ(why.reason, "schema");
  Session s2(f.options.limits);
  ASSERT_TRUE(f.send(s2, {make_hello("m", 0, 2, 4)}));
  EXPECT_FALSE(f.send(s2, {make_load(5, 10, {1, 2, 3, 4})}, &why));  // no layer 5
}

TEST(Pipeline, CountersAndWindowGaugesMatchWhatWasSent) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 3, 2, 4)}));
  // Window 0: layer 1 gets 60/20/10/10 in two steps, 5 dropped.
  ASSERT_TRUE(
      f.send(s, {make_load(1, 10, {30, 10, 5, 5}, 2), make_load(1, 20, {30, 10, 5, 5}, 3)}));
  // A record in window 1 closes window 0.
  ASSERT_TRUE(f.send(s, {make_load(1, kW + 1, {25, 25, 25, 25})}));
  auto m = f.scrape();
  const std::vector<std::string> l1{"model=\"m\"", "rank=\"3\"", "layer=\"1\""};
  EXPECT_EQ(find_series(m, "inferscope_moe_routed_tokens_total", l1), 200.0);
  EXPECT_EQ(find_series(m, "inferscope_moe_dropped_tokens_total", l1), 5.0);
  EXPECT_EQ(find_series(m, "inferscope_moe_batch_tokens_total", l1), 100.0);
  EXPECT_DOUBLE_EQ(*find_series(m, "inferscope_moe_layer_imbalance_ratio", l1), 2.4);
  EXPECT_DOUBLE_EQ(*find_series(m, "inferscope_moe_layer_max_utilization_ratio", l1), 2.4);
  EXPECT_DOUBLE_EQ(*find_series(m, "inferscope_moe_layer_min_utilization_ratio", l1), 0.4);
  // Utilizations 2.4, 0.8, 0.4, 0.4: one in the (2, 3] bucket, none above 3.
  EXPECT_EQ(find_series(m, "inferscope_moe_expert_utilization_ratio_count", l1), 4.0);
  EXPECT_EQ(
      find_series(m, "inferscope_moe_expert_utilization_ratio_bucket", {"layer=\"1\"", "le=\"2\""}),
      3.0);
  EXPECT_EQ(
      find_series(m, "inferscope_moe_expert_utilization_ratio_bucket", {"layer=\"1\"", "le=\"3\""}),
      4.0);
  EXPECT_EQ(find_series(m, "inferscope_collector_records_total", {"kind=\"expert_load\""}), 3.0);
  auto snap = f.pipeline->aggregator().layer("m", 3, 1);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->windows, 1u);
  EXPECT_DOUBLE_EQ(snap->last.drop_ratio, 5.0 / 100.0);  // window 0 only
  // No per-expert series outside episodes in the default mode.
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_tokens_total"), 0u);
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_episode"), 0u);
}

TEST(Pipeline, PerExpertSeriesExistOnlyDuringAnEpisode) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 1, 8)}));
  const std::vector<std::string> hot{"expert=\"5\"", "kind=\"hot\""};
  int64_t w = 0;
  auto window = [&](std::vector<uint32_t> load) {
    ASSERT_TRUE(f.send(s, {make_load(0, w * kW + 1, std::move(load))}));
    ++w;
  };
  // Expert 5 at 4x its fair share for 3 windows (+1 record to close the third).
  for (int i = 0; i < 3; ++i) window(skewed(5, 8, 40, 10));
  EXPECT_FALSE(find_series(f.scrape(), "inferscope_moe_expert_episode", hot));
  window(skewed(5, 8, 40, 10));
  auto m = f.scrape();
  EXPECT_EQ(find_series(m, "inferscope_moe_expert_episode", hot), 1.0);
  EXPECT_NEAR(*find_series(m, "inferscope_moe_expert_utilization_current_ratio", {"expert=\"5\""}),
              40.0 / (110.0 / 8.0), 1e-9);
  EXPECT_EQ(find_series(m, "inferscope_moe_layer_experts", {"state=\"hot\""}), 1.0);
  EXPECT_EQ(find_series(m, "inferscope_moe_expert_episodes_total", {"kind=\"hot\""}), 1.0);
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_episode"), 1u);
  ASSERT_EQ(f.alerts.size(), 1u);
  EXPECT_EQ(f.alerts[0].expert, 5u);
  EXPECT_EQ(f.alerts[0].model, "m");
  EXPECT_EQ(f.alerts[0].end_ns, 0);
  EXPECT_EQ(f.alerts[0].start_ns, 0);
  // Balanced again: the episode ends and its series go away.
  window(skewed(5, 8, 10, 10));
  window(skewed(5, 8, 10, 10));
  m = f.scrape();
  EXPECT_FALSE(find_series(m, "inferscope_moe_expert_episode", hot));
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_utilization_current_ratio"), 0u);
  EXPECT_EQ(find_series(m, "inferscope_moe_layer_experts", {"state=\"hot\""}), 0.0);
  ASSERT_EQ(f.alerts.size(), 2u);
  EXPECT_EQ(f.alerts[1].start_ns, 0);
  EXPECT_EQ(f.alerts[1].end_ns, 4 * kW);
  EXPECT_FLOAT_EQ(f.alerts[1].peak_utilization, 40.0f / (110.0f / 8.0f));
  EXPECT_TRUE(f.pipeline->aggregator().open_episodes().empty());
}

TEST(Pipeline, SeriesCountStaysBoundedWhileHotExpertsChurn) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 2, 16)}));
  size_t max_series = 0, baseline = 0;
  int64_t w = 0;
  // The hot expert moves every 4 windows across all 16 experts, on both layers.
  for (int round = 0; round < 16; ++round) {
    for (int i = 0; i < 4; ++i, ++w) {
      ASSERT_TRUE(f.send(s, {make_load(0, w * kW + 1, skewed(round, 16, 60, 10)),
                             make_load(1, w * kW + 2, skewed(15 - round, 16, 60, 10))}));
      const size_t n = count_series(*f.metrics.registry);
      if (w == 2) baseline = n;
      max_series = std::max(max_series, n);
    }
  }
  auto m = f.scrape();
  EXPECT_GE(find_series(m, "inferscope_moe_expert_episodes_total", {"layer=\"0\"", "kind=\"hot\""})
                .value_or(0),
            15.0);
  // At most one hot expert per layer at a time (+ it may overlap its successor
  // for a window): 2 layers x 2 experts x 2 per-expert series over the baseline,
  // plus the lazily created per-kind episode counters.
  EXPECT_LE(max_series, baseline + 2 * 2 * 2 + 2 * 4);
  EXPECT_LE(count_named(m, "inferscope_moe_expert_episode"), 4u);
}

TEST(Pipeline, PerExpertModeExportsEveryExpert) {
  Fixture f(true);
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 1, 4)}));
  ASSERT_TRUE(f.send(s, {make_load(0, 1, {4, 3, 2, 1})}));
  ASSERT_TRUE(f.send(s, {make_load(0, kW + 1, {1, 1, 1, 1})}));
  auto m = f.scrape();
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_tokens_total"), 4u);
  EXPECT_EQ(find_series(m, "inferscope_moe_expert_tokens_total", {"expert=\"0\""}), 5.0);
  EXPECT_DOUBLE_EQ(*find_series(m, "inferscope_moe_expert_load_share", {"expert=\"1\""}), 0.3);
}

TEST(Pipeline, PlacementFromHelloGivesRankLoadAndBalancedness) {
  Fixture f;
  // 4 experts on 2 ranks: 0,1 -> rank 0; 2,3 -> rank 1. Two agents (ranks 0 and 1).
  Session a(f.options.limits), b(f.options.limits);
  ASSERT_TRUE(f.send(a, {make_hello("ep", 0, 1, 4, {0, 0, 1, 1})}));
  ASSERT_TRUE(f.send(b, {make_hello("ep", 1, 1, 4, {0, 0, 1, 1})}));
  ASSERT_TRUE(f.send(a, {make_load(0, 1, {40, 20, 10, 10})}));
  ASSERT_TRUE(f.send(b, {make_load(0, 2, {20, 20, 0, 0})}));
  ASSERT_TRUE(f.send(a, {make_load(0, kW + 1, {1, 1, 1, 1})}));
  // Rank 0 holds 40+20+20+20 = 100, rank 1 holds 20: mean 60, max 100.
  auto rl = f.pipeline->aggregator().rank_load("ep", 0);
  ASSERT_TRUE(rl);
  EXPECT_DOUBLE_EQ(rl->load[0], 100.0);
  EXPECT_DOUBLE_EQ(rl->load[1], 20.0);
  EXPECT_DOUBLE_EQ(rl->balancedness, 0.6);
  auto m = f.scrape();
  EXPECT_DOUBLE_EQ(
      *find_series(m, "inferscope_moe_ep_balancedness_ratio", {"model=\"ep\"", "layer=\"0\""}),
      0.6);
  EXPECT_DOUBLE_EQ(
      *find_series(m, "inferscope_moe_ep_rank_utilization_ratio", {"rank=\"0\"", "layer=\"0\""}),
      100.0 / 60.0);
}

TEST(Pipeline, PlacementFileOverridesWithReplicas) {
  CollectorOptions o;
  Placement p;
  std::string error;
  ASSERT_TRUE(parse_placement(R"({"expert_to_ranks": [[0, 1], [0], [1], [1]]})", p, error));
  Fixture f;
  f.options.aggregation.placement = p;
  f.pipeline = std::make_unique<Pipeline>(f.options, f.metrics, nullptr);
  Session a(f.options.limits);
  ASSERT_TRUE(f.send(a, {make_hello("ep", 0, 1, 4, {0, 0, 1, 1})}));
  ASSERT_TRUE(f.send(a, {make_load(0, 1, {60, 20, 10, 10})}));
  ASSERT_TRUE(f.send(a, {make_load(0, kW + 1, {1, 1, 1, 1})}));
  auto rl = f.pipeline->aggregator().rank_load("ep", 0);
  ASSERT_TRUE(rl);
  EXPECT_DOUBLE_EQ(rl->load[0], 50.0);
  EXPECT_DOUBLE_EQ(rl->load[1], 50.0);
  EXPECT_DOUBLE_EQ(rl->balancedness, 1.0);
}

TEST(Pipeline, MemoryPrefixStagesRequestsAndAgentHealth) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 2, 1, 4)}));
  wire::MemorySample mem{100, 2, wire::MemoryKind::kSsmState, 1000, 4000};
  wire::PrefixCacheSample pc{110, 100, 60, 100, 0};
  wire::StageTiming st{7, wire::Stage::kEncoder, wire::Device::kGpu, 0, 30'000'000, 20'000'000};
  wire::RequestEvent rq;
  rq.request_id = 7;
  rq.arrival_ns = 1'000'000'000;
  rq.first_token_ns = 1'200'000'000;  // TTFT 0.2 s
  rq.finish_ns = 2'200'000'000;       // 1.0 s over 11 output tokens -> 0.1 s per token
  rq.prompt_tokens = 50;
  rq.output_tokens = 11;
  rq.image_tokens = 16;
  rq.cached_tokens = 32;
  wire::AgentHealth h1;
  h1.records_sent = 100;
  h1.dropped_by_kind[static_cast<size_t>(wire::RecordKind::kSpan)] = 3;
  wire::AgentHealth h2 = h1;
  h2.records_sent = 150;
  h2.dropped_by_kind[static_cast<size_t>(wire::RecordKind::kSpan)] = 10;
  ASSERT_TRUE(f.send(s, {mem, pc, pc, st, rq, h1, h2}));
  auto m = f.scrape();
  const std::string rank = "rank=\"2\"";
  EXPECT_EQ(find_series(m, "inferscope_memory_used_bytes", {rank, "kind=\"ssm_state\""}), 1000.0);
  EXPECT_EQ(find_series(m, "inferscope_memory_capacity_bytes", {rank, "kind=\"ssm_state\""}),
            4000.0);
  EXPECT_EQ(
      find_series(m, "inferscope_prefix_cache_queried_tokens_total", {"layer_kind=\"attention\""}),
      200.0);
  EXPECT_EQ(
      find_series(m, "inferscope_prefix_cache_hit_tokens_total", {"layer_kind=\"attention\""}),
      120.0);
  EXPECT_EQ(find_series(m, "inferscope_prefix_cache_hit_tokens_total", {"layer_kind=\"ssm\""}),
            0.0);
  EXPECT_NEAR(*find_series(m, "inferscope_stage_gpu_seconds_total", {"stage=\"encoder\""}), 0.02,
              1e-12);
  EXPECT_NEAR(*find_series(m, "inferscope_stage_duration_seconds_sum", {"stage=\"encoder\""}), 0.03,
              1e-12);
  EXPECT_NEAR(*find_series(m, "inferscope_request_ttft_seconds_sum", {rank}), 0.2, 1e-9);
  EXPECT_NEAR(*find_series(m, "inferscope_request_time_per_output_token_seconds_sum", {rank}), 0.1,
              1e-9);
  EXPECT_NEAR(*find_series(m, "inferscope_request_e2e_seconds_sum", {rank}), 1.2, 1e-9);
  EXPECT_EQ(find_series(m, "inferscope_requests_total", {"status=\"ok\""}), 1.0);
  EXPECT_EQ(find_series(m, "inferscope_request_tokens_total", {"kind=\"cached\""}), 32.0);
  EXPECT_EQ(find_series(m, "inferscope_agent_records_sent_total", {rank}), 150.0);
  EXPECT_EQ(find_series(m, "inferscope_agent_records_dropped_total", {"kind=\"span\""}), 10.0);
  EXPECT_EQ(find_series(m, "inferscope_agent_connected", {rank}), 1.0);
  f.pipeline->on_close(s);
  EXPECT_EQ(find_series(f.scrape(), "inferscope_agent_connected", {rank}), 0.0);
}

// Issue 20: a kernel's layer is its typed arg "layer" (the agent adds it for
// ranges the host tied to a layer), counted for the rank's MoE layers only.
// Without the arg (older agents) the kernel's layer is unknown: the range name
// is not parsed, however much it looks like a layer.
TEST(Pipeline, MoeLayerGpuTimeFromKernelLayerArgs) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 4, 4), make_load(3, 1, {1, 1, 1, 1})}));
  wire::Span k;
  k.track_kind = wire::TrackKind::kGpuStream;
  k.category = wire::SpanCategory::kKernel;
  k.start_ns = 100;
  k.end_ns = 100 + 5'000'000;
  k.num_args = 2;
  k.args[0] = {1, 2};  // "range" = "moe.layer.3.experts"
  k.args[1] = {5, 3};  // "layer" = 3
  ASSERT_TRUE(f.send(s, {wire::StringDef{1, "range"}, wire::StringDef{2, "moe.layer.3.experts"},
                         wire::StringDef{5, "layer"}, k, k}));
  EXPECT_NEAR(*find_series(f.scrape(), "inferscope_moe_layer_gpu_seconds_total", {"layer=\"3\""}),
              0.01, 1e-12);
  // An older agent's kernel: the same range name, no layer arg: not counted.
  wire::Span old = k;
  old.num_args = 1;
  ASSERT_TRUE(f.send(s, {old, old}));
  EXPECT_NEAR(*find_series(f.scrape(), "inferscope_moe_layer_gpu_seconds_total", {"layer=\"3\""}),
              0.01, 1e-12)
      << "a name that looks like a layer is not parsed into one";
  // The layer arg alone is enough (the range arg may come first, after, or not at
  // all); a dense layer (no expert_load) and a value past the limit do not count.
  ASSERT_TRUE(f.send(s, {make_load(1, 2, {1, 1, 1, 1})}));
  wire::Span moe1 = k;
  moe1.num_args = 1;
  moe1.args[0] = {5, 1};
  wire::Span dense = moe1;
  dense.args[0] = {5, 2};
  wire::Span bad = moe1;
  bad.args[0] = {5, int64_t{wire::kMaxLayers}};
  wire::Span negative = moe1;
  negative.args[0] = {5, -1};
  ASSERT_TRUE(f.send(s, {moe1, dense, bad, negative}));
  const auto m = f.scrape();
  EXPECT_NEAR(*find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"layer=\"1\""}), 0.005,
              1e-12);
  EXPECT_FALSE(find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"layer=\"2\""}));
  EXPECT_FALSE(find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"layer=\"0\""}));
}

// Every traced kernel counts in inferscope_gpu_kernel_seconds_total, split by whether a
// range enclosed its launch (a "range" arg naming a string): attributed / total is how much
// of the GPU time the ranges explain, whatever the range is (a layer, a stage, a step).
TEST(Pipeline, KernelSecondsSplitByAttribution) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 4, 4)}));
  wire::Span k;
  k.track_kind = wire::TrackKind::kGpuStream;
  k.category = wire::SpanCategory::kKernel;
  k.start_ns = 100;
  k.end_ns = 100 + 3'000'000;
  wire::Span in_range = k;
  in_range.num_args = 1;
  in_range.args[0] = {1, 2};  // "range" = "encoder"
  wire::Span other_arg = k;   // an arg, but not a range: unattributed
  other_arg.num_args = 1;
  other_arg.args[0] = {3, 2};
  ASSERT_TRUE(f.send(s, {wire::StringDef{1, "range"}, wire::StringDef{2, "encoder"},
                         wire::StringDef{3, "capture"}, in_range, in_range, k, other_arg}));
  const auto m = f.scrape();
  EXPECT_NEAR(*find_series(m, "inferscope_gpu_kernel_seconds_total", {"attributed=\"true\""}),
              0.006, 1e-12);
  EXPECT_NEAR(*find_series(m, "inferscope_gpu_kernel_seconds_total", {"attributed=\"false\""}),
              0.006, 1e-12);
  // Not a MoE layer: no per-layer time.
  EXPECT_FALSE(find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"model=\"m\""}));
}

// Kernel time is summed in integer nanoseconds and added to the counters once per frame:
// every frame's time is in the next scrape, also a frame rejected part-way (its earlier
// records were counted, as every consumer counts them), and many short kernels sum exactly.
TEST(Pipeline, KernelSecondsVisibleAfterEveryFrame) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 2, 4)}));
  auto total = [&] {
    auto v =
        find_series(f.scrape(), "inferscope_gpu_kernel_seconds_total", {"attributed=\"false\""});
    return v ? *v : -1.0;
  };
  wire::Span k;
  k.track_kind = wire::TrackKind::kGpuStream;
  k.category = wire::SpanCategory::kKernel;
  k.start_ns = 100;
  k.end_ns = 107;  // 7 ns: one of 1000 of them, 7 us in all
  ASSERT_TRUE(f.send(s, std::vector<wire::Record>(1000, k)));
  EXPECT_DOUBLE_EQ(total(), 7e-6);
  k.end_ns = 100 + 2'000'000;
  ASSERT_TRUE(f.send(s, {k}));
  EXPECT_NEAR(total(), 0.002007, 1e-15);
  // Counted before the bad record, then the frame is rejected: still in the counter.
  Rejection why;
  EXPECT_FALSE(f.send(s, {k, make_load(1, 10, {1, 2, 3})}, &why));
  EXPECT_EQ(why.reason, "schema");
  EXPECT_NEAR(total(), 0.004007, 1e-15);
}

// The kernel-time consumer caches what a string id means per source; a string
// redefined under the same id, and another source with the same ids meaning
// other things, must be read afresh.
TEST(Pipeline, MoeLayerGpuTimeFollowsRedefinedStringsAndSources) {
  Fixture f;
  Session a(f.options.limits), b(f.options.limits);
  ASSERT_TRUE(f.send(
      a, {make_hello("m", 0, 4, 4), make_load(1, 1, {1, 1, 1, 1}), make_load(2, 1, {1, 1, 1, 1})}));
  ASSERT_TRUE(f.send(b, {make_hello("other", 0, 4, 4), make_load(2, 1, {1, 1, 1, 1})}));
  wire::Span k;
  k.track_kind = wire::TrackKind::kGpuStream;
  k.category = wire::SpanCategory::kKernel;
  k.start_ns = 100;
  k.end_ns = 100 + 1'000'000;
  k.num_args = 2;
  k.args[0] = {1, 1};  // "layer" = 1
  k.args[1] = {2, 2};  // "not_layer" = 2
  wire::Span k2 = k;
  k2.args[1] = {2, 1};
  k2.args[0] = {1, 2};
  ASSERT_TRUE(f.send(a, {wire::StringDef{1, "layer"}, wire::StringDef{2, "not_layer"}, k}));
  // Same ids on the other connection: 1 is not "layer" there, 2 is; layer 2 counts.
  ASSERT_TRUE(f.send(b, {wire::StringDef{1, "not_layer"}, wire::StringDef{2, "layer"}, k}));
  // Back on the first connection: layer 1 once more, then id 1 redefined and id 2
  // naming the key: k counts for layer 2 (its arg under id 2), k2 for layer 1.
  ASSERT_TRUE(f.send(a, {k, wire::StringDef{1, "not_layer"}, wire::StringDef{2, "layer"}, k, k2}));
  const auto m = f.scrape();
  EXPECT_NEAR(
      *find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"model=\"m\"", "layer=\"1\""}),
      0.003, 1e-12);
  EXPECT_NEAR(
      *find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"model=\"m\"", "layer=\"2\""}),
      0.001, 1e-12);
  EXPECT_NEAR(
      *find_series(m, "inferscope_moe_layer_gpu_seconds_total", {"model=\"other\"", "layer=\"2\""}),
      0.001, 1e-12);
  // Records of the second source land in its own model (not the first's).
  EXPECT_EQ(
      *find_series(m, "inferscope_moe_routed_tokens_total", {"model=\"other\"", "layer=\"2\""}),
      4.0);
}

TEST(Pipeline, ResentHelloWithAnotherModelTakesTheNextRecords) {
  // The aggregator keeps the last record's model per source; a re-sent hello
  // (the agent's set_model) must move the very next records to the new model.
  Fixture f;
  Session s(f.options.limits);
  wire::Span k;
  k.track_kind = wire::TrackKind::kGpuStream;
  k.category = wire::SpanCategory::kKernel;
  k.start_ns = 100;
  k.end_ns = 100 + 1'000'000;
  ASSERT_TRUE(f.send(s, {make_hello("first", 0, 4, 4), k}));
  // Hello and kernel in one frame, then one more frame: both kernels are the second model's.
  ASSERT_TRUE(f.send(s, {make_hello("second", 0, 4, 4), k}));
  ASSERT_TRUE(f.send(s, {k}));
  const auto m = f.scrape();
  const auto seconds = [&](const char* model) {
    double sum = 0;
    for (const auto& [series, v] : m)
      if (series.rfind("inferscope_gpu_kernel_seconds_total", 0) == 0 &&
          series.find(std::string("model=\"") + model + "\"") != std::string::npos)
        sum += v;
    return sum;
  };
  EXPECT_NEAR(seconds("first"), 0.001, 1e-12);
  EXPECT_NEAR(seconds("second"), 0.002, 1e-12);
}

TEST(Pipeline, StageGpuSecondsOnlyForStagesWithMeasuredGpuTime) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 1, 4)}));
  // A CPU-only run: gpu_ns 0 (not measured) for every stage.
  wire::StageTiming cpu{7, wire::Stage::kBackboneDecode, wire::Device::kCpu, 0, 30'000'000, 0};
  wire::StageTiming gpu{7, wire::Stage::kEncoder, wire::Device::kGpu, 0, 30'000'000, 20'000'000};
  ASSERT_TRUE(f.send(s, {cpu}));
  auto m = f.scrape();
  EXPECT_TRUE(
      find_series(m, "inferscope_stage_duration_seconds_count", {"stage=\"backbone_decode\""}));
  for (const auto& [series, v] : m)
    EXPECT_EQ(series.find("inferscope_stage_gpu_seconds_total"), std::string::npos)
        << series << " = " << v;
  ASSERT_TRUE(f.send(s, {gpu, cpu}));
  m = f.scrape();
  EXPECT_NEAR(*find_series(m, "inferscope_stage_gpu_seconds_total", {"stage=\"encoder\""}), 0.02,
              1e-12);
  EXPECT_FALSE(find_series(m, "inferscope_stage_gpu_seconds_total", {"stage=\"backbone_decode\""}));
}

TEST(Pipeline, SsmCheckpointEvictionCountersBecomeAMetric) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 1, 1, 4)}));
  const wire::StringDef unused{1, std::string(wire::counter_names::kSsmCheckpointsEvictedUnused)};
  const wire::StringDef reused{2, std::string(wire::counter_names::kSsmCheckpointsEvictedReused)};
  const wire::StringDef other{3, "some.other.counter"};
  ASSERT_TRUE(f.send(s, {unused, reused, other, wire::CounterSample{10, 1, false, 0.0},
                         wire::CounterSample{10, 2, false, 0.0}}));
  // The first (zero) report makes the series exist, so rate() sees the first eviction.
  EXPECT_EQ(
      find_series(f.scrape(), "inferscope_ssm_checkpoint_evictions_total", {"reused=\"false\""}),
      0.0);
  ASSERT_TRUE(
      f.send(s, {wire::CounterSample{20, 1, false, 5.0}, wire::CounterSample{30, 1, false, 2.0},
                 wire::CounterSample{30, 2, false, 1.0}, wire::CounterSample{30, 3, false, 9.0}}));
  auto m = f.scrape();
  EXPECT_EQ(find_series(m, "inferscope_ssm_checkpoint_evictions_total",
                        {"rank=\"1\"", "reused=\"false\""}),
            7.0);
  EXPECT_EQ(find_series(m, "inferscope_ssm_checkpoint_evictions_total", {"reused=\"true\""}), 1.0);
  for (const auto& [series, v] : m)
    EXPECT_EQ(series.find("some.other"), std::string::npos) << series;
}

TEST(Pipeline, StringLimitClosesTheConnection) {
  Fixture f;
  f.options.limits.max_strings = 2;
  Session s(f.options.limits);
  ASSERT_TRUE(
      f.send(s, {make_hello("m", 0, 1, 4), wire::StringDef{1, "a"}, wire::StringDef{2, "b"}}));
  Rejection why;
  EXPECT_FALSE(f.send(s, {wire::StringDef{3, "c"}}, &why));
  EXPECT_EQ(why.reason, "string_limit");
}

TEST(Pipeline, ModelCardinalityBoundIsCounted) {
  Fixture f;
  f.options.aggregation.max_models = 1;
  f.pipeline = std::make_unique<Pipeline>(f.options, f.metrics, nullptr);
  Session a(f.options.limits), b(f.options.limits);
  ASSERT_TRUE(f.send(a, {make_hello("one", 0, 1, 4), make_load(0, 1, {1, 2, 3, 4})}));
  ASSERT_TRUE(f.send(b, {make_hello("two", 0, 1, 4), make_load(0, 1, {1, 2, 3, 4})}));
  auto m = f.scrape();
  EXPECT_TRUE(find_series(m, "inferscope_moe_routed_tokens_total", {"model=\"one\""}));
  EXPECT_FALSE(find_series(m, "inferscope_moe_routed_tokens_total", {"model=\"two\""}));
  EXPECT_GE(find_series(m, "inferscope_collector_label_overflow_total", {"reason=\"models\""})
                .value_or(0),
            1.0);
}

TEST(Pipeline, EpisodesEndWhenTheRanksLastAgentLeaves) {
  Fixture f;
  Session s(f.options.limits);
  ASSERT_TRUE(f.send(s, {make_hello("m", 0, 1, 4)}));
  for (int w = 0; w < 4; ++w)
    ASSERT_TRUE(f.send(s, {make_load(0, w * kW + 1, {70, 10, 10, 10}, 20)}));
  auto m = f.scrape();
  EXPECT_EQ(find_series(m, "inferscope_moe_expert_episode", {"expert=\"0\"", "kind=\"hot\""}), 1.0);
  EXPECT_EQ(f.pipeline->aggregator().open_episodes().size(), 2u);  // hot expert + drop burst
  f.pipeline->on_close(s);
  m = f.scrape();
  EXPECT_EQ(count_named(m, "inferscope_moe_expert_episode"), 0u);
  EXPECT_EQ(find_series(m, "inferscope_moe_layer_experts", {"state=\"hot\""}), 0.0);
  EXPECT_TRUE(f.pipeline->aggregator().open_episodes().empty());
  ASSERT_GE(f.alerts.size(), 4u);
  EXPECT_EQ(f.alerts.back().end_ns, 3 * kW);
}
