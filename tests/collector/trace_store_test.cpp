// Trace store: compressed blocks, rotation, the size and age bounds, replay at
// each segment's start, recovery after a torn tail, restart numbering, a full
// disk (RLIMIT_FSIZE), and range queries that read only overlapping blocks.
// Each runs with compression inline and on the store's own thread.
#include "inferscope/collector/trace_store.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <mutex>

#include "inferscope/wire/trace_file.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

// A replay of one source: its hello and one string, as the collector would write.
void replay(std::vector<std::vector<uint8_t>>& frames) {
  wire::EncoderOptions o;
  o.source_id = 1;
  wire::FrameEncoder enc(o);
  enc.add(wire::Record{make_hello("m", 0, 1, 4)});
  enc.add(wire::StringDef{1, "decode"});
  std::vector<uint8_t> f;
  enc.finish(f);
  frames.push_back(std::move(f));
}

// 50 spans starting at t0 + k * step (each 10 ns long).
std::vector<uint8_t> span_frame(int64_t t0, int64_t step = 1) {
  wire::EncoderOptions o;
  o.source_id = 1;
  wire::FrameEncoder enc(o);
  for (int k = 0; k < 50; ++k) {
    wire::Span s;
    s.name_id = 1;
    s.track_id = static_cast<uint32_t>(k % 3);
    s.start_ns = t0 + k * step;
    s.end_ns = s.start_ns + 10;
    enc.add(s);
  }
  std::vector<uint8_t> f;
  enc.finish(f);
  return f;
}

struct Read {
  size_t frames = 0, spans = 0, hellos = 0;
  wire::TraceReadStats stats;
};
Read read_all(const std::string& path) {
  Read r;
  wire::TraceFileReader reader;
  EXPECT_TRUE(reader.open(path)) << reader.error();
  std::span<const uint8_t> frame;
  bool first = true;
  while (reader.next_frame(frame)) {
    std::vector<wire::Record> recs;
    EXPECT_TRUE(wire::decode_frame(frame, recs).ok());
    if (first) {
      EXPECT_EQ(wire::kind_of(recs.at(0)), wire::RecordKind::kHello) << path;
    }
    first = false;
    ++r.frames;
    for (auto& rec : recs) {
      r.spans += wire::kind_of(rec) == wire::RecordKind::kSpan;
      r.hellos += wire::kind_of(rec) == wire::RecordKind::kHello;
    }
  }
  r.stats = reader.stats();
  return r;
}

class TraceStoreTest : public ::testing::TestWithParam<bool> {
 protected:
  TraceStoreOptions options(const TempDir& dir) const {
    TraceStoreOptions o;
    o.dir = dir.path.string();
    o.background = GetParam();
    o.block_bytes = 8 * 1024;
    o.queue_blocks =
        100'000;  // a tight loop outruns the writer thread: nothing may be dropped here
    return o;
  }
};

}  // namespace

TEST_P(TraceStoreTest, RotatesAndKeepsTotalUnderTheBound) {
  TempDir dir("inferscope-store-rotate");
  TraceStoreOptions o = options(dir);
  o.max_bytes = 64 * 1024;
  o.segment_bytes = 8 * 1024;
  o.block_bytes = 4 * 1024;
  o.zstd_level = -5;  // fast and weak: more bytes, more rotations
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  uint64_t written = 0;
  for (int i = 0; i < 3000; ++i) {
    auto f = span_frame(i * 1000, 7 * i + 1);
    written += f.size();
    store.write(f, 0);
    if (i % 100 == 0) store.flush();
  }
  store.flush();
  const TraceStoreStats st = store.stats();
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_GE(segments.size(), 4u);
  uint64_t on_disk = 0;
  for (auto& s : segments) on_disk += fs::file_size(s);
  ASSERT_GT(st.blocks_written, 10u);
  EXPECT_EQ(on_disk, st.bytes);
  EXPECT_EQ(segments.size(), st.segments);
  // The open segment may overshoot by the blocks queued behind the writer.
  EXPECT_LE(on_disk, o.max_bytes + o.segment_bytes + 100 * o.block_bytes);
  EXPECT_GT(st.deleted_by_size, 0u);
  EXPECT_EQ(st.deleted_by_age, 0u);
  EXPECT_LT(on_disk, written / 2) << "blocks are compressed";
  // The oldest were deleted: the first kept segment is not number 1.
  EXPECT_NE(fs::path(segments.front()).filename().string(), TraceStore::segment_name(1));
  // Every segment stands alone: it starts with the replay (checked in read_all).
  for (auto& s : segments) {
    Read r = read_all(s);
    EXPECT_EQ(r.stats.format, 2);
    EXPECT_EQ(r.hellos, 1u) << s;
    EXPECT_FALSE(r.stats.truncated_tail);
    EXPECT_EQ(r.stats.corrupt_blocks, 0u);
  }
  EXPECT_EQ(st.write_errors, 0u);
}

TEST_P(TraceStoreTest, BlockClosesByAgeOnTick) {
  TempDir dir("inferscope-store-age-block");
  TraceStoreOptions o = options(dir);
  o.block_age_ns = 1'000'000'000;
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  store.write(span_frame(0), 5'000'000'000);
  store.tick(5'500'000'000);  // younger than the block age: stays open
  store.flush();              // (flush seals it anyway, so check the count before)
  const uint64_t after_flush = store.stats().blocks_written;
  EXPECT_EQ(after_flush, 1u);
  store.write(span_frame(1000), 6'000'000'000);
  store.tick(6'500'000'000);
  TraceStore* s = &store;
  EXPECT_FALSE(
      eventually([&] { return s->stats().blocks_written == 2; }, std::chrono::milliseconds(100)));
  store.tick(7'000'000'000);
  EXPECT_TRUE(eventually([&] { return s->stats().blocks_written == 2; }));
}

TEST_P(TraceStoreTest, TornTailIsCutOnRestartAndNumberingContinues) {
  TempDir dir("inferscope-store-torn");
  TraceStoreOptions o = options(dir);
  o.max_bytes = 1 << 20;
  o.summaries = false;  // every block in the file is a data block (a format 2 store)
  uint64_t blocks = 0;
  {
    TraceStore store(o, replay, nullptr);
    std::string error;
    ASSERT_TRUE(store.open(error)) << error;
    for (int i = 0; i < 60; ++i) store.write(span_frame(i * 1000, i + 1), 0);
    store.flush();
    blocks = store.stats().blocks_written;
  }
  ASSERT_GE(blocks, 3u);
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_EQ(segments.size(), 1u);
  Read whole = read_all(segments[0]);
  ASSERT_EQ(whole.spans, 60u * 50u);
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(segments[0], scan, error)) << error;
  ASSERT_EQ(scan.blocks.size(), blocks);
  const uint32_t last_frames = scan.blocks.back().header.frames;
  // Simulate a crash mid-write: cut the last block in half.
  const uint64_t cut_at = scan.blocks.back().offset + wire::kBlockHeaderBytes +
                          scan.blocks.back().header.stored_bytes / 2;
  fs::resize_file(segments[0], cut_at);
  Read torn = read_all(segments[0]);
  EXPECT_TRUE(torn.stats.truncated_tail);
  EXPECT_EQ(torn.spans, (60u - last_frames) * 50u) << "every complete block is there";
  // A restarted store cuts the torn block, keeps the rest, and opens the next number.
  std::vector<std::string> logs;
  TraceStore store(o, replay, [&](const std::string& m) { logs.push_back(m); });
  ASSERT_TRUE(store.open(error)) << error;
  EXPECT_EQ(store.stats().torn_tails_cut, 1u);
  ASSERT_FALSE(logs.empty());
  EXPECT_NE(logs.front().find("cut"), std::string::npos) << logs.front();
  EXPECT_EQ(fs::file_size(segments[0]), scan.blocks[scan.blocks.size() - 2].end());
  Read after = read_all(segments[0]);
  EXPECT_FALSE(after.stats.truncated_tail);
  EXPECT_EQ(after.spans, torn.spans);
  segments = TraceStore::list_segments(o.dir);
  ASSERT_EQ(segments.size(), 2u);
  EXPECT_EQ(fs::path(segments[1]).filename().string(), TraceStore::segment_name(2));
  // Writing continues in the new segment, and queries see old and new data.
  store.write(span_frame(100'000), 0);
  store.flush();
  size_t spans = 0;
  RangeScan rs = store.query(0, 200'000, [&](std::span<const uint8_t> f) {
    std::vector<wire::Record> recs;
    ASSERT_TRUE(wire::decode_frame(f, recs).ok());
    for (auto& r : recs) spans += wire::kind_of(r) == wire::RecordKind::kSpan;
  });
  EXPECT_EQ(spans, torn.spans + 50u);
  EXPECT_EQ(rs.errors, 0u);
}

TEST_P(TraceStoreTest, FullDiskIsCountedAndIngestGoesOn) {
  TempDir dir("inferscope-store-full");
  TraceStoreOptions o = options(dir);
  o.max_bytes = 1 << 20;
  std::vector<std::string> logs;
  std::mutex mu;
  TraceStore store(o, replay, [&](const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    logs.push_back(m);
  });
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  store.write(span_frame(0), 0);
  store.flush();
  // A file size limit makes writes fail with EFBIG, like a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  // Incompressible-ish frames so the blocks really need the space.
  for (int i = 1; i < 400; ++i)
    store.write(span_frame(i * 100'000, 977 * i), i);  // within one second: no retry
  store.flush();
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  const uint64_t errors = store.stats().write_errors;
  EXPECT_GT(errors, 10u);
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(logs.size(), 1u) << "logged once per error episode";
  }
  // After a second it retries in a fresh segment that starts with the replay.
  store.write(span_frame(99), 2'000'000'000);
  store.flush();
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(logs.size(), 2u);
    EXPECT_NE(logs.back().find("writing again"), std::string::npos);
  }
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_GE(segments.size(), 2u);
  Read first = read_all(segments.front());
  EXPECT_FALSE(first.stats.truncated_tail);  // the failed write left only whole blocks
  EXPECT_LE(fs::file_size(segments.front()), 4096u);
  Read last = read_all(segments.back());
  EXPECT_EQ(last.hellos, 1u);
  EXPECT_EQ(last.spans, 50u);
}

TEST_P(TraceStoreTest, SegmentsOlderThanTheAgeBoundAreDeleted) {
  TempDir dir("inferscope-store-age");
  TraceStoreOptions o = options(dir);
  o.max_bytes = 1 << 30;
  o.segment_bytes = 8 * 1024;
  o.block_bytes = 4 * 1024;
  o.max_age_ns = 10'000'000'000;  // 10 s of record time
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  // 60 s of data, 0.1 s per frame, frames large enough to rotate every few seconds.
  for (int i = 0; i < 600; ++i) {
    store.write(span_frame(int64_t{i} * 100'000'000, 997 * (i + 1)), 0);
    if (i % 20 == 0) store.flush();
  }
  store.flush();
  store.tick(0);
  const TraceStoreStats st = store.stats();
  EXPECT_GT(st.deleted_by_age, 0u);
  EXPECT_EQ(st.deleted_by_size, 0u);
  // What is left: nothing whose newest record is more than 10 s older than the newest (59.9 s).
  const int64_t newest = 599LL * 100'000'000 + 49 * 997 * 600 + 10;
  EXPECT_GE(st.oldest_ns, 0);
  int64_t widest_segment_ns = 0;
  for (const auto& path : store.segment_paths()) {
    wire::BlockScan scan;
    ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
    int64_t seg_max = INT64_MIN, seg_min = INT64_MAX;
    for (auto& b : scan.blocks) {
      if (b.header.min_ns > b.header.max_ns) continue;  // a block of definitions only: no time
      seg_max = std::max(seg_max, b.header.max_ns);
      seg_min = std::min(seg_min, b.header.min_ns);
    }
    ASSERT_LE(seg_min, seg_max) << path << " holds no timed record";
    EXPECT_LE(newest - seg_max, o.max_age_ns) << path;
    widest_segment_ns = std::max(widest_segment_ns, seg_max - seg_min);
  }
  // The oldest stored record is within the bound plus one segment's span (how
  // much record time a segment spans depends on how blocks were batched, which
  // differs between inline and threaded compression).
  EXPECT_GE(st.oldest_ns, newest - o.max_age_ns - widest_segment_ns);
}

TEST_P(TraceStoreTest, RangeQueryReadsOnlyOverlappingBlocksPlusDefinitions) {
  TempDir dir("inferscope-store-range");
  TraceStoreOptions o = options(dir);
  o.block_bytes = 4 * 1024;
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  // Frame i covers [i ms, i ms + 50 us).
  for (int i = 0; i < 400; ++i) store.write(span_frame(int64_t{i} * 1'000'000, 1000), 0);
  store.flush();
  const int64_t t0 = 200'000'000, t1 = 210'000'000;
  size_t in_range = 0, spans = 0, hellos = 0, strings = 0;
  RangeScan rs = store.query(t0, t1, [&](std::span<const uint8_t> f) {
    std::vector<wire::Record> recs;
    ASSERT_TRUE(wire::decode_frame(f, recs).ok());
    for (auto& r : recs) {
      if (auto* s = std::get_if<wire::Span>(&r)) {
        ++spans;
        in_range += s->end_ns >= t0 && s->start_ns <= t1;
      }
      hellos += wire::kind_of(r) == wire::RecordKind::kHello;
      strings += wire::kind_of(r) == wire::RecordKind::kStringDef;
    }
  });
  EXPECT_EQ(in_range, 10u * 50u + 1);  // frames 200..209, and the first span of frame 210
  EXPECT_EQ(hellos, 1u) << "the definitions block at the segment's start is read too";
  EXPECT_EQ(strings, 1u);
  EXPECT_GT(rs.blocks_skipped, rs.blocks_read * 5) << "the index skips the rest";
  EXPECT_LT(spans, 400u * 50u / 5);
  EXPECT_EQ(rs.errors, 0u);
  // An empty range reads nothing.
  RangeScan none =
      store.query(1'000'000'000'000, 2'000'000'000'000, [](std::span<const uint8_t>) { FAIL(); });
  EXPECT_EQ(none.blocks_read, 0u);
}

INSTANTIATE_TEST_SUITE_P(InlineAndThread, TraceStoreTest, ::testing::Values(false, true),
                         [](const auto& param_info) {
                           return param_info.param ? "thread" : "inline";
                         });
