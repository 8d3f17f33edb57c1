// Kind names both ways (wire/names.hpp): every alert and record kind's name
// parses back to that kind, and exported alert event names carry their kind.
#include "inferscope/wire/names.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace wire = inferscope::wire;

TEST(WireNames, EveryAlertKindRoundTrips) {
  std::set<std::string> names;
  for (uint8_t k = 0; k < wire::kAlertKindCount; ++k) {
    const auto kind = static_cast<wire::AlertKind>(k);
    const std::string name = wire::to_string(kind);
    EXPECT_NE(name, "unknown") << int(k);
    names.insert(name);
    ASSERT_EQ(wire::alert_kind_from_name(name), kind) << name;
  }
  EXPECT_EQ(names.size(), wire::kAlertKindCount);  // no two kinds share a name
  EXPECT_EQ(wire::alert_kind_from_name("hot_rank"), wire::AlertKind::kHotRank);
  EXPECT_EQ(wire::alert_kind_from_name("hot"), std::nullopt);  // whole names only
  EXPECT_EQ(wire::alert_kind_from_name(""), std::nullopt);
}

TEST(WireNames, EveryRecordKindRoundTrips) {
  std::set<std::string> names;
  for (uint8_t k = 0; k < wire::kRecordKindCount; ++k) {
    const auto kind = static_cast<wire::RecordKind>(k);
    const std::string name = wire::to_string(kind);
    EXPECT_NE(name, "unknown") << int(k);
    names.insert(name);
    ASSERT_EQ(wire::record_kind_from_name(name), kind) << name;
  }
  EXPECT_EQ(names.size(), wire::kRecordKindCount);
  EXPECT_EQ(wire::record_kind_from_name("no_such_record"), std::nullopt);
}

TEST(WireNames, ExportedAlertEventNamesCarryTheirKind) {
  for (uint8_t k = 0; k < wire::kAlertKindCount; ++k) {
    wire::AlertEpisode a;
    a.kind = static_cast<wire::AlertKind>(k);
    a.layer = 12;
    a.expert = 7;
    const std::string name = wire::alert_event_name(a);
    EXPECT_EQ(wire::alert_kind_of_event_name(name), a.kind) << name;
    EXPECT_EQ(wire::alert_kind_of_event_name(name + " opened"), a.kind) << name;
    EXPECT_EQ(name.find("expert 7") == std::string::npos, a.kind == wire::AlertKind::kDropBurst)
        << name;
  }
  EXPECT_EQ(wire::alert_kind_of_event_name("hot_rank layer 3 expert 5"), wire::AlertKind::kHotRank);
  EXPECT_EQ(wire::alert_kind_of_event_name("hot_expertise layer 1"), std::nullopt);
  EXPECT_EQ(wire::alert_kind_of_event_name("moe_gemm"), std::nullopt);
}
