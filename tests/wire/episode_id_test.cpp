// The two names of an alert episode (wire/episode_id.hpp): the collector tags a capture with one,
// the viewer recomputes it from the alert record to find the capture, so it has to be a pure
// function of the identifying fields, stable, and never 0 (0 is "a user's capture").
#include "inferscope/wire/episode_id.hpp"

#include <gtest/gtest.h>

#include <set>

namespace inferscope::wire {
namespace {

AlertEpisode hot_episode() {
  AlertEpisode a;
  a.kind = AlertKind::kHotExpert;
  a.model = "mixtral";
  a.rank = 3;
  a.layer = 7;
  a.expert = 2;
  a.start_ns = 4'000'000;
  a.end_ns = 9'000'000;
  a.peak_share = 0.5f;
  return a;
}

TEST(EpisodeId, TextNamesKindRankLayerExpertAndStart) {
  EXPECT_EQ(episode_id(hot_episode()), "hot_expert-r3-l7-e2-4000000");
}

TEST(EpisodeId, CaptureTagDependsOnlyOnTheIdentifyingFields) {
  AlertEpisode a = hot_episode();
  const uint64_t tag = episode_capture_tag(a);
  EXPECT_GT(tag, 0u);
  EXPECT_LE(tag, uint64_t(INT64_MAX));  // it travels as an int64 span argument
  // The closing record of the same episode (end, peak filled in) names the same capture.
  a.end_ns = 0;
  a.peak_share = 0.9f;
  EXPECT_EQ(episode_capture_tag(a), tag);

  std::set<uint64_t> tags{tag};
  auto differs = [&](auto change) {
    AlertEpisode b = hot_episode();
    change(b);
    return tags.insert(episode_capture_tag(b)).second;
  };
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.kind = AlertKind::kDeadExpert; }));
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.model = "olmoe"; }));
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.rank = 4; }));
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.layer = 8; }));
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.expert = 5; }));
  EXPECT_TRUE(differs([](AlertEpisode& b) { b.start_ns = 4'000'001; }));
}

}  // namespace
}  // namespace inferscope::wire
