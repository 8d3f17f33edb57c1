// Truncated, oversized, bit-flipped and random frames are rejected with a clear
// error and never crash (this suite also runs under ASan+UBSan).
#include <gtest/gtest.h>
#include <zlib.h>

#include <random>

#include "inferscope/wire/codec.hpp"
#include "sample_records.hpp"

namespace inferscope::wire {
namespace {

std::vector<uint8_t> sample_frame(bool compress = false) {
  EncoderOptions options;
  options.compress = compress;
  options.compress_min_bytes = 16;
  FrameEncoder enc(options);
  for (const auto& r : testing::one_of_each()) enc.add(r);
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  return bytes;
}

// Rewrites the CRC so that the decoder's checks past the checksum are exercised.
void fix_checksum(std::vector<uint8_t>& f) {
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, f.data(), 24);
  crc = crc32(crc, f.data() + kFrameHeaderBytes, static_cast<uInt>(f.size() - kFrameHeaderBytes));
  for (int i = 0; i < 4; ++i) f[24 + i] = static_cast<uint8_t>(crc >> (8 * i));
}

TEST(WireCorruption, EveryTruncationIsReportedNotCrashed) {
  auto frame = sample_frame();
  FrameDecoder dec;
  for (size_t n = 0; n < frame.size(); ++n) {
    std::span<const uint8_t> cut(frame.data(), n);
    size_t size = 0;
    DecodeStatus s = dec.frame_size(cut, size);
    EXPECT_EQ(s.error, DecodeError::kNeedMoreData) << "at " << n;
    // Once the header is in, the announced size is known (a reader makes room for it).
    EXPECT_EQ(size, n >= kFrameHeaderBytes ? frame.size() : 0u) << "at " << n;
    DecodeStatus o = dec.open(cut);
    EXPECT_FALSE(o.ok());
    EXPECT_FALSE(o.message.empty());
  }
}

TEST(WireCorruption, OversizedFrameRejectedFromHeaderAlone) {
  auto frame = sample_frame();
  DecoderOptions small;
  small.max_frame_bytes = 64;
  FrameDecoder dec(small);
  size_t size = 0;
  DecodeStatus s = dec.frame_size(std::span(frame).first(kFrameHeaderBytes), size);
  EXPECT_EQ(s.error, DecodeError::kFrameTooLarge);
  EXPECT_NE(s.message.find("exceeds the limit"), std::string::npos) << s.message;
}

TEST(WireCorruption, EverySingleBitFlipIsDetected) {
  for (bool compress : {false, true}) {
    auto frame = sample_frame(compress);
    for (size_t bit = 0; bit < frame.size() * 8; ++bit) {
      auto bad = frame;
      bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
      std::vector<Record> out;
      DecodeStatus s = decode_frame(bad, out);
      EXPECT_FALSE(s.ok()) << "bit " << bit << " flipped went unnoticed";
    }
  }
}

TEST(WireCorruption, BadMagicAndVersionHaveClearMessages) {
  auto frame = sample_frame();
  auto bad = frame;
  bad[0] = 'X';
  size_t size;
  FrameDecoder dec;
  EXPECT_EQ(dec.frame_size(bad, size).error, DecodeError::kBadMagic);
  bad = frame;
  bad[4] = 99;
  DecodeStatus s = dec.frame_size(bad, size);
  EXPECT_EQ(s.error, DecodeError::kUnsupportedVersion);
  EXPECT_NE(s.message.find("99"), std::string::npos);
}

TEST(WireCorruption, ValidChecksumButLyingRecordsAreRejected) {
  // Attacker-controlled payloads with correct CRCs: lengths and counts must still be checked.
  auto frame = sample_frame();
  std::mt19937 rng(7);
  int rejected = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    auto bad = frame;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      size_t at = kFrameHeaderBytes + rng() % (bad.size() - kFrameHeaderBytes);
      bad[at] = static_cast<uint8_t>(rng());
    }
    fix_checksum(bad);
    std::vector<Record> out;
    DecodeStatus s = decode_frame(bad, out);
    if (!s.ok()) {
      ++rejected;
      EXPECT_FALSE(s.message.empty());
    }
  }
  EXPECT_GT(rejected, 1000);  // most mutations hit a checked field
}

TEST(WireCorruption, RecordCountLieIsRejected) {
  auto frame = sample_frame();
  frame[16] += 1;  // one more record than present
  fix_checksum(frame);
  std::vector<Record> out;
  DecodeStatus s = decode_frame(frame, out);
  EXPECT_EQ(s.error, DecodeError::kRecordCountMismatch) << s.message;
}

TEST(WireCorruption, RandomBytesNeverCrash) {
  std::mt19937 rng(11);
  FrameDecoder dec;
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> junk(rng() % 256);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    if (junk.size() >= 4 && trial % 2 == 0) {  // half of them with a valid magic
      junk[0] = 'I', junk[1] = 'S', junk[2] = 'F', junk[3] = '1';
    }
    size_t size;
    (void)dec.frame_size(junk, size);
    std::vector<Record> out;
    DecodeStatus s = decode_frame(junk, out);
    // Random bytes never form a frame with a matching CRC-32 by chance (2^-32).
    EXPECT_FALSE(s.ok());
    EXPECT_FALSE(s.message.empty());
  }
}

}  // namespace
}  // namespace inferscope::wire
