// The frame-header helpers: peek reads what the encoder wrote, byte by byte as
// docs/wire-format.md lays it out; restamp keeps the frame valid (checksum) and
// changes nothing but the source id.
#include <gtest/gtest.h>

#include "inferscope/wire/codec.hpp"
#include "sample_records.hpp"

namespace inferscope::wire {
namespace {

std::vector<uint8_t> frame_with(uint32_t source_id, bool compress) {
  EncoderOptions options;
  options.source_id = source_id;
  options.compress = compress;
  options.compress_min_bytes = 16;
  FrameEncoder enc(options);
  for (const auto& r : testing::one_of_each()) enc.add(r);
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  return bytes;
}

TEST(WireFrameHeader, PeekReadsTheHeaderTheDecoderReads) {
  for (bool compress : {false, true}) {
    const auto frame = frame_with(0x0a0b0c0d, compress);
    auto peeked = peek_frame_header(frame);
    ASSERT_TRUE(peeked.has_value());
    FrameDecoder dec;
    ASSERT_TRUE(dec.open(frame).ok());
    const FrameHeader& h = dec.header();
    EXPECT_EQ(peeked->magic, kFrameMagic);
    EXPECT_EQ(peeked->version, h.version);
    EXPECT_EQ(peeked->flags, h.flags);
    EXPECT_EQ(peeked->flags != 0, compress);
    EXPECT_EQ(peeked->payload_bytes, frame.size() - kFrameHeaderBytes);
    EXPECT_EQ(peeked->raw_bytes, h.raw_bytes);
    EXPECT_EQ(peeked->record_count, testing::one_of_each().size());
    EXPECT_EQ(peeked->source_id, 0x0a0b0c0du);
    EXPECT_EQ(peeked->checksum, h.checksum);
  }
}

TEST(WireFrameHeader, PeekIsLittleEndianOnEveryHost) {
  std::vector<uint8_t> bytes(kFrameHeaderBytes, 0);
  bytes[20] = 0x01;  // source id 0x04030201, least significant byte first
  bytes[21] = 0x02;
  bytes[22] = 0x03;
  bytes[23] = 0x04;
  bytes[8] = 0x10;  // payload 0x2010
  bytes[9] = 0x20;
  auto h = peek_frame_header(bytes);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->source_id, 0x04030201u);
  EXPECT_EQ(h->payload_bytes, 0x2010u);
}

TEST(WireFrameHeader, PeekNeedsAWholeHeader) {
  const auto frame = frame_with(7, false);
  EXPECT_FALSE(peek_frame_header(std::span(frame).first(kFrameHeaderBytes - 1)).has_value());
  EXPECT_TRUE(peek_frame_header(std::span(frame).first(kFrameHeaderBytes)).has_value());
  EXPECT_FALSE(peek_frame_header({}).has_value());
}

TEST(WireFrameHeader, RestampChangesTheSourceAndKeepsTheFrameValid) {
  for (bool compress : {false, true}) {
    auto frame = frame_with(0, compress);
    const auto before = frame;
    ASSERT_TRUE(restamp_source_id(frame, 42));
    FrameDecoder dec;
    ASSERT_TRUE(dec.open(frame).ok()) << dec.status().message;
    EXPECT_EQ(dec.header().source_id, 42u);
    // Only the source id (20..23) and the checksum (24..27) moved.
    for (size_t i = 0; i < frame.size(); ++i) {
      if (i < 20 || i >= 28) {
        EXPECT_EQ(frame[i], before[i]) << "byte " << i;
      }
    }
    std::vector<Record> again, original;
    ASSERT_TRUE(decode_frame(frame, again).ok());
    ASSERT_TRUE(decode_frame(before, original).ok());
    EXPECT_EQ(again.size(), original.size());
    // Restamping to the encoder's own id gives the encoder's bytes back.
    ASSERT_TRUE(restamp_source_id(frame, 0));
    EXPECT_EQ(frame, before);
  }
}

TEST(WireFrameHeader, RestampRefusesAShortSpan) {
  std::vector<uint8_t> bytes(kFrameHeaderBytes - 1, 0xab);
  EXPECT_FALSE(restamp_source_id(bytes, 9));
  EXPECT_EQ(bytes, std::vector<uint8_t>(kFrameHeaderBytes - 1, 0xab));
}

TEST(WireFrameHeader, RestampGivesTheEncodersBytesForThatSource) {
  // The checksum is updated without reading the payload: it must equal the one
  // the encoder computes over the whole frame, for every size and compression.
  for (bool compress : {false, true}) {
    for (uint32_t id : {1u, 7u, 0xffffffffu, 0x80000000u}) {
      auto frame = frame_with(0, compress);
      ASSERT_TRUE(restamp_source_id(frame, id));
      EXPECT_EQ(frame, frame_with(id, compress)) << "source " << id;
    }
  }
  std::vector<uint8_t> empty;  // a frame of no records: header only, no payload
  FrameEncoder enc;
  enc.finish(empty);
  ASSERT_TRUE(restamp_source_id(empty, 5));
  FrameDecoder dec;
  EXPECT_TRUE(dec.open(empty).ok()) << dec.status().message;
}

TEST(WireFrameHeader, RestampKeepsACorruptFrameCorrupt) {
  auto frame = frame_with(0, false);
  frame.back() ^= 0x01;
  ASSERT_TRUE(restamp_source_id(frame, 3));
  FrameDecoder dec;
  EXPECT_EQ(dec.open(frame).error, DecodeError::kChecksumMismatch);
  // Sealing recomputes from the bytes as they are: valid again.
  ASSERT_TRUE(seal_frame_checksum(frame));
  EXPECT_NE(dec.open(frame).error, DecodeError::kChecksumMismatch);
  EXPECT_FALSE(seal_frame_checksum(std::span(frame).first(kFrameHeaderBytes - 1)));
}

}  // namespace
}  // namespace inferscope::wire
