// The trace store fed through the pipeline's record tap (the collector's path:
// the summaries' first level merged from the records the pipeline decoded
// anyway) writes byte for byte the file that the decode-it-again path writes
// for the same frames: with frames rejected part-way (their records must leave
// nothing in the summaries), duplicates skipped whole, alert frames raised in
// the middle of a frame, frames compressed by their agent, hellos sent again
// (the pipeline re-encodes those frames), blocks sealed by size, inline and on
// the store's thread. The tapped store's blocks are also column-split by the
// pipeline's decoder as it decodes them (wire::ColumnBuilder): every one of
// those cases takes its own path there.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "inferscope/collector/pipeline.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kWindow = 200'000'000;

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TraceStoreOptions store_options(const fs::path& dir, bool background) {
  TraceStoreOptions o;
  o.dir = dir.string();
  o.max_bytes = 1ull << 32;
  o.segment_bytes = 1ull << 32;  // one segment: its replay is taken once, at open()
  o.block_bytes = 48u << 10;     // many blocks, sealed mid-stream by size
  o.background = background;
  return o;
}

// Spans on a few lanes (4 threads x 2 depths, one GPU stream), short enough
// and close enough that the first summary level merges many of them.
void add_spans(std::mt19937& rng, int64_t& t, int n, std::vector<wire::Record>& out) {
  for (int i = 0; i < n; ++i) {
    wire::Span s;
    t += 200 + rng() % 3000;
    s.start_ns = t;
    s.end_ns = t + 100 + (rng() % 10 == 0 ? rng() % 400'000 : rng() % 20'000);
    s.name_id = 1 + rng() % 4;
    if (rng() % 5 == 0) {
      s.track_kind = wire::TrackKind::kGpuStream;
      s.category = wire::SpanCategory::kKernel;
      s.stream = 3;
      s.correlation_id = 1 + rng() % 1000;
    } else {
      s.track_id = 100 + rng() % 4;
      s.depth = static_cast<uint16_t>(rng() % 2);
    }
    out.push_back(s);
  }
}

struct FeedCounts {
  uint64_t accepted = 0, rejected = 0, duplicates = 0, alerts_mid_frame = 0, compressed = 0,
           hellos_again = 0;
};

// Feeds the same agent traffic to store `tapped` through the pipeline's tap and
// to store `decoded` by write(frame, now), which decodes each frame itself.
// Frames the pipeline forwards during one on_frame() go to `decoded` in the
// order the tapped store keeps them: the agent's frame, then the alerts it raised.
FeedCounts feed(TraceStore& tapped, TraceStore& decoded) {
  CollectorOptions options;
  options.aggregation.window_ns = kWindow;
  // Hellos carry a token, which the pipeline clears: a hello's frame is stored
  // re-encoded, not as it was decoded.
  options.auth_token = "t0ken";
  const auto hello = [&](const std::string& model, uint32_t rank) {
    wire::Hello h = make_hello(model, rank, 1, 8);
    h.auth_token = options.auth_token;
    return h;
  };
  CollectorMetrics metrics;
  Pipeline p(options, metrics, nullptr);
  std::vector<SharedFrame> forwarded;
  p.set_frame_sink([&](const SharedFrame& f) {
    tapped.write(*f, p.sink_frame_summary(), 0);
    forwarded.push_back(f);
  });
  p.set_record_tap(&tapped.record_tap());
  FeedCounts run;
  auto send = [&](Session& s, const std::vector<wire::Record>& records, bool compress = false) {
    forwarded.clear();
    Rejection why;
    const bool ok = p.on_frame(s, frame_from(0, records, compress), why);
    // The agent's frame is the last one forwarded (alerts go out as they are raised).
    if (!forwarded.empty() && wire::peek_frame_header(*forwarded.back())->source_id != 0) {
      decoded.write(*forwarded.back(), 0);
      forwarded.pop_back();
      run.alerts_mid_frame += forwarded.size();
    }
    for (const auto& f : forwarded) decoded.write(*f, 0);
    return ok;
  };
  std::mt19937 rng(5);
  Session good(options.limits);
  std::vector<wire::Record> first{hello("m", 0)};
  for (uint32_t i = 1; i <= 4; ++i) first.push_back(wire::StringDef{i, "op" + std::to_string(i)});
  EXPECT_TRUE(send(good, first));
  int64_t t = 0;
  uint64_t seq = 0;
  for (int f = 0; f < 160; ++f) {
    // A load per frame, in the middle of its spans: expert 5 hot for 6 windows
    // out of 10 (4 frames a window), so episodes open and close mid-frame.
    const int64_t window = t / kWindow;
    const bool hot = window % 10 < 6;
    std::vector<wire::Record> recs{wire::FrameSequence{1, ++seq}};
    if (f % 9 == 4) recs.push_back(wire::StringDef{5, "late-string-" + std::to_string(f)});
    add_spans(rng, t, 150 + static_cast<int>(rng() % 300), recs);
    std::vector<uint32_t> load(8, 10);
    if (hot) load[5] = 40;
    recs.push_back(make_load(0, t, load));
    add_spans(rng, t, 150 + static_cast<int>(rng() % 300), recs);
    t = (t / (kWindow / 4) + 1) * (kWindow / 4);
    if (f % 13 == 6) {  // the agent describes itself again (set_model)
      recs.insert(recs.begin() + 1, hello("m", 0));
      ++run.hellos_again;
    }
    const bool compress = f % 5 == 2;
    run.compressed += compress;
    EXPECT_TRUE(send(good, recs, compress));
    ++run.accepted;
    if (f % 7 == 3) {
      // Sent again (an agent's resend after a reconnect): skipped whole.
      recs[0] = wire::FrameSequence{1, seq};
      EXPECT_TRUE(send(good, recs));
      ++run.duplicates;
    }
    if (f % 11 == 5) {
      // Another agent's frame rejected part-way: spans, then a load for a
      // layer its model lacks. Its spans were tapped and must be taken out.
      Session bad(options.limits);
      EXPECT_TRUE(send(bad, {hello("m2", 1)}));
      int64_t bt = t - kWindow / 8;
      std::vector<wire::Record> bad_recs;
      add_spans(rng, bt, 300, bad_recs);
      bad_recs.push_back(make_load(7, bt, std::vector<uint32_t>(8, 1)));
      add_spans(rng, bt, 50, bad_recs);
      EXPECT_FALSE(send(bad, bad_recs));
      p.on_close(bad);
      ++run.rejected;
    }
  }
  tapped.flush();
  decoded.flush();
  return run;
}

class StoreTapTest : public ::testing::TestWithParam<bool> {};

TEST_P(StoreTapTest, TappedStoreWritesWhatTheDecodingStoreWrites) {
  const bool background = GetParam();
  TempDir a("store-tap-a"), b("store-tap-b");
  TraceStore tapped(store_options(a.path, background), nullptr, nullptr);
  TraceStore decoded(store_options(b.path, background), nullptr, nullptr);
  std::string error;
  ASSERT_TRUE(tapped.open(error)) << error;
  ASSERT_TRUE(decoded.open(error)) << error;
  const FeedCounts run = feed(tapped, decoded);
  // The cases the test is about did happen.
  EXPECT_GT(run.alerts_mid_frame, 0u);
  EXPECT_GT(run.rejected, 0u);
  EXPECT_GT(run.duplicates, 0u);
  EXPECT_GT(run.compressed, 0u);
  EXPECT_GT(run.hellos_again, 0u);
  const auto stats = tapped.stats();
  EXPECT_GT(stats.blocks_written, 20u);
  EXPECT_GT(stats.summary_blocks_written, stats.blocks_written);
  EXPECT_EQ(stats.write_errors, 0u);
  EXPECT_EQ(stats.frames_written, decoded.stats().frames_written);
  const auto pa = tapped.segment_paths(), pb = decoded.segment_paths();
  tapped.close();
  decoded.close();
  ASSERT_EQ(pa.size(), 1u);
  ASSERT_EQ(pb.size(), 1u);
  const auto fa = read_file(pa[0]), fb = read_file(pb[0]);
  ASSERT_GT(fa.size(), 100'000u);
  ASSERT_EQ(fa.size(), fb.size());
  EXPECT_TRUE(fa == fb) << "the tapped store's file differs from the decoding store's";
}

INSTANTIATE_TEST_SUITE_P(InlineAndThread, StoreTapTest, ::testing::Bool(),
                         [](const auto& test) { return test.param ? "thread" : "inline"; });

}  // namespace
