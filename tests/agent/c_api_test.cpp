// The C API, driven from a C translation unit (c_api_scenario.c), checked
// against what a real loopback server decodes.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/agent.h"
#include "test_collector.hpp"

extern "C" int inferscope_c_api_scenario(const char* collector);

namespace inferscope::agent {
namespace {

using testing::only;
using namespace std::chrono_literals;

// One expert-load record as the collector received it.
void expect_load(const wire::ExpertLoad& l, uint64_t step, uint32_t layer,
                 const std::vector<uint32_t>& routed, uint32_t tokens, uint32_t dropped) {
  EXPECT_EQ(l.step, step);
  EXPECT_EQ(l.layer, layer);
  EXPECT_EQ(l.routed, routed);
  EXPECT_EQ(l.tokens, tokens);
  EXPECT_EQ(l.dropped, dropped);
}

TEST(AgentCApi, EveryCallReachesTheCollector) {
  testing::TestCollector collector;
  ASSERT_EQ(inferscope_c_api_scenario(collector.address().c_str()), 0);
  ASSERT_TRUE(collector.wait_closed(0, 20s));  // the scenario destroyed its agent
  const auto recs = collector.records();
  ASSERT_FALSE(recs.empty());
  const auto* hello = std::get_if<wire::Hello>(&recs.front());
  ASSERT_NE(hello, nullptr);
  EXPECT_EQ(hello->service, "c-test");
  EXPECT_EQ(hello->rank, 2u);
  EXPECT_EQ(hello->world_size, 4u);

  const auto spans = only<wire::Span>(recs);
  ASSERT_EQ(spans.size(), 3u);
  // Ranges are recorded when they end: inner (depth 1) first.
  EXPECT_EQ(spans[0].request_id, 6u);
  EXPECT_EQ(spans[0].depth, 1);
  EXPECT_EQ(spans[1].request_id, 5u);
  EXPECT_EQ(spans[1].depth, 0);
  EXPECT_LE(spans[1].start_ns, spans[0].start_ns);
  EXPECT_GE(spans[1].end_ns, spans[0].end_ns);
  EXPECT_EQ(spans[2].end_ns - spans[2].start_ns, 10);

  const auto loads = only<wire::ExpertLoad>(recs);
  ASSERT_EQ(loads.size(), 1u);
  EXPECT_EQ(loads[0].routed, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(loads[0].rerouted, 1u);
  EXPECT_EQ(only<wire::MemorySample>(recs).size(), 1u);  // the bad kind was dropped
  EXPECT_EQ(only<wire::StageTiming>(recs).size(), 1u);   // the bad stage was dropped
  const auto reqs = only<wire::RequestEvent>(recs);
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].prompt_tokens, 12u);
  EXPECT_EQ(reqs[0].cached_tokens, 4u);
  EXPECT_EQ(reqs[0].first_token_ns - reqs[0].arrival_ns, 50);
}

// Issue 20: a range named through inferscope_intern_layer carries its layer as
// the typed span arg "layer"; other ranges carry none; a bad layer ties nothing.
TEST(AgentCApi, LayerRangesCarryTheirLayerAsATypedArg) {
  testing::TestCollector collector;
  EXPECT_EQ(inferscope_intern_layer(nullptr, 1), 0u);
  const uint32_t layer7 = inferscope_intern_layer("c_api_test.layer.7", 7);
  EXPECT_EQ(inferscope_intern_layer("c_api_test.layer.7", 7), layer7) << "same name, same layer";
  const uint32_t plain = inferscope_intern("c_api_test.not_a_layer");
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(inferscope_intern_layer("c_api_test.layer.7", 8), layer7);  // keeps layer 7
  const uint32_t too_deep = inferscope_intern_layer("c_api_test.layer.big", 1024);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("names another layer already"), std::string::npos) << err;
  EXPECT_NE(err.find("past the last layer"), std::string::npos) << err;
  inferscope_agent* a = inferscope_agent_create(collector.address().c_str(), "c-layer", 0, 1);
  ASSERT_NE(a, nullptr);
  for (uint32_t name : {layer7, plain, too_deep}) {
    inferscope_range r;
    inferscope_range_begin(a, &r, name, 0);
    inferscope_range_end(&r);
  }
  ASSERT_EQ(inferscope_agent_flush(a, 20'000), 1);
  inferscope_agent_destroy(a);
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  const auto recs = collector.records();
  uint32_t layer_key = 0;
  for (const auto& d : only<wire::StringDef>(recs))
    if (d.value == "layer") layer_key = d.id;
  ASSERT_NE(layer_key, 0u) << "the arg key reaches the collector as a string";
  std::map<uint32_t, std::vector<wire::SpanArg>> args;
  for (const auto& s : only<wire::Span>(recs))
    args[s.name_id].assign(s.args.begin(), s.args.begin() + s.num_args);
  ASSERT_EQ(args.size(), 3u);
  EXPECT_EQ(args[layer7], (std::vector<wire::SpanArg>{{layer_key, 7}}));
  EXPECT_TRUE(args[plain].empty());
  EXPECT_TRUE(args[too_deep].empty());
}

// One step's loads of several layers in one call (the Python binding's per-step path): each
// layer's counts, tokens and dropped land as its own expert_load record; NULL arrays send nothing.
TEST(AgentCApi, ExpertLoadsOfSeveralLayersInOneCall) {
  testing::TestCollector collector;
  inferscope_agent* a = inferscope_agent_create(collector.address().c_str(), "c-loads", 0, 1);
  ASSERT_NE(a, nullptr);
  // Two layers in one buffer: layer 3 has 4 experts at 0, layer 9 has 2 experts at 5.
  const uint32_t counts[] = {1, 2, 3, 4, 99, 7, 8, 99};
  const uint32_t layers[] = {3, 9}, offsets[] = {0, 5}, experts[] = {4, 2};
  const uint32_t tokens[] = {5, 6}, dropped[] = {0, 2};
  inferscope_expert_loads(a, 11, 2, layers, counts, offsets, experts, tokens, dropped);
  inferscope_expert_loads(a, 12, 2, nullptr, counts, offsets, experts, tokens, dropped);
  inferscope_expert_loads(nullptr, 13, 2, layers, counts, offsets, experts, tokens, dropped);
  ASSERT_EQ(inferscope_agent_flush(a, 20'000), 1);
  inferscope_agent_destroy(a);
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  const auto loads = only<wire::ExpertLoad>(collector.records());
  ASSERT_EQ(loads.size(), 2u);
  expect_load(loads[0], 11, 3, {1, 2, 3, 4}, 5, 0);
  expect_load(loads[1], 11, 9, {7, 8}, 6, 2);
}

// Several steps in one call (inferscope.torch's path for a group of steps copied together):
// each step's row gives each layer's counts and its dropped bin; a layer with 0 tokens in a
// step, or whose bins would run past the row, sends nothing; the dropped ids sent are returned.
TEST(AgentCApi, ExpertLoadsOfSeveralStepsInOneCall) {
  testing::TestCollector collector;
  inferscope_agent* a = inferscope_agent_create(collector.address().c_str(), "c-steps", 0, 1);
  ASSERT_NE(a, nullptr);
  // Rows of 8: layer 3 has 4 experts at 0 (dropped bin 4), layer 9 has 2 at 5 (dropped bin 7);
  // layer 5 claims 3 experts at 6, which runs past the row: never sent.
  const uint32_t counts[] = {1, 2, 3, 4, 1, 7, 8, 2,    // step 20
                             5, 6, 7, 8, 0, 9, 9, 40};  // step 22: layer 9 did not run
  const uint64_t steps[] = {20, 22};
  const uint32_t layers[] = {3, 9, 5}, offsets[] = {0, 5, 6}, experts[] = {4, 2, 3};
  const uint32_t tokens[] = {5,  6, 1,   // step 20
                             13, 0, 1};  // step 22
  EXPECT_EQ(
      inferscope_expert_loads_steps(a, 2, steps, 3, layers, offsets, experts, counts, 8, tokens),
      3u);  // 1 + 2 + 0: step 22's layer 9 (40 dropped) had no tokens
  EXPECT_EQ(
      inferscope_expert_loads_steps(a, 2, steps, 3, nullptr, offsets, experts, counts, 8, tokens),
      0u);
  EXPECT_EQ(inferscope_expert_loads_steps(nullptr, 2, steps, 3, layers, offsets, experts, counts, 8,
                                          tokens),
            0u);
  ASSERT_EQ(inferscope_agent_flush(a, 20'000), 1);
  inferscope_agent_destroy(a);
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  const auto loads = only<wire::ExpertLoad>(collector.records());
  ASSERT_EQ(loads.size(), 3u);
  expect_load(loads[0], 20, 3, {1, 2, 3, 4}, 5, 1);
  expect_load(loads[1], 20, 9, {7, 8}, 6, 2);
  expect_load(loads[2], 22, 3, {5, 6, 7, 8}, 13, 0);
}

// GPU trace calls (issue 19) from C: NULL is harmless, bad modes are refused,
// captures are scheduled and counted even where CUPTI is absent.
TEST(AgentCApi, GpuTraceCalls) {
  EXPECT_EQ(inferscope_set_gpu_trace_mode(nullptr, INFERSCOPE_GPU_TRACE_FULL), -1);
  EXPECT_EQ(inferscope_gpu_trace_mode(nullptr), INFERSCOPE_GPU_TRACE_OFF);
  EXPECT_EQ(inferscope_request_gpu_capture(nullptr, 4, 0, 1), INFERSCOPE_CAPTURE_REFUSED_OFF);
  inferscope_gpu_step(nullptr);
  inferscope_gpu_trace_stats null_stats;
  inferscope_agent_gpu_trace_stats(nullptr, &null_stats);
  EXPECT_EQ(null_stats.captures_requested, 0u);

  ::setenv("INFERSCOPE_CUPTI_LIBRARY", "/nonexistent/libcupti.so", 1);
  ::setenv("INFERSCOPE_COLLECTOR", "off", 1);
  ::testing::internal::CaptureStderr();
  inferscope_agent* a = inferscope_agent_create_from_env();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(inferscope_set_gpu_trace_mode(a, 7), -1);
  EXPECT_EQ(inferscope_request_gpu_capture(a, 0, 5, 9), INFERSCOPE_CAPTURE_REFUSED_OFF);
  EXPECT_EQ(inferscope_set_gpu_trace_mode(a, INFERSCOPE_GPU_TRACE_TRIGGERED), 0);
  EXPECT_EQ(inferscope_gpu_trace_mode(a), INFERSCOPE_GPU_TRACE_TRIGGERED);
  EXPECT_EQ(inferscope_request_gpu_capture(a, 2, 0, 9), INFERSCOPE_CAPTURE_STARTED);
  EXPECT_EQ(inferscope_request_gpu_capture(a, 2, 0, 10), INFERSCOPE_CAPTURE_REFUSED_BUSY);
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // steps a few ms apart
    inferscope_gpu_step(a);
  }
  inferscope_gpu_trace_stats st;
  for (int i = 0; i < 30'000; ++i) {
    inferscope_agent_gpu_trace_stats(a, &st);
    if (st.captures_completed == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(st.mode, INFERSCOPE_GPU_TRACE_TRIGGERED);
  EXPECT_EQ(st.cupti_available, 0);
  EXPECT_EQ(st.captures_requested, 3u);
  EXPECT_EQ(st.captures_refused_off, 1u);
  EXPECT_EQ(st.captures_refused_busy, 1u);
  EXPECT_EQ(st.captures_started, 1u);
  EXPECT_EQ(st.captures_completed, 1u);

  // Revision 2 (detach counters, appended): the sized call writes exactly the
  // bytes it is given; the revision-1 call never writes past records_dropped,
  // which is all a binary built against the older agent.h has.
  inferscope_gpu_trace_stats full;
  std::memset(&full, 0xab, sizeof full);
  inferscope_agent_gpu_trace_stats_sized(a, &full, sizeof full);
  EXPECT_EQ(full.captures_completed, 1u);
  EXPECT_EQ(full.cupti_detaches, 0u) << "no CUPTI here: nothing detached";
  EXPECT_EQ(full.cupti_reattaches, 0u);
  EXPECT_EQ(full.cupti_detach_errors, 0u);
  constexpr uint64_t kUntouched = 0xabababababababab;
  inferscope_gpu_trace_stats old_caller;
  std::memset(&old_caller, 0xab, sizeof old_caller);
  inferscope_agent_gpu_trace_stats(a, &old_caller);
  EXPECT_EQ(old_caller.captures_completed, 1u);
  EXPECT_EQ(old_caller.records_dropped, 0u);
  EXPECT_EQ(old_caller.cupti_detaches, kUntouched) << "written past revision 1";
  EXPECT_EQ(old_caller.cupti_detach_errors, kUntouched);
  inferscope_gpu_trace_stats short_caller;
  std::memset(&short_caller, 0xab, sizeof short_caller);
  inferscope_agent_gpu_trace_stats_sized(a, &short_caller,
                                         offsetof(inferscope_gpu_trace_stats, cupti_reattaches));
  EXPECT_EQ(short_caller.cupti_detaches, 0u);
  EXPECT_EQ(short_caller.cupti_reattaches, kUntouched) << "written past the size given";
  inferscope_agent_gpu_trace_stats_sized(nullptr, &short_caller, sizeof short_caller);
  EXPECT_EQ(short_caller.cupti_reattaches, 0u) << "NULL agent: all zero";
  inferscope_agent_gpu_trace_stats_sized(a, nullptr, sizeof full);  // harmless
  inferscope_agent_destroy(a);
  ::testing::internal::GetCapturedStderr();
  ::unsetenv("INFERSCOPE_CUPTI_LIBRARY");
  ::unsetenv("INFERSCOPE_COLLECTOR");
}

}  // namespace
}  // namespace inferscope::agent
