// The C API, driven from a C translation unit (c_api_scenario.c), checked
// against what a real loopback server decodes.
#include <gtest/gtest.h>

#include "test_collector.hpp"

extern "C" int inferscope_c_api_scenario(const char* collector);

namespace inferscope::agent {
namespace {

using testing::only;
using namespace std::chrono_literals;

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

}  // namespace
}  // namespace inferscope::agent
