// Trace store: rotation, the disk bound, replay at each segment's start,
// recovery after a torn tail, restart numbering, and a full disk (RLIMIT_FSIZE).
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/trace_file.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

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

std::vector<uint8_t> span_frame(int i) {
  wire::EncoderOptions o;
  o.source_id = 1;
  wire::FrameEncoder enc(o);
  for (int k = 0; k < 50; ++k) {
    wire::Span s;
    s.name_id = 1;
    s.start_ns = i * 1000 + k;
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

}  // namespace

TEST(TraceStore, RotatesAndKeepsTotalUnderTheBound) {
  TempDir dir("inferscope-store-rotate");
  TraceStoreOptions o;
  o.dir = dir.path.string();
  o.max_bytes = 64 * 1024;
  o.segment_bytes = 8 * 1024;
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  uint64_t written = 0;
  for (int i = 0; i < 400; ++i) {
    auto f = span_frame(i);
    written += f.size();
    store.write(f, 0);
    ASSERT_LE(store.total_bytes(), o.max_bytes + o.segment_bytes);  // the open segment may overshoot by one
  }
  store.flush();
  ASSERT_GT(written, 4 * o.max_bytes);
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_GE(segments.size(), 4u);
  uint64_t on_disk = 0;
  for (auto& s : segments) on_disk += fs::file_size(s);
  EXPECT_LE(on_disk, o.max_bytes + o.segment_bytes);
  EXPECT_EQ(on_disk, store.total_bytes());
  // The oldest were deleted: the first kept segment is not number 1.
  EXPECT_NE(fs::path(segments.front()).filename().string(), TraceStore::segment_name(1));
  // Every segment stands alone: it starts with the replay (checked in read_all).
  for (auto& s : segments) {
    Read r = read_all(s);
    EXPECT_EQ(r.hellos, 1u) << s;
    EXPECT_FALSE(r.stats.truncated_tail);
  }
  EXPECT_EQ(store.write_errors(), 0u);
}

TEST(TraceStore, TornTailIsCutAndRestartContinuesNumbering) {
  TempDir dir("inferscope-store-torn");
  TraceStoreOptions o;
  o.dir = dir.path.string();
  o.max_bytes = 1 << 20;
  {
    TraceStore store(o, replay, nullptr);
    std::string error;
    ASSERT_TRUE(store.open(error)) << error;
    for (int i = 0; i < 10; ++i) store.write(span_frame(i), 0);
  }
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_EQ(segments.size(), 1u);
  // Simulate a crash mid-write: cut the last frame in half.
  const auto size = fs::file_size(segments[0]);
  fs::resize_file(segments[0], size - span_frame(9).size() / 2);
  Read r = read_all(segments[0]);
  EXPECT_TRUE(r.stats.truncated_tail);
  EXPECT_EQ(r.spans, 9u * 50u);  // every complete frame is there
  // A restarted store keeps the old segment, counts it, and opens the next number.
  TraceStore store(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  segments = TraceStore::list_segments(o.dir);
  ASSERT_EQ(segments.size(), 2u);
  EXPECT_EQ(fs::path(segments[1]).filename().string(), TraceStore::segment_name(2));
  EXPECT_GE(store.total_bytes(), fs::file_size(segments[0]));
}

TEST(TraceStore, FullDiskIsCountedAndIngestGoesOn) {
  TempDir dir("inferscope-store-full");
  TraceStoreOptions o;
  o.dir = dir.path.string();
  o.max_bytes = 1 << 20;
  std::vector<std::string> logs;
  TraceStore store(o, replay, [&](const std::string& m) { logs.push_back(m); });
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  store.write(span_frame(0), 0);
  // A file size limit makes writes fail with EFBIG, like a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  for (int i = 1; i < 50; ++i) store.write(span_frame(i), i);  // within one second: no retry
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  EXPECT_GT(store.write_errors(), 10u);
  ASSERT_EQ(logs.size(), 1u) << "logged once per error episode";
  // After a second it retries in a fresh segment that starts with the replay.
  store.write(span_frame(99), 2'000'000'000);
  EXPECT_EQ(logs.size(), 2u);
  store.flush();
  auto segments = TraceStore::list_segments(o.dir);
  ASSERT_GE(segments.size(), 2u);
  Read first = read_all(segments.front());
  EXPECT_FALSE(first.stats.truncated_tail);  // the failed write left only whole frames
  Read last = read_all(segments.back());
  EXPECT_EQ(last.hellos, 1u);
  EXPECT_EQ(last.spans, 50u);
}
