// zstd over the column form, one frame per stream (wire/src/column_zstd.hpp):
// each stream gets the coding that pays for it, the frames decompress (as one
// ZSTD_decompress) to the column form byte for byte, and sealed blocks read
// back through unpack_block whichever codings were chosen.
#include "column_zstd.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <random>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::wire {
namespace {

using detail::ColumnCodings;
using detail::StreamCoding;

// A column form of the given streams (the table, then the streams).
std::vector<uint8_t> column_form(const std::vector<std::vector<uint8_t>>& streams) {
  std::vector<uint8_t> out(kBlockColumnTableBytes);
  for (size_t k = 0; k < kBlockColumns; ++k) {
    const uint32_t n = k < streams.size() ? static_cast<uint32_t>(streams[k].size()) : 0;
    for (int i = 0; i < 4; ++i) out[4 * k + i] = static_cast<uint8_t>(n >> (8 * i));
    if (k < streams.size()) out.insert(out.end(), streams[k].begin(), streams[k].end());
  }
  return out;
}

size_t count_frames(std::span<const uint8_t> payload) {
  size_t frames = 0;
  while (!payload.empty()) {
    const size_t n = ZSTD_findFrameCompressedSize(payload.data(), payload.size());
    if (ZSTD_isError(n)) return 0;
    payload = payload.subspan(n);
    ++frames;
  }
  return frames;
}

TEST(ColumnZstd, EachStreamGetsTheCodingThatPays) {
  std::mt19937_64 rng(7);
  std::vector<std::vector<uint8_t>> streams(kBlockColumns);
  // 1: repeats (matches pay); 2: 16 symbols at random (no matches, Huffman
  // halves it); 3: random bytes (neither pays); 4: too short to be probed.
  for (int i = 0; i < 40000; ++i) streams[1].push_back(static_cast<uint8_t>("abcdefgh"[i % 8]));
  for (int i = 0; i < 40000; ++i) streams[2].push_back(static_cast<uint8_t>(rng() % 16));
  for (int i = 0; i < 40000; ++i) streams[3].push_back(static_cast<uint8_t>(rng()));
  for (int i = 0; i < 100; ++i) streams[4].push_back(static_cast<uint8_t>(rng()));
  // 5: a GPU stream id in every fourth span, 0 in the others (as the store's
  // stream column): matches leave less than literals alone, but by under a
  // quarter byte per input byte, which literals alone are worth (half the CPU).
  for (int i = 0; i < 40000; ++i)
    streams[5].push_back(static_cast<uint8_t>(i % 4 == 3 ? 1 + rng() % 4 : 0));
  const auto form = column_form(streams);

  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ColumnCodings codings;
  std::vector<uint8_t> out(detail::column_zstd_bound(form.size()));
  const size_t n = detail::compress_columns(cctx, 1, form, true, codings, out.data(), out.size());
  ZSTD_freeCCtx(cctx);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(codings.coding[1], StreamCoding::kMatch);
  EXPECT_EQ(codings.coding[2], StreamCoding::kLiterals);
  EXPECT_EQ(codings.coding[3], StreamCoding::kRaw);
  EXPECT_EQ(codings.coding[4], StreamCoding::kMatch);
  EXPECT_EQ(codings.coding[5], StreamCoding::kLiterals);
  // Several frames (streams of different codings never share one), which decompress as one.
  EXPECT_GE(count_frames({out.data(), n}), 4u);
  std::vector<uint8_t> back(form.size());
  ASSERT_EQ(ZSTD_decompress(back.data(), back.size(), out.data(), n), form.size());
  EXPECT_EQ(back, form);
  // Each coding did its job: the repeats shrank to almost nothing, the 4-bit
  // symbols to about half, the random bytes stayed (raw, a few bytes of framing).
  EXPECT_LT(n, 100 + 40000 / 2 + 40000 + 100 + 40000 / 4 + 1000);
  EXPECT_GT(n, 40000 + 40000 / 2);
}

TEST(ColumnZstd, FormThatDoesNotAddUpIsRefused) {
  std::vector<std::vector<uint8_t>> streams(kBlockColumns, std::vector<uint8_t>(10, 1));
  auto form = column_form(streams);
  form.pop_back();  // the table says one byte more than there is
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ColumnCodings codings;
  std::vector<uint8_t> out(detail::column_zstd_bound(form.size() + 1));
  EXPECT_EQ(detail::compress_columns(cctx, 1, form, true, codings, out.data(), out.size()), 0u);
  ZSTD_freeCCtx(cctx);
}

// Agent-like spans: random durations and start gaps (streams zstd cannot
// shrink much), names from a small set, a few threads.
RawBlock agent_block(std::mt19937_64& rng) {
  RawBlock block;
  std::vector<uint8_t> frame;
  int64_t clock = 0;
  for (int f = 0; f < 6; ++f) {
    FrameEncoder enc{EncoderOptions{}};
    for (int i = 0; i < 2000; ++i) {
      Span s;
      clock += 200 + static_cast<int64_t>(rng() % 2000);
      s.start_ns = clock;
      s.end_ns = s.start_ns + 1000 + static_cast<int64_t>(rng() % 59000);
      s.name_id = 1 + static_cast<uint32_t>(rng() % 16);
      s.track_id = 1000 + static_cast<uint32_t>(rng() % 8);
      s.depth = static_cast<uint16_t>(rng() % 4);
      s.correlation_id = i % 4 == 3 ? rng() % 100000 : 0;
      enc.add(s);
    }
    frame.clear();
    enc.finish(frame);
    block.add(frame, summarize_frame(frame));
  }
  return block;
}

TEST(ColumnZstd, SealedBlocksReadBackAcrossProbes) {
  // More data blocks than the probe interval, with summary-level seals between
  // them (which reuse the last probe's codings): every one reads back exactly.
  std::mt19937_64 rng(3);
  BlockCompressor compressor(1, true);
  std::vector<uint8_t> sealed, raw;
  size_t multi_frame = 0;
  for (int b = 0; b < detail::kColumnProbeEvery + 3; ++b) {
    const RawBlock block = agent_block(rng);
    for (int level : {0, 3}) {
      compressor.seal(block, sealed, level);
      BlockHeader h;
      std::string error;
      ASSERT_TRUE(decode_block_header({sealed.data(), kBlockHeaderBytes}, h, error)) << error;
      ASSERT_TRUE(h.flags & kBlockFlagColumns) << "block " << b;
      const std::span<const uint8_t> payload(sealed.data() + kBlockHeaderBytes, h.stored_bytes);
      ASSERT_TRUE(unpack_block(h, payload, raw, error)) << "block " << b << ": " << error;
      ASSERT_EQ(raw, block.bytes) << "block " << b << " level " << level;
      multi_frame += count_frames(payload) > 1;
    }
  }
  // The start / duration streams are coded apart from the rest.
  EXPECT_EQ(multi_frame, 2u * (detail::kColumnProbeEvery + 3));
}

}  // namespace
}  // namespace inferscope::wire
