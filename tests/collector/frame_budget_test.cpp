// FrameBudget: growth beyond the budget fails and changes nothing; connections
// without a hello are held to their own, smaller share; shrinking and release
// always give the bytes back.
#include "inferscope/collector/frame_budget.hpp"

#include <gtest/gtest.h>

using inferscope::collector::FrameBudget;

TEST(FrameBudget, GrowthBeyondTheBudgetFailsAndChangesNothing) {
  FrameBudget b(1000, 300);
  FrameBudget::Share x, y;
  ASSERT_TRUE(b.set(x, 600, false));
  ASSERT_TRUE(b.set(y, 400, false));
  EXPECT_EQ(b.used(), 1000u);
  FrameBudget::Share z;
  EXPECT_FALSE(b.set(z, 1, false));
  EXPECT_FALSE(b.set(x, 601, false));
  EXPECT_EQ(x.bytes, 600u);
  EXPECT_EQ(b.used(), 1000u);
  ASSERT_TRUE(b.set(x, 100, false));  // shrinking always fits
  EXPECT_TRUE(b.set(z, 500, false));
  b.release(x);
  b.release(y);
  b.release(z);
  EXPECT_EQ(b.used(), 0u);
}

TEST(FrameBudget, ConnectionsWithoutAHelloHaveTheirOwnShare) {
  FrameBudget b(1000, 300);
  FrameBudget::Share a, c, agent;
  ASSERT_TRUE(b.set(a, 200, true));
  EXPECT_FALSE(b.set(c, 200, true));  // 400 > the before-hello share of 300
  ASSERT_TRUE(b.set(c, 100, true));
  EXPECT_EQ(b.used_before_hello(), 300u);
  // An agent past its hello still gets the rest of the budget.
  EXPECT_TRUE(b.set(agent, 700, false));
  EXPECT_EQ(b.used(), 1000u);
  // A connection that completes its hello moves its bytes out of the before-hello share.
  b.release(agent);
  ASSERT_TRUE(b.set(a, 250, false));
  EXPECT_EQ(b.used_before_hello(), 100u);
  EXPECT_EQ(b.used(), 350u);
  b.release(a);
  b.release(c);
  EXPECT_EQ(b.used(), 0u);
  EXPECT_EQ(b.used_before_hello(), 0u);
}
