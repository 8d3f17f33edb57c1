// Column-split trace blocks (file formats 4 to 6): the stored frames come back byte
// for byte, for every record kind, spans with args, frames compressed by the
// agent and bytes that are not frames; a block whose column form is
// inconsistent (under a good CRC) is refused with a clear error; format 3
// blocks read as before.
#include "block_columns.hpp"

#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/column_builder.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "record_codec.hpp"
#include "sample_records.hpp"

namespace inferscope::wire {
namespace {

// Frames of every record kind, spans with 0..4 args and random fields at every
// varint width, some frames zstd-compressed by their encoder, several sources.
RawBlock random_block(uint32_t seed) {
  std::mt19937_64 rng(seed);
  RawBlock block;
  std::vector<uint8_t> frame;
  for (int f = 0; f < 40; ++f) {
    EncoderOptions eo;
    eo.source_id = 1 + static_cast<uint32_t>(rng() % 5);
    eo.compress = rng() % 4 == 0;
    FrameEncoder enc(eo);
    if (f % 7 == 0)
      for (const auto& r : testing::one_of_each()) enc.add(r);
    const int spans = static_cast<int>(rng() % 300);
    for (int i = 0; i < spans; ++i) {
      Span s = testing::sample_span(static_cast<int64_t>(rng() >> (2 + rng() % 60)));
      s.track_kind = rng() % 2 ? TrackKind::kGpuStream : TrackKind::kCpuThread;
      s.track_id = static_cast<uint32_t>(rng() >> (32 + rng() % 32));
      s.stream = static_cast<uint32_t>(rng() % 3 == 0 ? rng() : 0);
      s.name_id = static_cast<uint32_t>(rng() % 100000);
      s.depth = static_cast<uint16_t>(rng() % 70000);
      s.end_ns = s.start_ns + static_cast<int64_t>(rng() >> (3 + rng() % 60));  // no overflow
      s.correlation_id = rng() >> (rng() % 64);
      s.request_id = rng() % 2 ? rng() : 0;
      s.num_args = static_cast<uint8_t>(rng() % (kMaxSpanArgs + 1));
      for (uint8_t a = 0; a < s.num_args; ++a)
        s.args[a] = {static_cast<uint32_t>(rng() % 1000), static_cast<int64_t>(rng())};
      enc.add(s);
    }
    if (enc.empty()) enc.add(testing::sample_load());
    frame.clear();
    enc.finish(frame);
    block.add(frame, summarize_frame(frame));
  }
  return block;
}

std::vector<uint8_t> unpack(const std::vector<uint8_t>& sealed, BlockHeader& h, std::string& err) {
  EXPECT_TRUE(decode_block_header({sealed.data(), kBlockHeaderBytes}, h, err)) << err;
  std::vector<uint8_t> raw;
  if (!unpack_block(h, {sealed.data() + kBlockHeaderBytes, h.stored_bytes}, raw, err)) return {};
  return raw;
}

// Seals `block` with the column form allowed and unpacks it again; h is the sealed header.
std::vector<uint8_t> seal_and_unpack(const RawBlock& block, BlockHeader& h, std::string& err) {
  BlockCompressor columns(1, true);
  std::vector<uint8_t> sealed;
  columns.seal(block, sealed);
  return unpack(sealed, h, err);
}

// Sealed, the block is column-split without `flag` and reads back byte for byte.
void expect_split_without(const RawBlock& block, uint16_t flag) {
  BlockHeader h;
  std::string err;
  const auto raw = seal_and_unpack(block, h, err);
  ASSERT_TRUE(err.empty()) << err;
  EXPECT_TRUE(h.flags & kBlockFlagColumns);
  EXPECT_FALSE(h.flags & flag);
  EXPECT_EQ(raw, block.bytes);
}

TEST(BlockColumns, RoundTripIsByteExact) {
  BlockCompressor columns(1, true), plain(1, false);
  std::vector<uint8_t> a, b;
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    const RawBlock block = random_block(seed);
    columns.seal(block, a);
    plain.seal(block, b);
    BlockHeader ha, hb;
    std::string err;
    const auto raw_a = unpack(a, ha, err);
    ASSERT_TRUE(err.empty()) << err;
    const auto raw_b = unpack(b, hb, err);
    ASSERT_TRUE(err.empty()) << err;
    EXPECT_TRUE(ha.flags & kBlockFlagColumns) << "seed " << seed;
    EXPECT_FALSE(hb.flags & kBlockFlagColumns);
    ASSERT_EQ(raw_a, block.bytes) << "seed " << seed;
    ASSERT_EQ(raw_b, block.bytes);
    // Every frame still decodes (CRCs included) after the join.
    FrameDecoder dec(DecoderOptions{kMaxBlockRawBytes});
    std::span<const uint8_t> rest(raw_a);
    uint32_t frames = 0;
    while (!rest.empty()) {
      size_t n = 0;
      ASSERT_TRUE(dec.frame_size(rest, n).ok());
      ASSERT_TRUE(dec.open(rest.first(n)).ok());
      Record r;
      while (dec.next(r)) {
      }
      ASSERT_TRUE(dec.status().ok()) << dec.status().message;
      rest = rest.subspan(n);
      ++frames;
    }
    EXPECT_EQ(frames, block.frames);
  }
}

// Spans the fast split refuses part-way (a one-byte field with its high bit
// set, which makes it run into the next field) are taken back and split field
// by field: the column form still joins back to the block byte for byte.
// (Such frames are not valid; the split is a permutation of any bytes that are
// framed, valid records or not.)
TEST(BlockColumns, SpansTheFastSplitRefusesStillRoundTrip) {
  std::mt19937_64 rng(21);
  auto skip_varint = [](const uint8_t* p) {
    while (*p & 0x80) ++p;
    return p + 1;
  };
  for (int round = 0; round < 6; ++round) {
    RawBlock block;
    std::vector<uint8_t> frame;
    size_t damaged = 0;
    for (int f = 0; f < 8; ++f) {
      FrameEncoder enc;
      for (int i = 0; i < 200; ++i) {
        Span s = testing::sample_span(static_cast<int64_t>(rng() % 1'000'000'000));
        s.track_id = static_cast<uint32_t>(rng() % 5000);
        s.num_args = static_cast<uint8_t>(rng() % 3);
        enc.add(s);
      }
      frame.clear();
      enc.finish(frame);
      // Walk the records; damage the track kind or the category of every third span.
      uint8_t* p = frame.data() + kFrameHeaderBytes;
      for (int i = 0; p < frame.data() + frame.size(); ++i) {
        ASSERT_EQ(*p, static_cast<uint8_t>(RecordKind::kSpan));
        uint8_t* body = const_cast<uint8_t*>(skip_varint(p + 1));
        const uint64_t length = p[1];  // spans here are under 128 bytes
        if (i % 3 == 0) {
          uint8_t* category = const_cast<uint8_t*>(skip_varint(skip_varint(skip_varint(body + 1))));
          *(i % 2 ? body : category) |= 0x80;
          ++damaged;
        }
        p = body + length;
      }
      block.add(frame, {});
    }
    BlockHeader h;
    std::string err;
    const auto raw = seal_and_unpack(block, h, err);
    ASSERT_TRUE(err.empty()) << err;
    EXPECT_TRUE(h.flags & kBlockFlagColumns) << "the damaged spans were split field by field";
    EXPECT_GT(damaged, 400u);
    ASSERT_EQ(raw, block.bytes) << "round " << round;
  }
}

TEST(BlockColumns, BytesThatAreNotFramesAreStoredAsTheyAre) {
  RawBlock block = random_block(99);
  // A frame header announcing more bytes than the block holds: no column form.
  std::vector<uint8_t> junk(block.bytes.begin(), block.bytes.begin() + kFrameHeaderBytes);
  junk[8] = 0xFF;
  junk[9] = 0xFF;
  block.bytes.insert(block.bytes.end(), junk.begin(), junk.end());
  std::vector<uint8_t> split;
  EXPECT_FALSE(split_block_columns(block.bytes, split));
  BlockHeader h;
  std::string err;
  const auto raw = seal_and_unpack(block, h, err);
  EXPECT_FALSE(h.flags & kBlockFlagColumns);
  EXPECT_EQ(raw, block.bytes) << err;
  // And an empty block splits into an empty table.
  ASSERT_TRUE(split_block_columns({}, split));
  EXPECT_EQ(split.size(), kBlockColumnTableBytes);
  std::vector<uint8_t> back{1, 2, 3};
  ASSERT_TRUE(join_block_columns(split, back, err)) << err;
  EXPECT_TRUE(back.empty());
}

// A column form whose table or streams do not add up, sealed with a valid CRC
// (what a writer bug or a corruption under a recomputed CRC would look like):
// refused, with a message naming the column form; never a read out of bounds.
TEST(BlockColumns, InconsistentColumnsAreRefusedWithAClearError) {
  const RawBlock block = random_block(7);
  std::vector<uint8_t> split;
  ASSERT_TRUE(split_block_columns(block.bytes, split));
  std::string err;
  std::vector<uint8_t> back;
  ASSERT_TRUE(join_block_columns(split, back, err)) << err;
  ASSERT_EQ(back, block.bytes);

  // Directly: a table that overruns, a stream moved between columns, a cut payload.
  auto broken = split;
  broken[0] ^= 0x40;  // stream 0 (frame headers) claims 64 more bytes
  EXPECT_FALSE(join_block_columns(broken, back, err));
  EXPECT_NE(err.find("block columns are inconsistent"), std::string::npos) << err;
  broken = split;
  broken[4 * 3] += 1;  // track ids take a byte...
  broken[4 * 4] -= 1;  // ...from the stream ids: sizes still add up
  err.clear();
  EXPECT_FALSE(join_block_columns(broken, back, err));
  EXPECT_NE(err.find("block columns are inconsistent"), std::string::npos) << err;
  err.clear();
  EXPECT_FALSE(join_block_columns({split.data(), split.size() - 1}, back, err));
  EXPECT_FALSE(err.empty());
  EXPECT_FALSE(join_block_columns({split.data(), 10}, back, err));

  // Random damage in the streams (not the table) never crashes and never
  // passes as the original frames.
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    broken = split;
    broken[kBlockColumnTableBytes + rng() % (broken.size() - kBlockColumnTableBytes)] ^=
        static_cast<uint8_t>(1 + rng() % 255);
    if (join_block_columns(broken, back, err)) {
      EXPECT_NE(back, block.bytes);
    }
  }

  // Through unpack_block: the broken form compressed and sealed by hand, CRCs valid.
  broken = split;
  broken[4 * 3] += 1;
  broken[4 * 4] -= 1;
  std::vector<uint8_t> payload(ZSTD_compressBound(broken.size()));
  payload.resize(ZSTD_compress(payload.data(), payload.size(), broken.data(), broken.size(), 1));
  BlockCompressor columns(1, true);
  std::vector<uint8_t> sealed;
  columns.seal(block, sealed);
  BlockHeader h;
  ASSERT_TRUE(decode_block_header({sealed.data(), kBlockHeaderBytes}, h, err));
  ASSERT_TRUE(h.flags & kBlockFlagColumns);
  h.stored_bytes = static_cast<uint32_t>(payload.size());
  h.payload_crc = static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), payload.data(), static_cast<uInt>(payload.size())));
  std::vector<uint8_t> raw;
  err.clear();
  EXPECT_FALSE(unpack_block(h, payload, raw, err));
  EXPECT_NE(err.find("block columns are inconsistent"), std::string::npos) << err;
  // The same payload under a wrong CRC is refused before any join.
  h.payload_crc ^= 1;
  err.clear();
  EXPECT_FALSE(unpack_block(h, payload, raw, err));
  EXPECT_NE(err.find("checksum"), std::string::npos) << err;
}

// Input so repetitive that zstd finds whole frames again is cheap to compress
// as it is: after a split block that compresses 6x or better, the next 63 data
// blocks go unsplit (still exact), then the split is tried again. Varied input
// is split every time.
TEST(BlockColumns, RepetitiveBlocksGoUnsplitForAWhile) {
  RawBlock repetitive;
  std::vector<uint8_t> frame;
  for (int f = 0; f < 20; ++f) {
    FrameEncoder enc;
    for (int i = 0; i < 500; ++i) enc.add(testing::sample_span(1000 * i));
    frame.clear();
    enc.finish(frame);
    repetitive.add(frame, summarize_frame(frame));
  }
  const RawBlock varied = random_block(5);
  BlockCompressor c(1, true);
  std::vector<uint8_t> sealed;
  std::vector<bool> split;
  for (int i = 0; i < 130; ++i) {
    c.seal(repetitive, sealed);
    BlockHeader h;
    std::string err;
    ASSERT_EQ(unpack(sealed, h, err), repetitive.bytes) << err;
    split.push_back(h.flags & kBlockFlagColumns);
  }
  EXPECT_TRUE(split[0]);
  EXPECT_FALSE(split[1]);
  EXPECT_FALSE(split[63]);
  EXPECT_TRUE(split[64]);
  EXPECT_FALSE(split[65]);
  EXPECT_TRUE(split[128]);
  BlockCompressor v(1, true);
  for (int i = 0; i < 3; ++i) {
    v.seal(varied, sealed);
    BlockHeader h;
    std::string err;
    ASSERT_EQ(unpack(sealed, h, err), varied.bytes) << err;
    EXPECT_TRUE(h.flags & kBlockFlagColumns);
  }
}

std::vector<uint8_t> shortest_varint(uint64_t v) {
  std::vector<uint8_t> out;
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<uint8_t>(v) | 0x80);
  out.push_back(static_cast<uint8_t>(v));
  return out;
}

// A frame of the given records (tag, length bytes as written, body). Not
// necessarily decodable (unknown tags, bodies that are not their kind's): the
// column form must keep any well-framed bytes.
struct RawRecord {
  uint8_t tag;
  std::vector<uint8_t> length;  // empty: the shortest form of the body's size
  std::vector<uint8_t> body;
};
std::vector<uint8_t> frame_of(const std::vector<RawRecord>& records) {
  std::vector<uint8_t> frame(kFrameHeaderBytes);
  for (const auto& r : records) {
    frame.push_back(r.tag);
    const auto length = r.length.empty() ? shortest_varint(r.body.size()) : r.length;
    frame.insert(frame.end(), length.begin(), length.end());
    frame.insert(frame.end(), r.body.begin(), r.body.end());
  }
  const auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) frame[at + i] = static_cast<uint8_t>(v >> (8 * i));
  };
  put32(0, kFrameMagic);
  frame[4] = static_cast<uint8_t>(kProtocolVersion);
  put32(8, static_cast<uint32_t>(frame.size() - kFrameHeaderBytes));
  put32(12, static_cast<uint32_t>(frame.size() - kFrameHeaderBytes));
  put32(16, static_cast<uint32_t>(records.size()));
  seal_frame_checksum(frame);
  return frame;
}

// A span body whose correlation id is the given varint bytes (any form,
// shortest or not); every other field one byte, then `args` pairs.
std::vector<uint8_t> span_body(const std::vector<uint8_t>& id, uint8_t args = 0) {
  // track kind, track, stream, name, category, depth, start delta (+2), duration 3
  std::vector<uint8_t> body = {0, 1, 0, 2, 0, 0, 4, 6};
  body.insert(body.end(), id.begin(), id.end());
  body.push_back(0);  // request
  body.push_back(args);
  for (uint8_t a = 0; a < 2 * args; ++a) body.push_back(a);
  return body;
}
std::vector<uint8_t> span_body(uint64_t correlation, uint8_t args) {
  return span_body(shortest_varint(correlation), args);
}

// A frame of spans whose correlation ids are given as their varint bytes.
// Valid frames: they decode.
std::vector<uint8_t> frame_with_correlations(const std::vector<std::vector<uint8_t>>& ids) {
  std::vector<RawRecord> records;
  for (const auto& id : ids)
    records.push_back({static_cast<uint8_t>(RecordKind::kSpan), {}, span_body(id)});
  return frame_of(records);
}

// Format 5: counting-up correlation ids (launch and kernel share one, others
// have none) are coded as deltas, ids not in their shortest form and ids at
// the ends of the range are kept as they are, and the frames come back byte
// for byte. Without the deltas the ids take far more of the column form.
TEST(BlockColumns, CorrelationDeltasRoundTripEveryForm) {
  std::mt19937_64 rng(5);
  RawBlock block;
  uint64_t id = 1'000'000;
  for (int f = 0; f < 6; ++f) {
    std::vector<std::vector<uint8_t>> ids;
    for (int i = 0; i < 400; ++i) {
      switch (rng() % 8) {
        case 0:
          ids.push_back({0x80, 0x00});  // 0, not in its shortest form
          break;
        case 1:
          ids.push_back({0x85, 0x80, 0x00});  // 5, not shortest
          break;
        case 2:
          ids.push_back(shortest_varint(rng() % 2 ? UINT64_MAX : rng()));  // far jumps
          break;
        case 3:
          ids.push_back({0x00});
          break;
        default:
          id += rng() % 3;
          ids.push_back(shortest_varint(id));
      }
    }
    const auto frame = frame_with_correlations(ids);
    ASSERT_TRUE(FrameDecoder(DecoderOptions{kMaxBlockRawBytes}).open(frame).ok());
    block.add(frame, summarize_frame(frame));
  }
  std::vector<uint8_t> coded, plain;
  bool deltas = true;
  ASSERT_TRUE(split_block_columns(block.bytes, coded, &deltas));
  ASSERT_TRUE(deltas);
  ASSERT_TRUE(split_block_columns(block.bytes, plain));
  EXPECT_LT(coded.size(), plain.size());
  std::vector<uint8_t> back;
  std::string err;
  ASSERT_TRUE(join_block_columns(coded, back, err, true, block.bytes.size())) << err;
  EXPECT_EQ(back, block.bytes);
  // The coded form says it is one: joined as format 4, or with another size, it is refused.
  EXPECT_FALSE(join_block_columns(coded, back, err, true, block.bytes.size() + 1));
  EXPECT_FALSE(join_block_columns(coded, back, err, true, block.bytes.size() - 1));
  // Sealed: flag bit 7, and read back through unpack_block.
  BlockHeader h;
  err.clear();
  const auto raw = seal_and_unpack(block, h, err);
  ASSERT_TRUE(err.empty()) << err;
  EXPECT_TRUE(h.flags & kBlockFlagCorrelationDeltas);
  EXPECT_EQ(raw, block.bytes);

  // Damage in the coded streams never reads or writes out of bounds and never
  // passes as the original frames.
  for (int i = 0; i < 300; ++i) {
    auto broken = coded;
    broken[kBlockColumnTableBytes + rng() % (broken.size() - kBlockColumnTableBytes)] ^=
        static_cast<uint8_t>(1 + rng() % 255);
    if (join_block_columns(broken, back, err, true, block.bytes.size())) {
      EXPECT_NE(back, block.bytes);
    }
  }
}

// Ids that jump back and forth across the whole range would code larger than
// they are: the block is split as format 4 has it (no flag bit 7), still exact.
TEST(BlockColumns, CorrelationIdsThatDoNotCountUpAreNotCoded) {
  std::vector<std::vector<uint8_t>> ids;
  for (int i = 0; i < 500; ++i) ids.push_back(shortest_varint(i % 2 ? uint64_t{1} << 62 : 1));
  RawBlock block;
  const auto frame = frame_with_correlations(ids);
  block.add(frame, summarize_frame(frame));
  std::vector<uint8_t> split;
  bool deltas = true;
  ASSERT_TRUE(split_block_columns(block.bytes, split, &deltas));
  EXPECT_FALSE(deltas);
  EXPECT_EQ(split.size(), kBlockColumnTableBytes + block.bytes.size());
  expect_split_without(block, kBlockFlagCorrelationDeltas);
}

// Format 6: spans that are their fields alone keep only a marker in the tag
// stream, and the join writes their lengths back; spans with bytes after their
// fields, with a length not in one byte or not in its shortest form, and spans
// the fast split refuses keep theirs. Byte for byte, with and without deltas.
TEST(BlockColumns, ImpliedSpanLengthsRoundTripEveryForm) {
  std::mt19937_64 rng(13);
  RawBlock block = random_block(31);  // every kind, compressed frames, spans >= 128 bytes
  const uint8_t span = static_cast<uint8_t>(RecordKind::kSpan);
  uint64_t id = 77;
  for (int f = 0; f < 4; ++f) {
    std::vector<RawRecord> records;
    for (int i = 0; i < 300; ++i) {
      RawRecord r{span, {}, span_body(id += rng() % 2, static_cast<uint8_t>(rng() % 3))};
      switch (rng() % 10) {
        case 0:  // bytes after the fields (a newer revision's)
          for (int k = static_cast<int>(rng() % 3); k >= 0; --k)
            r.body.push_back(static_cast<uint8_t>(rng()));
          break;
        case 1:  // a length not in its shortest form
          r.length = {static_cast<uint8_t>(0x80 | r.body.size()), 0x00};
          break;
        case 2:  // a category byte that continues: split field by field
          r.body[4] |= 0x80;
          break;
        case 3:  // a record of a kind this code does not know
          r.tag = 0x70;
          break;
        default:
          break;
      }
      records.push_back(std::move(r));
    }
    const auto frame = frame_of(records);
    block.add(frame, {});
  }
  std::vector<uint8_t> implied, kept;
  bool deltas = true, lengths = true;
  ASSERT_TRUE(split_block_columns(block.bytes, implied, &deltas, &lengths));
  ASSERT_TRUE(lengths);
  ASSERT_TRUE(split_block_columns(block.bytes, kept, &deltas));
  // Most spans' lengths are gone from the form.
  EXPECT_LT(implied.size() + 1000, kept.size());
  std::vector<uint8_t> back;
  std::string err;
  ASSERT_TRUE(join_block_columns(implied, back, err, deltas, block.bytes.size(), true)) << err;
  EXPECT_EQ(back, block.bytes);
  // Told the wrong frame size, or that the lengths are all there, the join refuses.
  EXPECT_FALSE(join_block_columns(implied, back, err, deltas, block.bytes.size() + 1, true));
  EXPECT_FALSE(join_block_columns(implied, back, err, deltas, block.bytes.size() - 1, true));
  EXPECT_FALSE(join_block_columns(implied, back, err, deltas, block.bytes.size(), false));
  // Without deltas too.
  bool no_deltas = false;
  lengths = true;
  ASSERT_TRUE(split_block_columns(block.bytes, implied, &no_deltas, &lengths));
  ASSERT_TRUE(lengths);
  ASSERT_TRUE(join_block_columns(implied, back, err, false, block.bytes.size(), true)) << err;
  EXPECT_EQ(back, block.bytes);
  // Sealed: flag bit 8, read back through unpack_block.
  BlockHeader h;
  err.clear();
  const auto raw = seal_and_unpack(block, h, err);
  ASSERT_TRUE(err.empty()) << err;
  EXPECT_TRUE(h.flags & kBlockFlagImpliedSpanLengths);
  EXPECT_EQ(raw, block.bytes);

  // Damage in the streams never reads or writes out of bounds and never passes
  // as the original frames.
  ASSERT_TRUE(split_block_columns(block.bytes, implied, &deltas, &lengths));
  for (int i = 0; i < 500; ++i) {
    auto broken = implied;
    broken[kBlockColumnTableBytes + rng() % (broken.size() - kBlockColumnTableBytes)] ^=
        static_cast<uint8_t>(1 + rng() % 255);
    if (join_block_columns(broken, back, err, deltas, block.bytes.size(), true)) {
      EXPECT_NE(back, block.bytes);
    }
  }
}

// 200 spans, then a record whose tag is the implied-length marker's.
std::vector<RawRecord> spans_then_the_markers_tag() {
  std::vector<RawRecord> records;
  for (int i = 0; i < 200; ++i)
    records.push_back({static_cast<uint8_t>(RecordKind::kSpan), {}, span_body(i, 0)});
  records.push_back({0x82, {}, {1, 2, 3}});
  return records;
}

// A record whose tag is the marker's (a newer protocol's kind): the block is
// split with its lengths, as format 5 has it, still exact.
TEST(BlockColumns, RecordsWithTheMarkersTagKeepEveryLength) {
  RawBlock block;
  const auto frame = frame_of(spans_then_the_markers_tag());
  block.add(frame, {});
  std::vector<uint8_t> split;
  bool deltas = true, lengths = true;
  ASSERT_TRUE(split_block_columns(block.bytes, split, &deltas, &lengths));
  EXPECT_FALSE(lengths);
  EXPECT_TRUE(deltas);
  expect_split_without(block, kBlockFlagImpliedSpanLengths);
}

// A span cut short inside its correlation id, with a byte 0x01 where the bytes
// after it would end that id at offset 64: the fast split refuses the span
// (its fields run past the body) without decoding a varint over 10 bytes (UB
// that UBSan stops on), and the block, not whole spans, is stored unsplit.
TEST(BlockColumns, CorrelationIdRunningPastTheBodyIsRefused) {
  const uint8_t span = static_cast<uint8_t>(RecordKind::kSpan);
  // Eight one-byte fields, then an id that continues to the end of the body.
  const std::vector<uint8_t> cut = {0, 1, 0, 2, 0, 0, 4, 6, 0x85, 0x85};
  RawBlock block;
  const auto frame = frame_of({{span, {}, cut},
                               {0x70, {}, std::vector<uint8_t>(60, 0x01)},
                               {0x70, {}, std::vector<uint8_t>(60, 0x01)}});
  block.add(frame, {});
  for (const bool deltas_wanted : {false, true}) {
    std::vector<uint8_t> split;
    bool deltas = deltas_wanted, lengths = true;
    EXPECT_FALSE(split_block_columns(block.bytes, split, &deltas, &lengths));
  }
  BlockHeader h;
  std::string err;
  EXPECT_EQ(seal_and_unpack(block, h, err), block.bytes) << err;
  EXPECT_FALSE(h.flags & kBlockFlagColumns);
}

// The split's two code paths (BMI1/2 where the CPU has them, baseline x86-64)
// give the same column form, byte for byte, on every kind of block.
TEST(BlockColumns, BaselineAndBmiSplitsAgree) {
  std::vector<RawBlock> blocks;
  for (uint32_t seed = 1; seed <= 6; ++seed) blocks.push_back(random_block(seed));
  std::vector<RawRecord> records;
  for (int i = 0; i < 300; ++i) {
    records.push_back({static_cast<uint8_t>(RecordKind::kSpan), {}, span_body(i, i % 3)});
    if (i % 5 == 0) records.back().body.push_back(9);  // a byte after the fields
    if (i % 7 == 0) records.back().body[4] |= 0x80;    // split field by field
  }
  blocks.emplace_back();
  const auto frame = frame_of(records);
  blocks.back().add(frame, {});
  for (const auto& block : blocks) {
    for (const bool want : {false, true}) {
      std::vector<uint8_t> fast, baseline;
      bool deltas = want, lengths = want, deltas_b = want, lengths_b = want;
      const bool ok = split_block_columns(block.bytes, fast, &deltas, &lengths);
      detail::use_baseline_split(true);
      const bool ok_b = split_block_columns(block.bytes, baseline, &deltas_b, &lengths_b);
      detail::use_baseline_split(false);
      ASSERT_EQ(ok, ok_b);
      EXPECT_EQ(deltas, deltas_b);
      EXPECT_EQ(lengths, lengths_b);
      EXPECT_EQ(fast, baseline);
      std::vector<uint8_t> back;
      std::string err;
      ASSERT_TRUE(join_block_columns(baseline, back, err, deltas, block.bytes.size(), lengths))
          << err;
      EXPECT_EQ(back, block.bytes);
    }
  }
}

TEST(BlockColumns, ColumnFlagWithoutZstdIsRefused) {
  BlockHeader h;
  h.flags = kBlockFlagColumns;
  uint8_t bytes[kBlockHeaderBytes];
  encode_block_header(h, bytes);
  std::string err;
  EXPECT_FALSE(decode_block_header({bytes, kBlockHeaderBytes}, h, err));
  EXPECT_NE(err.find("unknown block flags"), std::string::npos) << err;
  // Correlation deltas only come with the column form.
  h.flags = kBlockFlagZstd | kBlockFlagCorrelationDeltas;
  encode_block_header(h, bytes);
  EXPECT_FALSE(decode_block_header({bytes, kBlockHeaderBytes}, h, err));
  EXPECT_NE(err.find("unknown block flags"), std::string::npos) << err;
  // So do implied span lengths.
  h.flags = kBlockFlagZstd | kBlockFlagImpliedSpanLengths;
  encode_block_header(h, bytes);
  EXPECT_FALSE(decode_block_header({bytes, kBlockHeaderBytes}, h, err));
  EXPECT_NE(err.find("unknown block flags"), std::string::npos) << err;
  h.flags = kBlockFlagZstd | kBlockFlagColumns | kBlockFlagImpliedSpanLengths;
  encode_block_header(h, bytes);
  EXPECT_TRUE(decode_block_header({bytes, kBlockHeaderBytes}, h, err)) << err;
  EXPECT_TRUE(supported_trace_format(kTraceFileFormatColumns));
  EXPECT_TRUE(supported_trace_format(kTraceFileFormatCorrelationDeltas));
  EXPECT_TRUE(supported_trace_format(kTraceFileFormatImpliedSpanLengths));
  EXPECT_FALSE(supported_trace_format(kTraceFileFormatImpliedSpanLengths + 1));
  EXPECT_TRUE(trace_format_has_summaries(kTraceFileFormatColumns));
  EXPECT_TRUE(trace_format_has_summaries(kTraceFileFormatCorrelationDeltas));
  EXPECT_TRUE(trace_format_has_summaries(kTraceFileFormatImpliedSpanLengths));
  EXPECT_FALSE(trace_format_has_summaries(kTraceBlockFormatVersion));
}

// [SECTION] ColumnBuilder: the column form built as frames arrive

// The frames of a block, one span each.
std::vector<std::span<const uint8_t>> frames_of(const RawBlock& block) {
  std::vector<std::span<const uint8_t>> frames;
  const FrameDecoder sizer(DecoderOptions{kMaxBlockRawBytes});
  std::span<const uint8_t> rest(block.bytes);
  while (!rest.empty()) {
    size_t n = 0;
    EXPECT_TRUE(sizer.frame_size(rest, n).ok());
    if (n == 0) break;
    frames.push_back(rest.first(n));
    rest = rest.subspan(n);
  }
  return frames;
}

// Frames fed to a builder every way the store feeds them (split whole; split
// by the decoder as it decodes, with the header restamped as the collector
// stores it; decoded and split, then undone; abandoned part-way, then added
// whole) give the column form split_block_columns makes of the stored frames,
// byte for byte, with correlation deltas and implied span lengths. Frames the
// decoder refuses (damaged spans, unknown kinds) go in whole, as the store's
// replay and alerts do. It fails when the decoder's split of a span differs
// from the split's in any byte (a field's stream, the marker, the coding).
TEST(ColumnBuilder, DecodedAndWholeFramesGiveTheSplitOfTheBlock) {
  std::mt19937_64 rng(5);
  ColumnBuilder builder;
  size_t decoded = 0, abandoned = 0, undone = 0, whole = 0, blocks_compared = 0;
  for (uint32_t seed = 0; seed < 12; ++seed) {
    RawBlock source = random_block(seed);
    // Agent-like frames too: ids that count up (coded as deltas), spans of
    // their fields alone (the marker), some spans with bytes after their fields.
    uint64_t id = 1;
    for (int f = 0; f < 6; ++f) {
      std::vector<RawRecord> records;
      for (int i = 0; i < 400; ++i) {
        RawRecord r{static_cast<uint8_t>(RecordKind::kSpan),
                    {},
                    span_body(id += rng() % 3, static_cast<uint8_t>(rng() % 3))};
        if (rng() % 8 == 0) r.body.push_back(static_cast<uint8_t>(rng() & 0x7F));
        records.push_back(std::move(r));
      }
      const auto frame = frame_of(records);
      source.add(frame, {});
    }
    RawBlock block;
    for (const auto frame : frames_of(source)) {
      std::vector<uint8_t> stored(frame.begin(), frame.end());
      restamp_source_id(stored, 1000 + seed);
      const int way = static_cast<int>(rng() % 8);
      FrameDecoder dec(DecoderOptions{kMaxBlockRawBytes});
      const bool fused = way != 0 && dec.open(frame).ok() && dec.fuse_columns(&builder);
      if (!fused) {
        builder.add_frame(stored);
        block.add(stored, {});
        ++whole;
        continue;
      }
      Record r;
      size_t records = 0;
      while (dec.next(r))
        if (way == 1 && ++records == 50) dec.stop_columns();  // a hello, say
      if (!dec.status().ok()) {                               // not a frame the collector stores
        builder.undo_frame();
        builder.add_frame(stored);
        block.add(stored, {});
        ++whole;
        continue;
      }
      if (way == 2) {  // rejected after all (a duplicate)
        builder.undo_frame();
        ++undone;
        continue;
      }
      if (builder.finish_decoded_frame(stored)) {
        ++decoded;
      } else {
        builder.add_frame(stored);
        ++abandoned;
      }
      block.add(stored, {});
    }
    std::vector<uint8_t> expected;
    bool deltas = true, lengths = true;
    ASSERT_TRUE(split_block_columns(block.bytes, expected, &deltas, &lengths));
    const bool took = builder.take(block);
    // The builder takes the block exactly when the split keeps both codings.
    ASSERT_EQ(took, deltas && lengths) << "seed " << seed;
    ASSERT_EQ(block.has_columns, took);
    if (!took) continue;
    ++blocks_compared;
    ASSERT_EQ(block.columns, expected) << "seed " << seed;
    // And sealed from it, the block reads back as its frames.
    BlockHeader h;
    std::string err;
    const auto raw = seal_and_unpack(block, h, err);
    ASSERT_TRUE(err.empty()) << err;
    EXPECT_EQ(raw, block.bytes);
  }
  EXPECT_GE(blocks_compared, 6u);
  EXPECT_GT(decoded, 100u);
  EXPECT_GT(abandoned, 10u);
  EXPECT_GT(undone, 10u);
  EXPECT_GT(whole, 30u);
}

// A block that the builder cannot take (a record with the marker's tag spoils
// it; so does a frame added while a decoded one is pending) is split by the
// compressor from its frames, as before.
TEST(ColumnBuilder, SpoiledBlocksAreLeftToTheSplit) {
  ColumnBuilder builder;
  RawBlock block;
  auto records = spans_then_the_markers_tag();
  const auto marked = frame_of(records);
  builder.add_frame(marked);
  block.add(marked, {});
  EXPECT_FALSE(builder.take(block));
  EXPECT_FALSE(block.has_columns);
  expect_split_without(block, kBlockFlagImpliedSpanLengths);

  // After take(), the next block starts clean.
  RawBlock next;
  records.pop_back();
  const auto plain = frame_of(records);
  FrameDecoder dec;
  ASSERT_TRUE(dec.open(plain).ok());
  ASSERT_TRUE(dec.fuse_columns(&builder));
  builder.add_frame(plain);  // out of order: the decoded frame's place is taken
  next.add(plain, {});
  EXPECT_FALSE(builder.take(next));
  RawBlock last;
  builder.add_frame(plain);
  last.add(plain, {});
  EXPECT_TRUE(builder.take(last));
  std::vector<uint8_t> expected;
  bool deltas = true, lengths = true;
  ASSERT_TRUE(split_block_columns(last.bytes, expected, &deltas, &lengths));
  EXPECT_EQ(last.columns, expected);
}

// FrameDecoder::next's inline path (a span with a one-byte length, codec.hpp)
// and its out-of-line rest give, record by record, what decode_body gives for
// each record of the frame: the same spans and timestamp chain, newer kinds
// skipped, and the same error at the same record, with a column builder fused
// or without. The frames mix spans the fast decoders take, spans they refuse
// (damaged, or too near the frame's end to read past), spans with two-byte
// lengths, and records of an unknown kind between them.
TEST(FrameDecoder, InlineSpanPathDecodesAsTheCheckedDecoderRecordByRecord) {
  std::mt19937_64 rng(17);
  ColumnBuilder builder;
  size_t spans = 0, skipped = 0, errors = 0;
  for (int f = 0; f < 300; ++f) {
    std::vector<RawRecord> records;
    int64_t chain = 0;
    const int count = 1 + static_cast<int>(rng() % 200);
    for (int i = 0; i < count; ++i) {
      const int what = static_cast<int>(rng() % 20);
      if (what == 0) {  // a newer kind
        std::vector<uint8_t> body(rng() % 40);
        for (auto& b : body) b = static_cast<uint8_t>(rng());
        records.push_back({200, {}, body});
        continue;
      }
      Span s;
      s.track_id = static_cast<uint32_t>(rng() % 3000);
      s.name_id = static_cast<uint32_t>(rng() % 40);
      s.depth = static_cast<uint16_t>(rng() % 4);
      s.start_ns = chain + static_cast<int64_t>(rng() % 5'000'000) - 1'000'000;
      s.end_ns = s.start_ns + static_cast<int64_t>(rng() % 60'000);
      s.correlation_id = rng() % 2 ? rng() % 100'000 : 0;
      s.num_args = static_cast<uint8_t>(rng() % 3);
      for (uint8_t a = 0; a < s.num_args; ++a)
        s.args[a] = {static_cast<uint32_t>(rng() % 50), static_cast<int64_t>(rng() % 1000) - 500};
      std::vector<uint8_t> record;
      add_one(record, chain, s);
      const size_t head = (record[1] & 0x80) ? 3 : 2;
      std::vector<uint8_t> body(record.begin() + static_cast<ptrdiff_t>(head), record.end());
      if (what == 1) body.resize(body.size() + 130, 0x11);  // past 127 bytes: a two-byte length
      if (what == 2 && f % 3 == 0) body[rng() % body.size()] = static_cast<uint8_t>(rng());
      records.push_back({static_cast<uint8_t>(RecordKind::kSpan), {}, body});
    }
    const auto frame = frame_of(records);

    // What decode_body makes of each record in turn.
    std::vector<Record> expected;
    std::string expected_error;
    int64_t prev = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      Record r;
      std::string why;
      const BodyResult result = decode_body(records[i].tag, records[i].body, prev, r, why);
      if (result == BodyResult::kError) {
        expected_error = "record " + std::to_string(i) + " (" +
                         to_string(static_cast<RecordKind>(records[i].tag)) + "): " + why;
        break;
      }
      if (result == BodyResult::kOk) expected.push_back(std::move(r));
    }

    for (const bool fused : {false, true}) {
      FrameDecoder dec(DecoderOptions{kMaxBlockRawBytes});
      ASSERT_TRUE(dec.open(frame).ok());
      if (fused) {
        ASSERT_TRUE(dec.fuse_columns(&builder));
      }
      std::vector<Record> got;
      Record r;
      while (dec.next(r)) got.push_back(r);
      if (fused) builder.undo_frame();
      ASSERT_EQ(got.size(), expected.size()) << "frame " << f << (fused ? " fused" : "");
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].index(), expected[i].index()) << f << " " << i;
        if (const auto* span = std::get_if<Span>(&got[i])) {
          ASSERT_EQ(*span, std::get<Span>(expected[i])) << f << " " << i;
          ASSERT_EQ(span->args, std::get<Span>(expected[i]).args) << f << " " << i;
        }
      }
      if (expected_error.empty()) {
        ASSERT_TRUE(dec.status().ok()) << dec.status().message;
      } else {
        ASSERT_FALSE(dec.status().ok());
        ASSERT_EQ(dec.status().message, expected_error);
      }
    }
    spans += expected.size();
    skipped += static_cast<size_t>(std::count_if(records.begin(), records.end(),
                                                 [](const RawRecord& r) { return r.tag == 200; }));
    errors += !expected_error.empty();
  }
  // Every case occurs.
  EXPECT_GT(spans, 10000u);
  EXPECT_GT(skipped, 500u);
  EXPECT_GT(errors, 10u);
}

}  // namespace
}  // namespace inferscope::wire
