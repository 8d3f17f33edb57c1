// Aggregation math on hand-computed inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/layer_stats.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/placement.hpp"

using namespace inferscope::collector;

TEST(LayerStats, UtilizationImbalanceCvAndDrops) {
  // 4 experts, 100 assignments: ideal 25 each.
  const std::vector<uint64_t> load{50, 25, 25, 0};
  LayerStats s = compute_layer_stats(load, 10);
  EXPECT_EQ(s.routed, 100u);
  EXPECT_DOUBLE_EQ(s.utilization[0], 2.0);
  EXPECT_DOUBLE_EQ(s.utilization[1], 1.0);
  EXPECT_DOUBLE_EQ(s.utilization[3], 0.0);
  EXPECT_DOUBLE_EQ(s.share[0], 0.5);
  EXPECT_DOUBLE_EQ(s.imbalance, 2.0);
  EXPECT_DOUBLE_EQ(s.max_utilization, 2.0);
  EXPECT_DOUBLE_EQ(s.min_utilization, 0.0);
  // Loads relative to the mean: 2,1,1,0 -> deviations 1,0,0,-1 -> var 0.5.
  EXPECT_NEAR(s.cv, std::sqrt(0.5), 1e-12);
  EXPECT_DOUBLE_EQ(s.drop_ratio, 0.1);
}

TEST(LayerStats, BalancedLayerHasCvZero) {
  const std::vector<uint64_t> load{7, 7, 7, 7, 7, 7, 7, 7};
  LayerStats s = compute_layer_stats(load, 0);
  EXPECT_DOUBLE_EQ(s.imbalance, 1.0);
  EXPECT_DOUBLE_EQ(s.cv, 0.0);
  EXPECT_DOUBLE_EQ(s.min_utilization, 1.0);
}

TEST(LayerStats, IdleLayerIsAllZero) {
  const std::vector<uint64_t> load{0, 0, 0};
  LayerStats s = compute_layer_stats(load, 0);
  EXPECT_EQ(s.routed, 0u);
  EXPECT_EQ(s.imbalance, 0.0);
  EXPECT_EQ(s.utilization.size(), 3u);
}

TEST(RankLoad, ReplicasSplitLoadEvenly) {
  // Experts 0..3 on ranks 0,0,1,1; expert 0 also replicated on rank 1.
  const std::vector<uint64_t> load{60, 20, 10, 10};
  const std::vector<std::vector<uint32_t>> placement{{0, 1}, {0}, {1}, {1}};
  RankLoad r = compute_rank_load(load, placement, 2);
  EXPECT_DOUBLE_EQ(r.load[0], 50.0);  // 30 + 20
  EXPECT_DOUBLE_EQ(r.load[1], 50.0);  // 30 + 10 + 10
  EXPECT_DOUBLE_EQ(r.balancedness, 1.0);
  // Without the replica: 80 vs 20 -> mean 50, max 80.
  RankLoad r2 = compute_rank_load(load, {{0}, {0}, {1}, {1}}, 2);
  EXPECT_DOUBLE_EQ(r2.balancedness, 50.0 / 80.0);
  EXPECT_DOUBLE_EQ(r2.utilization[0], 80.0 / 50.0);
  EXPECT_DOUBLE_EQ(r2.utilization[1], 20.0 / 50.0);
}

TEST(Placement, ParsesTablesAndOverrides) {
  Placement p;
  std::string error;
  ASSERT_TRUE(parse_placement(R"({"ranks": 4, "expert_to_ranks": [[0], [1, 3], [2]],
                                   "layers": {"5": [[3], [2], [1]]}})", p, error)) << error;
  EXPECT_EQ(p.ranks, 4u);
  ASSERT_EQ(p.expert_to_ranks.size(), 3u);
  EXPECT_EQ(p.expert_to_ranks[1], (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(p.for_layer(5)[0], std::vector<uint32_t>{3});
  EXPECT_EQ(p.for_layer(4)[0], std::vector<uint32_t>{0});
  ASSERT_TRUE(parse_placement(R"({"expert_to_rank": [0, 1, 1, 0]})", p, error)) << error;
  EXPECT_EQ(p.ranks, 2u);
}

TEST(Placement, RejectsBadInputWithAMessage) {
  Placement p;
  std::string error;
  EXPECT_FALSE(parse_placement("not json", p, error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(parse_placement(R"({"expert_to_ranks": [[-1]]})", p, error));
  EXPECT_NE(error.find("expert_to_ranks[0]"), std::string::npos) << error;
  EXPECT_FALSE(parse_placement(R"({"ranks": 1, "expert_to_ranks": [[0], [3]]})", p, error));
  EXPECT_FALSE(parse_placement(R"({"expert_to_ranks": [[0]], "layers": {"x": [[0]]}})", p, error));
}

TEST(Options, Durations) {
  EXPECT_EQ(parse_duration_ns("10s"), 10'000'000'000);
  EXPECT_EQ(parse_duration_ns("200ms"), 200'000'000);
  EXPECT_EQ(parse_duration_ns("1.5s"), 1'500'000'000);
  EXPECT_EQ(parse_duration_ns("2m"), 120'000'000'000);
  EXPECT_EQ(parse_duration_ns("3"), 3'000'000'000);
  EXPECT_FALSE(parse_duration_ns("").has_value());
  EXPECT_FALSE(parse_duration_ns("0s").has_value());
  EXPECT_FALSE(parse_duration_ns("10 parsecs").has_value());
}

TEST(Endpoint, ParsesTcpUnixAndBareForms) {
  std::string error;
  auto a = parse_endpoint("tcp://127.0.0.1:7431", error);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 7431);
  auto b = parse_endpoint("unix:///tmp/x.sock", error);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->kind, Endpoint::Kind::kUnix);
  EXPECT_EQ(b->path, "/tmp/x.sock");
  auto c = parse_endpoint("[::1]:0", error);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->to_string(), "tcp://[::1]:0");
  EXPECT_FALSE(parse_endpoint("127.0.0.1", error));
  EXPECT_FALSE(parse_endpoint("host:99999", error));
  EXPECT_FALSE(parse_endpoint("unix://", error));
}
