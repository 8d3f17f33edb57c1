// The traffic matrix's totals and top pairs, on a matrix written out by hand.
#include "inferscope/analysis/ep_traffic.hpp"

#include <gtest/gtest.h>

namespace inferscope::analysis {
namespace {

// 3 ranks; row = sender, column = receiver; the diagonal is kept local.
const std::vector<uint64_t> kMatrix = {
    100, 7,  30,  //
    7,   50, 0,   //
    90,  2,  999,
};

TEST(EpTraffic, TotalsLeaveOutTheDiagonal) {
  TrafficTotals t = traffic_totals(kMatrix, 3);
  EXPECT_EQ(t.out, (std::vector<uint64_t>{37, 7, 92}));
  EXPECT_EQ(t.in, (std::vector<uint64_t>{97, 9, 30}));
}

TEST(EpTraffic, TopPairsAreTheHeaviestOffDiagonalWithStableTies) {
  auto top = top_traffic_pairs(kMatrix, 3, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0], (TrafficPair{2, 0, 90}));
  EXPECT_EQ(top[1], (TrafficPair{0, 2, 30}));
  EXPECT_EQ(top[2], (TrafficPair{0, 1, 7}));  // ties 0->1 and 1->0: lower src first
  // k larger than the non-zero pairs: every non-zero pair once (1->2 is 0: left out).
  EXPECT_EQ(top_traffic_pairs(kMatrix, 3, 64).size(), 5u);
  EXPECT_TRUE(top_traffic_pairs(kMatrix, 3, 0).empty());
}

TEST(EpTraffic, WrongSizeGivesNothing) {
  EXPECT_TRUE(top_traffic_pairs(kMatrix, 2, 4).empty());
  EXPECT_TRUE(traffic_totals(kMatrix, 4).out.empty());
}

}  // namespace
}  // namespace inferscope::analysis
