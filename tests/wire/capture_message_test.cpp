// The collector -> agent capture request (wire/capture.hpp): round trip,
// malformed input refused, and a longer future version still read.
#include <gtest/gtest.h>

#include "inferscope/wire/ack.hpp"
#include "inferscope/wire/capture.hpp"

namespace inferscope::wire {
namespace {

TEST(CaptureMessage, RoundTrips) {
  const CaptureRequest r{42, 0xfeedfacecafebeefull, 8, 1500};
  const auto bytes = encode_capture_request(r);
  ASSERT_EQ(bytes.size(), kCaptureBytes);
  auto back = decode_capture_request(bytes);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);
  EXPECT_EQ(back->tag(), 0xfeedfacecafebeefull);
  EXPECT_EQ((CaptureRequest{42, 0, 8, 0}.tag()), 42u) << "a user request is tagged by its id";
}

TEST(CaptureMessage, IsNeverMistakenForAnAck) {
  const auto bytes = encode_capture_request({1, 2, 3, 4});
  EXPECT_FALSE(decode_ack(std::span<const uint8_t, kAckBytes>(bytes.data(), kAckBytes)));
  const auto ack = encode_ack(100);
  EXPECT_FALSE(decode_capture_request(ack));
}

TEST(CaptureMessage, RefusesBadHeaders) {
  auto bytes = encode_capture_request({1, 2, 3, 4});
  auto broken = bytes;
  broken[0] = 'X';  // not "IS"
  EXPECT_FALSE(decode_control_header(broken));
  broken = bytes;
  broken[6] = 12;  // length below 16
  broken[7] = 0;
  EXPECT_FALSE(decode_control_header(broken));
  broken = bytes;
  broken[6] = 33;  // not a multiple of 8
  EXPECT_FALSE(decode_control_header(broken));
  broken = bytes;
  broken[6] = 0x08;  // 0x2008 > kMaxControlBytes
  broken[7] = 0x20;
  EXPECT_FALSE(decode_control_header(broken));
  EXPECT_FALSE(decode_capture_request(std::span(bytes).first(24))) << "truncated";
}

TEST(CaptureMessage, ANewerLongerVersionIsStillRead) {
  auto bytes = encode_capture_request({5, 6, 7, 8});
  bytes.resize(48, 0xAB);  // fields a version 2 appended
  bytes[4] = 2;
  bytes[6] = 48;
  auto r = decode_capture_request(bytes);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->capture_id, 5u);
  EXPECT_EQ(r->steps, 7u);
}

TEST(CaptureMessage, UnknownControlMessagesHaveASkippableHeader) {
  std::vector<uint8_t> future(24, 0);
  const uint32_t magic = 0x5a5a5349;  // "ISZZ"
  std::memcpy(future.data(), &magic, 4);
  future[4] = 1;
  future[6] = 24;
  auto h = decode_control_header(future);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->length, 24u);
  EXPECT_FALSE(decode_capture_request(future));
}

}  // namespace
}  // namespace inferscope::wire
