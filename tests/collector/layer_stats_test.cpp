// Collector configuration on hand-written inputs: placement files, durations, endpoints.
#include <gtest/gtest.h>

#include <cmath>

#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/placement.hpp"

using namespace inferscope::collector;

TEST(Placement, ParsesTablesAndOverrides) {
  Placement p;
  std::string error;
  ASSERT_TRUE(parse_placement(R"({"ranks": 4, "expert_to_ranks": [[0], [1, 3], [2]],
                                   "layers": {"5": [[3], [2], [1]]}})",
                              p, error))
      << error;
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
