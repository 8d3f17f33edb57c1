// Level-of-detail summaries in the trace store: on random data, a range query
// answered from summaries equals the one answered from the stored spans (the
// same store written without summaries), at full range and in windows, at
// many resolutions; readers that want every record still get exactly the
// stored ones; format 2 stores (no summaries) read as before.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>
#include <tuple>

#include "inferscope/collector/range_query.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_file.hpp"

using namespace inferscope::collector;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kSources = 3;

void replay(std::vector<std::vector<uint8_t>>& frames) {
  for (uint32_t src = 1; src <= kSources; ++src) {
    wire::EncoderOptions o;
    o.source_id = src;
    wire::FrameEncoder enc(o);
    wire::Hello h;
    h.service = "lod-test";
    h.rank = src;
    enc.add(wire::Record{h});
    for (uint32_t i = 1; i <= 8; ++i) enc.add(wire::StringDef{i, "op" + std::to_string(i)});
    frames.emplace_back();
    enc.finish(frames.back());
  }
}

// Random frames: per source, tracks at two depths with spans from 100 ns to 5 ms
// (mostly under 20 us) and gaps from 0 to 10 ms (mostly under 3 us), so runs
// form and break at every level; some GPU streams, counters and memory samples.
std::vector<std::vector<uint8_t>> random_frames(uint32_t seed, int64_t& end_ns) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  // A log-uniform duration: most short, some long, at every scale.
  auto duration = [&](int64_t lo, int64_t hi) {
    const double a = std::log(double(lo)), b = std::log(double(hi));
    return static_cast<int64_t>(std::exp(a + (b - a) * double(rng() % 100000) / 100000.0));
  };
  struct Lane {
    uint32_t source, track;
    bool gpu;
    int64_t t = 0;
  };
  std::vector<Lane> lanes;
  for (uint32_t src = 1; src <= kSources; ++src)
    for (uint32_t t = 0; t < 4; ++t) lanes.push_back({src, 100 + t, t == 3, pick(0, 1000)});
  std::vector<std::vector<uint8_t>> frames;
  end_ns = 0;
  for (int f = 0; f < 240; ++f) {
    const uint32_t src = 1 + static_cast<uint32_t>(f % kSources);
    wire::EncoderOptions o;
    o.source_id = src;
    wire::FrameEncoder enc(o);
    for (int k = 0; k < 500; ++k) {
      Lane& lane = lanes[(src - 1) * 4 + rng() % 4];
      // Bursts of short spans with short gaps, now and then a long span or a long gap.
      const int64_t len = rng() % 10 == 0 ? duration(100, 5'000'000) : duration(100, 20'000);
      lane.t += rng() % 8 == 0 ? duration(1, 10'000'000) : pick(0, 3000);
      wire::Span s;
      s.track_kind = lane.gpu ? wire::TrackKind::kGpuStream : wire::TrackKind::kCpuThread;
      s.track_id = lane.track;
      s.stream = lane.gpu ? 7 : 0;
      s.name_id = 1 + static_cast<uint32_t>(rng() % 8);
      s.start_ns = lane.t;
      s.end_ns = lane.t + len;
      s.correlation_id = rng() % 4 == 0 ? rng() % 1000 : 0;
      s.num_args = rng() % 2;
      s.args[0] = {1, static_cast<int64_t>(rng() % 100)};
      enc.add(s);
      // A nested child inside some spans (depth 1).
      if (len > 2000 && rng() % 3 == 0) {
        wire::Span c = s;
        c.depth = 1;
        c.start_ns = s.start_ns + 100;
        c.end_ns = c.start_ns + pick(1, len - 200);
        enc.add(c);
      }
      lane.t = s.end_ns;
      end_ns = std::max(end_ns, s.end_ns);
      if (rng() % 50 == 0) {
        wire::CounterSample c;
        c.name_id = 2;
        c.timestamp_ns = lane.t;
        c.value = double(rng() % 1000);
        enc.add(c);
      }
      if (rng() % 80 == 0) {
        wire::MemorySample m;
        m.timestamp_ns = lane.t;
        m.used_bytes = rng() % 100000;
        enc.add(m);
      }
    }
    frames.emplace_back();
    enc.finish(frames.back());
  }
  return frames;
}

struct Stored {
  fs::path dir;
  std::unique_ptr<TraceStore> store;
};

Stored store_of(const std::string& name, const std::vector<std::vector<uint8_t>>& frames,
                bool summaries, bool columns = true) {
  Stored s;
  s.dir = fs::temp_directory_path() / ("lod-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(s.dir);
  TraceStoreOptions o;
  o.dir = s.dir.string();
  o.background = false;
  o.summaries = summaries;
  o.columns = columns;
  o.block_bytes = 16u << 10;  // many blocks, so many lie wholly inside a window
  o.segment_bytes = 256u << 10;
  o.max_bytes = 1ull << 30;
  s.store = std::make_unique<TraceStore>(o, replay, nullptr);
  std::string error;
  EXPECT_TRUE(s.store->open(error)) << error;
  for (const auto& f : frames) s.store->write(f, 0);
  s.store->flush();
  return s;
}

// A reply as a sorted list of what a timeline would draw, plus its counts.
using SpanKey = std::tuple<uint32_t, uint8_t, uint32_t, uint32_t, uint16_t, int64_t, int64_t,
                           uint32_t, uint64_t, int64_t, uint8_t>;
struct Reply {
  std::vector<SpanKey> spans;
  std::vector<std::tuple<uint32_t, int64_t, double>> counters;
  uint64_t memory = 0;
  wire::RangeEnd end;
};

Reply decode(const RangeReply& r) {
  Reply out;
  wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  wire::Record rec;
  for (const auto& f : r.frames) {
    EXPECT_TRUE(dec.open(f).ok());
    const uint32_t src = dec.header().source_id;
    while (dec.next(rec)) {
      if (const auto* s = std::get_if<wire::Span>(&rec)) {
        out.spans.emplace_back(src, static_cast<uint8_t>(s->track_kind), s->track_id, s->stream,
                               s->depth, s->start_ns, s->end_ns, s->name_id, s->correlation_id,
                               s->num_args ? s->args[0].value : -1,
                               static_cast<uint8_t>(s->category));
      } else if (const auto* c = std::get_if<wire::CounterSample>(&rec)) {
        out.counters.emplace_back(src, c->timestamp_ns, c->value);
      } else if (std::holds_alternative<wire::MemorySample>(rec)) {
        ++out.memory;
      }
    }
  }
  std::sort(out.spans.begin(), out.spans.end());
  std::sort(out.counters.begin(), out.counters.end());
  out.end = r.end;
  return out;
}

class LodSummaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    frames_ = random_frames(42, end_ns_);
    with_ = store_of("with", frames_, true);
    without_ = store_of("without", frames_, false);
  }
  void TearDown() override {
    with_.store.reset();
    without_.store.reset();
    fs::remove_all(with_.dir);
    fs::remove_all(without_.dir);
  }
  std::vector<std::vector<uint8_t>> frames_;
  int64_t end_ns_ = 0;
  Stored with_, without_;
};

TEST_F(LodSummaryTest, SummariesAreWrittenAndSmall) {
  const TraceStoreStats st = with_.store->stats();
  EXPECT_GT(st.blocks_written, 20u);
  EXPECT_GT(st.summary_blocks_written, st.blocks_written);  // several levels per block
  EXPECT_GT(st.summary_bytes_written, 0u);
  EXPECT_LT(st.summary_bytes_written * 2, st.bytes);
  // Several levels on disk, so the queries below merge from more than one.
  std::set<int> levels;
  for (const auto& path : with_.store->segment_paths()) {
    wire::BlockScan scan;
    std::string error;
    ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
    for (const auto& b : scan.blocks)
      if (b.header.summary_level()) levels.insert(b.header.summary_level());
  }
  EXPECT_GE(levels.size(), 3u);
  EXPECT_EQ(without_.store->stats().summary_blocks_written, 0u);
  EXPECT_EQ(without_.store->stats().blocks_written, st.blocks_written);
}

TEST_F(LodSummaryTest, QueriesFromSummariesEqualQueriesFromSpans) {
  std::mt19937_64 rng(9);
  uint64_t summaries_read = 0;
  int cases = 0;
  for (int64_t res : {int64_t{0}, int64_t{1}, int64_t{3'000}, int64_t{20'000}, int64_t{150'000},
                      int64_t{1'000'000}, int64_t{7'000'000}, int64_t{60'000'000}, end_ns_ / 1000,
                      end_ns_ / 2000, end_ns_}) {
    for (int k = 0; k < 6; ++k) {
      wire::RangeQuery q;
      q.query_id = 1;
      q.resolution_ns = res;
      q.max_records = 50'000'000;
      if (k == 0) {
        q.from_ns = 0;
        q.to_ns = end_ns_;
      } else {
        q.from_ns = static_cast<int64_t>(rng() % static_cast<uint64_t>(end_ns_));
        q.to_ns =
            q.from_ns + static_cast<int64_t>(rng() % static_cast<uint64_t>(end_ns_ / (k * 2)));
      }
      RangeReply a, b;
      answer_range(with_.store.get(), q, a);
      answer_range(without_.store.get(), q, b);
      const Reply ra = decode(a), rb = decode(b);
      SCOPED_TRACE("res " + std::to_string(res) + " [" + std::to_string(q.from_ns) + ", " +
                   std::to_string(q.to_ns) + "]");
      ASSERT_EQ(ra.end.status, wire::RangeStatus::kOk);
      ASSERT_EQ(ra.end.spans, rb.end.spans);
      ASSERT_EQ(ra.end.merged_spans, rb.end.merged_spans);
      ASSERT_EQ(ra.end.records, rb.end.records);
      ASSERT_EQ(ra.spans.size(), rb.spans.size());
      ASSERT_TRUE(ra.spans == rb.spans);
      ASSERT_TRUE(ra.counters == rb.counters);
      ASSERT_EQ(ra.memory, rb.memory);
      ++cases;
    }
    // Count what the summaries did, at full range.
    RangeScan scan = with_.store->query(
        0, end_ns_, [](std::span<const uint8_t>) {}, res);
    summaries_read += scan.summaries_read;
    if (res >= 1'000'000) {
      EXPECT_GT(scan.summaries_read, 0u) << "res " << res;
      EXPECT_LT(scan.blocks_read, scan.summaries_read) << "res " << res;
    } else if (res < wire::summary_level_ns(1)) {
      EXPECT_EQ(scan.summaries_read, 0u) << "res " << res;  // finer than every level
    }
  }
  EXPECT_EQ(cases, 66);
  EXPECT_GT(summaries_read, 0u);
}

TEST_F(LodSummaryTest, FullResolutionReturnsExactlyTheStoredSpans) {
  // The spans written, and the spans a query at resolution 0 hands back.
  auto spans_of = [](const std::vector<std::vector<uint8_t>>& frames) {
    std::vector<std::tuple<uint32_t, uint32_t, uint16_t, int64_t, int64_t, uint32_t, uint64_t>> out;
    wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
    wire::Record r;
    for (const auto& f : frames) {
      if (!dec.open(f).ok()) continue;
      while (dec.next(r))
        if (const auto* s = std::get_if<wire::Span>(&r))
          out.emplace_back(dec.header().source_id, s->track_id, s->depth, s->start_ns, s->end_ns,
                           s->name_id, s->correlation_id);
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  std::vector<std::vector<uint8_t>> got;
  with_.store->query(0, end_ns_,
                     [&](std::span<const uint8_t> f) { got.emplace_back(f.begin(), f.end()); });
  EXPECT_EQ(spans_of(got), spans_of(frames_));

  // A reader of the whole segment files (viewer, export) skips the summaries.
  std::vector<std::vector<uint8_t>> read;
  for (const auto& path : TraceStore::list_segments(with_.dir.string())) {
    wire::TraceFileReader reader;
    ASSERT_TRUE(reader.open(path)) << reader.error();
    std::span<const uint8_t> f;
    while (reader.next_frame(f)) read.emplace_back(f.begin(), f.end());
    EXPECT_EQ(reader.stats().corrupt_blocks, 0u);
  }
  EXPECT_EQ(spans_of(read), spans_of(frames_));
}

TEST_F(LodSummaryTest, ReopenedStoreFindsItsSummaries) {
  // The index is rebuilt from the files at open: summaries are found again.
  const auto dir = with_.dir;
  with_.store.reset();
  TraceStoreOptions o;
  o.dir = dir.string();
  o.background = false;
  TraceStore again(o, replay, nullptr);
  std::string error;
  ASSERT_TRUE(again.open(error)) << error;
  wire::RangeQuery q;
  q.from_ns = 0;
  q.to_ns = end_ns_;
  q.resolution_ns = end_ns_ / 2000;
  RangeReply a, b;
  answer_range(&again, q, a);
  answer_range(without_.store.get(), q, b);
  EXPECT_TRUE(decode(a).spans == decode(b).spans);
  RangeScan scan = again.query(
      0, end_ns_, [](std::span<const uint8_t>) {}, q.resolution_ns);
  EXPECT_GT(scan.summaries_read, 0u);
  EXPECT_EQ(again.stats().torn_tails_cut, 0u);
}

TEST_F(LodSummaryTest, TornSummaryIsCutAndItsBlockStays) {
  // A crash in the middle of a block's summaries: the restarted store cuts the
  // torn one, keeps the data block (and the summaries before it), and answers
  // every query exactly as before.
  with_.store.reset();
  const auto paths = TraceStore::list_segments(with_.dir.string());
  ASSERT_FALSE(paths.empty());
  const std::string last = paths.back();
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(last, scan, error)) << error;
  ASSERT_FALSE(scan.blocks.empty());
  ASSERT_NE(scan.blocks.back().header.summary_level(), 0) << "the last block is a summary";
  const uint64_t data_blocks = [&] {
    uint64_t n = 0;
    for (const auto& b : scan.blocks) n += b.header.summary_level() == 0;
    return n;
  }();
  fs::resize_file(last, scan.blocks.back().offset + wire::kBlockHeaderBytes +
                            scan.blocks.back().header.stored_bytes / 2);
  TraceStoreOptions o;
  o.dir = with_.dir.string();
  o.background = false;
  TraceStore again(o, replay, nullptr);
  ASSERT_TRUE(again.open(error)) << error;
  EXPECT_EQ(again.stats().torn_tails_cut, 1u);
  wire::BlockScan after;
  ASSERT_TRUE(wire::scan_blocks(last, after, error)) << error;
  EXPECT_FALSE(after.torn_tail);
  uint64_t kept = 0;
  for (const auto& b : after.blocks) kept += b.header.summary_level() == 0;
  EXPECT_EQ(kept, data_blocks);
  for (int64_t res : {int64_t{0}, end_ns_ / 2000, end_ns_ / 50}) {
    wire::RangeQuery q;
    q.from_ns = 0;
    q.to_ns = end_ns_;
    q.resolution_ns = res;
    q.max_records = 50'000'000;
    RangeReply a, b;
    answer_range(&again, q, a);
    answer_range(without_.store.get(), q, b);
    EXPECT_TRUE(decode(a).spans == decode(b).spans) << res;
    EXPECT_EQ(a.end.spans, b.end.spans) << res;
  }
}

// Format 2 without summaries, 3 with them, 4 with them and column-split
// blocks (the default); every format reads back the same stored frames.
TEST(LodSummaryFormat, FileHeaderSaysTheFormatItsBlocksNeed) {
  int64_t end_ns = 0;
  const auto frames = random_frames(1, end_ns);
  const std::vector<std::vector<uint8_t>> some(frames.begin(), frames.begin() + 10);
  std::vector<std::vector<uint8_t>> first_read;
  for (auto [summaries, columns, format] :
       {std::tuple{true, true, 6}, {true, false, 3}, {false, true, 2}, {false, false, 2}}) {
    Stored s =
        store_of("fmt" + std::to_string(format) + (columns ? "c" : ""), some, summaries, columns);
    s.store->close();
    const auto paths = TraceStore::list_segments(s.dir.string());
    ASSERT_FALSE(paths.empty());
    std::FILE* f = std::fopen(paths.front().c_str(), "rb");
    ASSERT_NE(f, nullptr);
    uint8_t h[16] = {};
    ASSERT_EQ(std::fread(h, 1, 16, f), 16u);
    std::fclose(f);
    EXPECT_EQ(h[10] | h[11] << 8, format) << summaries << columns;
    // Readers that want every stored frame get the same ones from every format.
    std::vector<std::vector<uint8_t>> read;
    for (const auto& path : paths) {
      wire::TraceFileReader r;
      ASSERT_TRUE(r.open(path)) << r.error();
      std::span<const uint8_t> frame;
      while (r.next_frame(frame)) read.emplace_back(frame.begin(), frame.end());
      EXPECT_TRUE(r.damage_report().empty()) << r.damage_report();
    }
    if (first_read.empty()) {
      first_read = read;
      EXPECT_GE(read.size(), some.size());
    } else {
      EXPECT_EQ(read, first_read) << "format " << format;
    }
    s.store.reset();
    fs::remove_all(s.dir);
  }
}

}  // namespace
