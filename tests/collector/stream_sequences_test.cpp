// StreamSequences: the collector's memory of the last frame applied per agent stream.
#include "inferscope/collector/stream_sequences.hpp"

#include <gtest/gtest.h>

namespace inferscope::collector {
namespace {

TEST(StreamSequences, AdmitsEachFrameOnceAndNeverGoesBack) {
  StreamSequences s;
  EXPECT_TRUE(s.admit(7, 1));
  EXPECT_TRUE(s.admit(7, 2));
  EXPECT_FALSE(s.admit(7, 2)) << "a re-sent frame";
  EXPECT_FALSE(s.admit(7, 1)) << "an older frame";
  EXPECT_TRUE(s.admit(7, 5)) << "numbers may skip (frames the agent gave up on)";
  EXPECT_FALSE(s.admit(7, 4));
  EXPECT_TRUE(s.admit(8, 1)) << "streams are independent";
  EXPECT_EQ(s.last(7), 5u);
  EXPECT_EQ(s.last(9), 0u);
}

TEST(StreamSequences, SeedRaisesTheMarkWithoutLoweringIt) {
  StreamSequences s;
  s.seed(3, 10);
  EXPECT_FALSE(s.admit(3, 10));
  EXPECT_TRUE(s.admit(3, 11));
  s.seed(3, 4);
  EXPECT_EQ(s.last(3), 11u);
}

TEST(StreamSequences, BoundedForgetsTheStreamSeenLongestAgo) {
  StreamSequences s(3);
  s.admit(1, 1);
  s.admit(2, 1);
  s.admit(3, 1);
  s.admit(1, 2);  // 1 is recent again; 2 is now the oldest
  s.admit(4, 1);
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s.last(2), 0u);
  EXPECT_EQ(s.last(1), 2u);
  EXPECT_EQ(s.last(3), 1u);
  EXPECT_EQ(s.last(4), 1u);
}

}  // namespace
}  // namespace inferscope::collector
