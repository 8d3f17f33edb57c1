// The wire library's CRC-32 (wire/src/crc32.hpp: carry-less multiply where the
// CPU has it) gives zlib's crc32() values at every length, alignment and
// starting value, and the frames it checksums are what zlib says they should be.
#include "crc32.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <random>
#include <vector>

#include "inferscope/wire/codec.hpp"

namespace inferscope::wire {
namespace {

uint32_t zlib_crc(uint32_t crc, const uint8_t* p, size_t n) {
  return static_cast<uint32_t>(crc32(crc, p, static_cast<uInt>(n)));
}

TEST(WireCrc32, EqualsZlibAtEveryLengthAlignmentAndStart) {
  std::mt19937 rng(7);
  std::vector<uint8_t> bytes(70'000);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  // Every length up to 600 (the fold's edges: 64, 80, ... and the zlib tail),
  // then random long ones; each at a few offsets and from a few starting CRCs.
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 600; ++n) lengths.push_back(n);
  for (int i = 0; i < 200; ++i) lengths.push_back(rng() % 65'000);
  for (size_t n : lengths)
    for (size_t offset : {size_t{0}, size_t{1}, size_t{7}, size_t{13}})
      for (uint32_t start : {0u, 0xFFFFFFFFu, 0x12345678u}) {
        ASSERT_EQ(detail::crc32_update(start, bytes.data() + offset, n),
                  zlib_crc(start, bytes.data() + offset, n))
            << "length " << n << " offset " << offset << " start " << start;
      }
}

TEST(WireCrc32, ContinuesLikeZlibOverPieces) {
  std::vector<uint8_t> bytes(10'000);
  std::mt19937 rng(11);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  uint32_t crc = 0;
  for (size_t at = 0, piece = 1; at < bytes.size(); at += piece, piece = piece * 3 % 997 + 1) {
    const size_t n = std::min(piece, bytes.size() - at);
    crc = detail::crc32_update(crc, bytes.data() + at, n);
  }
  EXPECT_EQ(crc, zlib_crc(0, bytes.data(), bytes.size()));
  // Known value: the CRC-32 check string.
  const char* check = "123456789";
  EXPECT_EQ(detail::crc32_update(0, reinterpret_cast<const uint8_t*>(check), 9), 0xCBF43926u);
}

TEST(WireCrc32, FrameChecksumIsZlibsCrcOfHeaderAndPayload) {
  std::mt19937 rng(3);
  for (int records : {1, 10, 100, 3000}) {
    FrameEncoder enc;
    for (int i = 0; i < records; ++i) {
      Span s;
      s.track_id = rng() % 100;
      s.name_id = rng() % 50;
      s.start_ns = rng();
      s.end_ns = s.start_ns + rng() % 100000;
      enc.add(s);
    }
    std::vector<uint8_t> frame;
    enc.finish(frame);
    uint32_t expected = zlib_crc(0, frame.data(), 24);
    expected =
        zlib_crc(expected, frame.data() + kFrameHeaderBytes, frame.size() - kFrameHeaderBytes);
    EXPECT_EQ(peek_frame_header(frame)->checksum, expected) << records << " records";
    FrameDecoder dec;
    EXPECT_TRUE(dec.open(frame).ok());
    frame.back() ^= 1;  // and a damaged payload is caught
    EXPECT_EQ(dec.open(frame).error, DecodeError::kChecksumMismatch);
  }
}

}  // namespace
}  // namespace inferscope::wire
