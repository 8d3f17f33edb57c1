// RateLimitedLog with an injected clock: one line per key per interval, the
// suppressed count on the next line or in flush_due(), nothing lost at the end.
#include "inferscope/collector/rate_limited_log.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using inferscope::collector::RateLimitedLog;
using namespace std::chrono_literals;

namespace {

struct Fixture {
  std::vector<std::string> lines;
  std::chrono::steady_clock::time_point now{};  // the injected clock
  RateLimitedLog log{[this](const std::string& l) { lines.push_back(l); }, 10s,
                     [this] { return now; }};
};

bool contains(const std::string& line, const std::string& part) {
  return line.find(part) != std::string::npos;
}

}  // namespace

TEST(RateLimitedLog, AFloodWritesOneLinePerKeyPerIntervalWithTheCount) {
  Fixture f;
  for (int i = 0; i < 6400; ++i) {
    f.log.write("connection_limit", "refusing a connection " + std::to_string(i));
    f.now += 1ms;  // 6.4 s of flood: inside one interval
  }
  ASSERT_EQ(f.lines.size(), 1u);
  EXPECT_EQ(f.lines[0], "refusing a connection 0");
  EXPECT_EQ(f.log.suppressed_total(), 6399u);

  // Another key is not held back by the first one.
  f.log.write("timeout", "closing a: no hello in time");
  ASSERT_EQ(f.lines.size(), 2u);

  // Not yet due: 6.4 s since the first line.
  f.log.flush_due();
  EXPECT_EQ(f.lines.size(), 2u);

  // The interval has passed: the next line carries the count.
  f.now += 4s;
  f.log.write("connection_limit", "refusing a connection again");
  ASSERT_EQ(f.lines.size(), 3u);
  EXPECT_TRUE(contains(f.lines[2], "refusing a connection again")) << f.lines[2];
  EXPECT_TRUE(contains(f.lines[2], "6399 more \"connection_limit\" lines suppressed"))
      << f.lines[2];
}

TEST(RateLimitedLog, FlushDueWritesTheCountOnceTheFloodHasStopped) {
  Fixture f;
  f.log.write("timeout", "closing a");
  f.log.write("timeout", "closing b");
  f.log.write("timeout", "closing c");
  ASSERT_EQ(f.lines.size(), 1u);
  f.now += 9s;
  f.log.flush_due();
  EXPECT_EQ(f.lines.size(), 1u);  // not due yet
  f.now += 1s;
  f.log.flush_due();
  ASSERT_EQ(f.lines.size(), 2u);
  EXPECT_TRUE(contains(f.lines[1], "2 more \"timeout\" lines suppressed")) << f.lines[1];
  EXPECT_TRUE(contains(f.lines[1], "closing c")) << f.lines[1];  // the last one, as an example
  // Nothing owed: later flushes write nothing.
  f.now += 60s;
  f.log.flush_due();
  EXPECT_EQ(f.lines.size(), 2u);
}

TEST(RateLimitedLog, FlushAllAndTheDestructorWriteWhatIsOwed) {
  std::vector<std::string> lines;
  std::chrono::steady_clock::time_point now{};
  {
    RateLimitedLog log([&](const std::string& l) { lines.push_back(l); }, 10s, [&] { return now; });
    log.write("auth", "closing a");
    log.write("auth", "closing b");
    log.write("truncated", "closing c");
    log.write("truncated", "closing d");
    log.flush_all();
    ASSERT_EQ(lines.size(), 4u);
    EXPECT_TRUE(contains(lines[2], "1 more \"auth\" line suppressed")) << lines[2];
    EXPECT_TRUE(contains(lines[3], "1 more \"truncated\" line suppressed")) << lines[3];
    log.write("auth", "closing e");  // within the interval of the flush: suppressed
    ASSERT_EQ(lines.size(), 4u);
  }
  ASSERT_EQ(lines.size(), 5u);  // the destructor wrote the count of "closing e"
  EXPECT_TRUE(contains(lines[4], "closing e")) << lines[4];
}

TEST(RateLimitedLog, NullSinkIsANoOp) {
  RateLimitedLog log(nullptr);
  log.write("x", "y");
  log.flush_all();
  EXPECT_EQ(log.suppressed_total(), 0u);
}
