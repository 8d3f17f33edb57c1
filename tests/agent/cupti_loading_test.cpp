// CUPTI is dlopen'ed only when tracing is asked for (agent/src/cupti/
// cupti_api.hpp). A missing libcupti must give one clear message on stderr
// and leave the agent recording and shipping everything else.
#include <gtest/gtest.h>

#include <cstdlib>

#include "inferscope/agent.hpp"
#include "test_collector.hpp"

namespace inferscope::agent {
namespace {

using namespace std::chrono_literals;

TEST(AgentCuptiLoading, MissingLibcuptiIsReportedAndTheAgentKeepsWorking) {
  // Before the first load: the loader reads the variable once per process.
  ::setenv("INFERSCOPE_CUPTI_LIBRARY", "/nonexistent/libcupti.so.13", 1);
  testing::TestCollector collector;
  Config c;
  c.collector = collector.address();
  c.cupti = true;
  ::testing::internal::CaptureStderr();
  {
    Agent agent(c);
    EXPECT_FALSE(agent.cupti_active());
    static const uint32_t kName = intern("cupti_loading_test");
    { ScopedRange r(agent, kName); }  // no CUPTI push without a tracer
    EXPECT_TRUE(agent.flush(10s));
    EXPECT_GE(agent.stats().records_sent, 1u);
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(collector.wait_closed(0, 20s));
  ::unsetenv("INFERSCOPE_CUPTI_LIBRARY");
#ifdef INFERSCOPE_AGENT_TEST_CUPTI_BUILT
  EXPECT_NE(err.find("libcupti could not be loaded"), std::string::npos) << err;
  EXPECT_NE(err.find("/nonexistent/libcupti.so.13"), std::string::npos) << err;
  EXPECT_NE(err.find("INFERSCOPE_CUPTI_LIBRARY"), std::string::npos) << err;
#else
  EXPECT_NE(err.find("no CUDA support"), std::string::npos) << err;
#endif
  EXPECT_EQ(testing::only<wire::Span>(collector.records()).size(), 1u);
}

}  // namespace
}  // namespace inferscope::agent
