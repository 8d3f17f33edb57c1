// Range queries with level of detail: answer_range() over a real trace store
// (merging, counts, definitions, caps, bad queries), and the same over the
// viewer API of an in-process collector on loopback (query -> reply -> end).
#include "inferscope/collector/range_query.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "inferscope/collector/collector.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

// Track 1: 1000 spans of 1 us every 2 us from t0; track 2: 10 spans of 1 ms every 2 ms.
std::vector<uint8_t> workload_frame(int64_t t0) {
  wire::EncoderOptions o;
  o.source_id = 3;
  wire::FrameEncoder enc(o);
  for (int i = 0; i < 1000; ++i) {
    wire::Span s;
    s.track_id = 1;
    s.name_id = 1;
    s.start_ns = t0 + i * 2000;
    s.end_ns = s.start_ns + 1000;
    enc.add(s);
  }
  for (int i = 0; i < 10; ++i) {
    wire::Span s;
    s.track_id = 2;
    s.name_id = 2;
    s.start_ns = t0 + i * 2'000'000;
    s.end_ns = s.start_ns + 1'000'000;
    enc.add(s);
  }
  wire::CounterSample c;
  c.name_id = 1;
  c.timestamp_ns = t0;
  c.value = 1;
  enc.add(c);
  std::vector<uint8_t> f;
  enc.finish(f);
  return f;
}

void definitions(std::vector<std::vector<uint8_t>>& frames) {
  wire::EncoderOptions o;
  o.source_id = 3;
  wire::FrameEncoder enc(o);
  enc.add(wire::Record{make_hello("m", 2, 1, 4)});
  enc.add(wire::StringDef{1, "tiny"});
  enc.add(wire::StringDef{2, "big"});
  frames.emplace_back();
  enc.finish(frames.back());
}

struct Decoded {
  size_t spans = 0, merged = 0, merged_count = 0, big = 0, counters = 0, hellos = 0;
  std::map<uint32_t, std::string> strings;
  std::optional<wire::RangeEnd> end;
  bool echoed = false;
};

void decode_reply(const std::vector<std::vector<uint8_t>>& frames, Decoded& d) {
  for (const auto& f : frames) {
    wire::FrameDecoder dec;
    size_t used = 0;
    while (used < f.size()) {
      size_t n = 0;
      std::span<const uint8_t> rest(f.data() + used, f.size() - used);
      ASSERT_TRUE(dec.frame_size(rest, n).ok());
      ASSERT_TRUE(dec.open(rest.first(n)).ok());
      used += n;
      wire::Record r;
      while (dec.next(r)) {
        if (auto* s = std::get_if<wire::Span>(&r)) {
          ++d.spans;
          if (s->name_id == wire::kMergedSpansStringId) {
            ++d.merged;
            EXPECT_EQ(s->num_args, 1);
            EXPECT_EQ(s->args[0].key_id, wire::kMergedSpansStringId);
            d.merged_count += static_cast<size_t>(s->args[0].value);
          } else if (s->name_id == 2) {
            ++d.big;
          } else {
            d.merged_count += 1;  // a lone short span counts for itself
          }
        }
        if (auto* s = std::get_if<wire::StringDef>(&r)) d.strings[s->id] = s->value;
        d.counters += wire::kind_of(r) == wire::RecordKind::kCounter;
        d.hellos += wire::kind_of(r) == wire::RecordKind::kHello;
        if (auto* e = std::get_if<wire::RangeEnd>(&r)) d.end = *e;
        if (std::holds_alternative<wire::RangeQuery>(r)) d.echoed = true;
      }
      ASSERT_TRUE(dec.status().ok()) << dec.status().message;
    }
  }
}

// A store with 20 frames, frame k at k * 100 ms (each covering ~20 ms).
struct Filled {
  TempDir dir{"inferscope-range"};
  std::unique_ptr<TraceStore> store;
  Filled() {
    TraceStoreOptions o;
    o.dir = dir.path.string();
    o.block_bytes = 16 * 1024;
    store = std::make_unique<TraceStore>(o, definitions, nullptr);
    std::string error;
    if (!store->open(error)) throw std::runtime_error(error);
    for (int k = 0; k < 20; ++k) store->write(workload_frame(int64_t{k} * 100'000'000), 0);
    store->flush();
  }
};

// One viewer connection: a hello and a range query in one write, the reply
// decoded until its RangeEnd (or 10 s, or the connection ends).
Decoded query_once(uint16_t viewer) {
  asio::io_context io;
  asio::ip::tcp::socket s(io);
  s.connect({asio::ip::make_address("127.0.0.1"), viewer});
  wire::Hello h;
  h.service = "inferscope-viewer";
  wire::RangeQuery q;
  q.query_id = 42;
  q.from_ns = 0;
  q.to_ns = 1'000'000'000;
  q.resolution_ns = 1'000'000;
  // Hello and query in one write: the collector must not lose the query behind the hello.
  auto bytes = frame_of({h});
  auto qf = frame_of({q});
  bytes.insert(bytes.end(), qf.begin(), qf.end());
  asio::write(s, asio::buffer(bytes));
  std::vector<uint8_t> got;
  Decoded d;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  s.non_blocking(true);
  while (!d.end && std::chrono::steady_clock::now() < deadline) {
    uint8_t chunk[65536];
    std::error_code ec;
    const size_t n = s.read_some(asio::buffer(chunk), ec);
    if (ec == asio::error::would_block) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    if (ec) return d;  // the connection ended: this attempt failed
    got.insert(got.end(), chunk, chunk + n);
    // Decode whole frames only (the stream may end inside one).
    wire::FrameDecoder dec;
    size_t used = 0, size = 0;
    while (dec.frame_size({got.data() + used, got.size() - used}, size).ok()) used += size;
    d = {};
    decode_reply(
        {std::vector<uint8_t>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(used))}, d);
  }
  return d;
}

}  // namespace

TEST(RangeQuery, ZoomedOutMergesShortSpansPerTrackAndKeepsLongOnes) {
  Filled f;
  wire::RangeQuery q;
  q.query_id = 7;
  q.from_ns = 0;
  q.to_ns = 2'000'000'000;
  q.resolution_ns = 1'000'000;  // 2000 px over 2 s
  RangeReply reply;
  answer_range(f.store.get(), q, reply);
  Decoded d;
  decode_reply(reply.frames, d);
  ASSERT_TRUE(d.end.has_value());
  EXPECT_TRUE(d.echoed);
  EXPECT_EQ(d.end->query_id, 7u);
  EXPECT_EQ(d.end->status, wire::RangeStatus::kOk) << d.end->message;
  EXPECT_EQ(d.end->spans, 20u * 1010u);
  EXPECT_EQ(d.big, 20u * 10u) << "spans of one pixel or more go out one by one";
  EXPECT_EQ(d.merged_count, 20u * 1000u) << "every short span is in exactly one item";
  EXPECT_LE(d.merged, 20u * 3u) << "2 ms of 1 us spans with 1 us gaps merge into about 2 items";
  EXPECT_EQ(d.end->merged_spans, d.merged);
  EXPECT_EQ(d.hellos, 1u);
  EXPECT_EQ(d.strings[1], "tiny");
  EXPECT_EQ(d.strings[wire::kMergedSpansStringId], "(merged spans)");
  EXPECT_EQ(d.counters, 20u);
  EXPECT_EQ(d.end->records, d.spans + d.counters);
}

TEST(RangeQuery, ZoomedInSendsEverySpanOfTheWindowOnly) {
  Filled f;
  wire::RangeQuery q;
  q.from_ns = 500'000'000;
  q.to_ns = 500'999'999;  // 1 ms of frame 5
  q.resolution_ns = 500;  // 2000 px over 1 ms
  RangeReply reply;
  answer_range(f.store.get(), q, reply);
  Decoded d;
  decode_reply(reply.frames, d);
  ASSERT_TRUE(d.end.has_value());
  EXPECT_EQ(d.merged, 0u);
  EXPECT_EQ(d.end->spans, 500u + 1u);  // the 1 us spans of the first ms, and one long span
  EXPECT_EQ(d.spans, 501u);
  EXPECT_GT(d.end->blocks_skipped, 0u);
  EXPECT_LT(d.end->blocks_read, d.end->blocks_read + d.end->blocks_skipped);
}

TEST(RangeQuery, CapBadRangeAndNoStoreSayWhy) {
  Filled f;
  wire::RangeQuery q;
  q.to_ns = 2'000'000'000;
  q.max_records = 100;
  RangeReply reply;
  answer_range(f.store.get(), q, reply);
  EXPECT_EQ(reply.end.status, wire::RangeStatus::kTruncated);
  EXPECT_EQ(reply.end.records, 100u);
  EXPECT_FALSE(reply.end.message.empty());
  q.from_ns = 5;
  q.to_ns = 4;
  answer_range(f.store.get(), q, reply);
  EXPECT_EQ(reply.end.status, wire::RangeStatus::kBadQuery);
  answer_range(nullptr, q, reply);
  EXPECT_EQ(reply.end.status, wire::RangeStatus::kNoStore);
  EXPECT_NE(reply.end.message.find("--trace-dir"), std::string::npos);
}

TEST(RangeQuery, OverTheViewerApiOfARunningCollector) {
  TempDir dir("inferscope-range-net");
  CollectorOptions o;
  o.listen = {"tcp://127.0.0.1:0"};
  o.metrics = "";
  o.viewer = "127.0.0.1:0";
  o.trace_dir = dir.path.string();
  o.trace_block_age_ns = 20'000'000;  // blocks reach the index within a few ticks
  o.tick = std::chrono::milliseconds(10);
  Collector c(o);
  std::string error;
  ASSERT_TRUE(c.start(error)) << error;
  uint16_t ingest = 0, viewer = 0;
  for (const auto& line : c.listening_lines()) {
    const auto port = static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
    if (line.rfind("listening ingest", 0) == 0) ingest = port;
    if (line.rfind("listening viewer", 0) == 0) viewer = port;
  }
  std::thread loop([&] { c.run(); });
  {
    FakeAgent a(ingest);
    a.send({make_hello("m", 0, 1, 4), wire::StringDef{1, "tiny"}, wire::StringDef{2, "big"}});
    for (int k = 0; k < 5; ++k) {
      auto f = workload_frame(int64_t{k} * 100'000'000);
      a.send(f);  // source id 0 on the wire; the collector stamps its own
    }
    // The frames are queryable once ingested, stored and indexed (block age 20 ms
    // and a tick): ask until the whole history is there, however busy the machine.
    Decoded d;
    ASSERT_TRUE(eventually([&] {
      d = query_once(viewer);
      return d.end.has_value() && d.end->spans == 5u * 1010u;
    })) << "the stored history never came back whole";
    ASSERT_TRUE(d.end.has_value()) << "no RangeEnd within 10 s";
    EXPECT_EQ(d.end->query_id, 42u);
    EXPECT_EQ(d.end->status, wire::RangeStatus::kOk) << d.end->message;
    EXPECT_EQ(d.end->spans, 5u * 1010u);
    EXPECT_EQ(d.big, 5u * 10u);
    EXPECT_EQ(d.merged_count, 5u * 1000u);
  }
  c.stop();
  loop.join();
}

TEST(RangeRecords, RoundTripAndRejectOutOfRangeFields) {
  wire::RangeQuery q;
  q.query_id = 1ull << 40;
  q.from_ns = -5;
  q.to_ns = 1'700'000'000'000'000'000;
  q.resolution_ns = 123;
  q.max_records = 77;
  wire::RangeEnd e;
  e.query_id = 9;
  e.status = wire::RangeStatus::kTruncated;
  e.spans = 1'000'000;
  e.merged_spans = 12;
  e.records = 34;
  e.blocks_read = 5;
  e.blocks_skipped = 6;
  e.message = "zoom in";
  wire::Span s;
  s.start_ns = 1000;
  s.end_ns = 2000;
  // Mixed with a delta-coded span: the absolute times keep the span's delta chain intact.
  auto bytes = frame_of({s, q, e, s});
  std::vector<wire::Record> out;
  ASSERT_TRUE(wire::decode_frame(bytes, out).ok());
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(std::get<wire::RangeQuery>(out[1]), q);
  EXPECT_EQ(std::get<wire::RangeEnd>(out[2]), e);
  EXPECT_EQ(std::get<wire::Span>(out[3]), s);
  // A status beyond the enum and a negative resolution are refused with a message.
  e.status = static_cast<wire::RangeStatus>(wire::kRangeStatusCount);
  auto bad = frame_of({e});
  wire::DecodeStatus st = wire::decode_frame(bad, out);
  EXPECT_EQ(st.error, wire::DecodeError::kMalformedRecord);
  EXPECT_NE(st.message.find("range status"), std::string::npos) << st.message;
  q.resolution_ns = -1;
  st = wire::decode_frame(frame_of({q}), out);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message.find("resolution"), std::string::npos) << st.message;
}
