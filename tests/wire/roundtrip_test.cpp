// Every record kind survives encode -> decode unchanged, compressed or not.
#include <gtest/gtest.h>

#include "inferscope/wire/codec.hpp"
#include "sample_records.hpp"

namespace inferscope::wire {
namespace {

std::vector<Record> roundtrip(const std::vector<Record>& in, EncoderOptions options = {}) {
  FrameEncoder enc(options);
  for (const auto& r : in) enc.add(r);
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  std::vector<Record> out;
  DecodeStatus status = decode_frame(bytes, out);
  EXPECT_TRUE(status.ok()) << status.message;
  return out;
}

TEST(WireRoundTrip, EveryRecordKind) {
  auto records = testing::one_of_each();
  ASSERT_EQ(records.size(), kRecordKindCount);
  auto decoded = roundtrip(records);
  ASSERT_EQ(decoded.size(), records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(decoded[i].index(), i) << "kind " << to_string(static_cast<RecordKind>(i));
    EXPECT_TRUE(decoded[i] == records[i]) << "kind " << to_string(static_cast<RecordKind>(i));
  }
}

TEST(WireRoundTrip, CompressedFrameMatchesAndIsSmaller) {
  std::vector<Record> records;
  for (int i = 0; i < 2000; ++i) records.push_back(testing::sample_span(1'000'000'000 + i * 1000));
  EncoderOptions plain;
  EncoderOptions zstd;
  zstd.compress = true;
  FrameEncoder a(plain), b(zstd);
  for (const auto& r : records) {
    a.add(r);
    b.add(r);
  }
  std::vector<uint8_t> pa, pb;
  a.finish(pa);
  b.finish(pb);
  EXPECT_LT(pb.size(), pa.size());
  EXPECT_EQ(roundtrip(records, zstd), records);
}

TEST(WireRoundTrip, ExtremeValuesSurvive) {
  Span s = testing::sample_span();
  s.start_ns = INT64_MIN / 4;
  s.end_ns = INT64_MAX / 4;
  s.correlation_id = UINT64_MAX;
  s.request_id = UINT64_MAX - 1;
  s.args[0].value = INT64_MIN;
  s.args[1].value = INT64_MAX;
  ExpertLoad e = testing::sample_load();
  e.routed.assign(kMaxExperts, UINT32_MAX);
  auto out = roundtrip({s, e, testing::sample_span(-5)});
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0] == Record(s));
  EXPECT_TRUE(out[1] == Record(e));
}

TEST(WireRoundTrip, ExpertParallelStepExtremesSurvive) {
  ExpertParallelStep e = testing::sample_ep_step();
  e.step = UINT64_MAX;
  e.layer = kMaxLayers - 1;
  e.timestamp_ns = INT64_MIN / 4;
  e.dispatch_ns = INT64_MAX;
  e.compute_ns = 0;
  e.combine_ns = INT64_MAX / 3;
  e.rows_sent = UINT32_MAX;
  e.rows_computed = UINT32_MAX - 1;
  // Its absolute timestamp leaves the delta chain of the records around it intact.
  auto out =
      roundtrip({testing::sample_span(), e, testing::sample_ep_step(), testing::sample_span(77)});
  ASSERT_EQ(out.size(), 4u);
  EXPECT_TRUE(out[1] == Record(e));
  EXPECT_TRUE(out[2] == Record(testing::sample_ep_step()));
  EXPECT_TRUE(out[3] == Record(testing::sample_span(77)));
}

TEST(WireRoundTrip, HotRankAlertSurvives) {
  AlertEpisode a{AlertKind::kHotRank, 1, 7, 42, 5'000, 9'000, 0.7f, 1.4f, "ep-model"};
  auto out = roundtrip({a});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0] == Record(a));
  EXPECT_STREQ(to_string(AlertKind::kHotRank), "hot_rank");
}

// The decoder refuses what no agent can mean: negative durations, layers past the limit.
// Revision 1 of expert_parallel (before the traffic matrix) ends at rows_computed:
// such a record decodes with an empty matrix row, and the revision-2 fields are
// exactly a trailing extension (what revision-1 decoders skip as trailing bytes).
TEST(WireRoundTrip, ExpertParallelRevisionOneStillDecodes) {
  ExpertParallelStep v1 = testing::sample_ep_step();
  v1.row_bytes = 0;
  v1.rows_to_rank.clear();
  auto out = roundtrip({v1, testing::sample_ep_step()});
  ASSERT_EQ(out.size(), 2u);
  const auto& d1 = std::get<ExpertParallelStep>(out[0]);
  EXPECT_TRUE(d1.rows_to_rank.empty());
  EXPECT_EQ(d1.row_bytes, 0u);
  EXPECT_EQ(d1.rows_computed, 160u);
  const auto& d2 = std::get<ExpertParallelStep>(out[1]);
  EXPECT_EQ(d2.rows_to_rank, (std::vector<uint32_t>{40, 64, 0, 56}));
  EXPECT_EQ(d2.row_bytes, 512u);

  auto size_of = [](const ExpertParallelStep& e) {
    FrameEncoder enc(EncoderOptions{});
    enc.add(e);
    std::vector<uint8_t> bytes;
    enc.finish(bytes);
    return bytes.size();
  };
  // Revision 2 adds row_bytes (2 bytes for 512), the count (1) and 4 one-byte rows.
  EXPECT_EQ(size_of(testing::sample_ep_step()) - size_of(v1), 7u);
}

// Revision 4 of agent_health appended the CUPTI detach counters to the GPU
// trace block: a body that ends before them (an older agent's) decodes with
// them 0, and they are exactly a trailing extension (3 varints).
TEST(WireRoundTrip, AgentHealthWithoutDetachCountersStillDecodes) {
  AgentHealth h =
      std::get<AgentHealth>(testing::one_of_each()[static_cast<size_t>(RecordKind::kAgentHealth)]);
  ASSERT_NE(h.gpu.cupti_detaches, 0u) << "the sample sets them, so the round trip covers them";
  h.gpu.cupti_detaches = h.gpu.cupti_reattaches = h.gpu.cupti_detach_errors = 0;  // 1 byte each
  FrameEncoder enc(EncoderOptions{});
  enc.add(Record{h});
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  // One record: tag, a one-byte body length, the body; the last 3 bytes are the counters.
  ASSERT_EQ(bytes[kFrameHeaderBytes], static_cast<uint8_t>(RecordKind::kAgentHealth));
  const uint8_t body = bytes[kFrameHeaderBytes + 1];
  ASSERT_LT(body, 128) << "a one-byte varint";
  ASSERT_EQ(bytes.size(), kFrameHeaderBytes + 2 + body);
  bytes.resize(bytes.size() - 3);
  bytes[kFrameHeaderBytes + 1] = static_cast<uint8_t>(body - 3);
  for (size_t at : {size_t{8}, size_t{12}}) {  // payload_bytes, raw_bytes (little-endian u32)
    uint32_t v =
        bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | uint32_t{bytes[at + 3]} << 24;
    v -= 3;
    for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  ASSERT_TRUE(seal_frame_checksum(bytes));
  std::vector<Record> out;
  DecodeStatus status = decode_frame(bytes, out);
  ASSERT_TRUE(status.ok()) << status.message;
  ASSERT_EQ(out.size(), 1u);
  const auto& d = std::get<AgentHealth>(out[0]);
  EXPECT_TRUE(d == h) << "everything before the counters as sent, the counters 0";
  EXPECT_EQ(d.gpu.kernels_attributed, 1200u);
}

TEST(WireRoundTrip, ExpertParallelTrafficRowTooLongIsRejected) {
  ExpertParallelStep e = testing::sample_ep_step();
  e.rows_to_rank.assign(kMaxEpRanks + 1, 1);
  FrameEncoder enc;
  enc.add(e);
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  std::vector<Record> out;
  DecodeStatus status = decode_frame(bytes, out);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message.find("rank count"), std::string::npos) << status.message;
}

TEST(WireRoundTrip, ExpertParallelStepOutOfRangeIsRejected) {
  for (int field = 0; field < 4; ++field) {
    ExpertParallelStep e = testing::sample_ep_step();
    if (field == 0) e.dispatch_ns = -1;
    if (field == 1) e.compute_ns = -5;
    if (field == 2) e.combine_ns = INT64_MIN;
    if (field == 3) e.layer = kMaxLayers;
    FrameEncoder enc;
    enc.add(e);
    std::vector<uint8_t> bytes;
    enc.finish(bytes);
    std::vector<Record> out;
    DecodeStatus status = decode_frame(bytes, out);
    EXPECT_FALSE(status.ok()) << "field " << field;
    EXPECT_NE(status.message.find("expert_parallel"), std::string::npos) << status.message;
  }
}

TEST(WireRoundTrip, DeltaTimestampsResetPerFrame) {
  FrameEncoder enc;
  std::vector<uint8_t> bytes;
  enc.add(testing::sample_span(5'000));
  enc.finish(bytes);
  size_t first = bytes.size();
  enc.add(testing::sample_span(9'000));
  enc.finish(bytes);
  FrameDecoder dec;
  size_t n = 0;
  ASSERT_TRUE(dec.frame_size(bytes, n).ok());
  ASSERT_EQ(n, first);
  std::vector<Record> out;
  ASSERT_TRUE(decode_frame(std::span(bytes).subspan(first), out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(std::get<Span>(out[0]).start_ns, 9'000);
}

TEST(WireRoundTrip, SourceIdTravelsInTheHeader) {
  EncoderOptions options;
  options.source_id = 42;
  FrameEncoder enc(options);
  enc.add(testing::sample_load());
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  FrameDecoder dec;
  ASSERT_TRUE(dec.open(bytes).ok());
  EXPECT_EQ(dec.header().source_id, 42u);
  EXPECT_EQ(dec.header().record_count, 1u);
}

TEST(WireRoundTrip, EmptyFrameIsValid) {
  FrameEncoder enc;
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  std::vector<Record> out;
  EXPECT_TRUE(decode_frame(bytes, out).ok());
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace inferscope::wire
