// Trace file format 2 as read by the wire library's TraceFileReader and
// scan_blocks(): blocks round-trip, v1 files still read, and every kind of
// damage (torn tail, bad payload, bad header in the middle, garbage, a file cut
// inside the file header) gives a clear error or a counted skip, never a silent one.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "inferscope/wire/trace_block.hpp"
#include "inferscope/wire/trace_file.hpp"
#include "test_client.hpp"

namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> frame_at(int64_t t) {
  wire::FrameEncoder enc;
  for (int k = 0; k < 20; ++k) {
    wire::Span s;
    s.name_id = 1;
    s.start_ns = t + k * 100;
    s.end_ns = s.start_ns + 50;
    enc.add(s);
  }
  std::vector<uint8_t> f;
  enc.finish(f);
  return f;
}

// A v2 file of `blocks` blocks, each of 5 frames; block b covers times [b s, b s + 5 frames).
std::vector<uint8_t> v2_file(int blocks, std::vector<size_t>* block_offsets = nullptr) {
  std::vector<uint8_t> out(16);
  wire::encode_v2_file_header(out.data());
  wire::BlockCompressor c(1);
  std::vector<uint8_t> sealed;
  for (int b = 0; b < blocks; ++b) {
    wire::RawBlock raw;
    for (int f = 0; f < 5; ++f) {
      auto fr = frame_at(int64_t{b} * 1'000'000'000 + f * 10'000);
      raw.add(fr, wire::summarize_frame(fr));
    }
    c.seal(raw, sealed);
    if (block_offsets) block_offsets->push_back(out.size());
    out.insert(out.end(), sealed.begin(), sealed.end());
  }
  return out;
}

struct Count {
  size_t frames = 0;
  wire::TraceReadStats stats;
  std::string report;
};
Count read_bytes(std::vector<uint8_t> bytes) {
  Count c;
  wire::TraceFileReader r;
  EXPECT_TRUE(r.open_bytes(std::move(bytes))) << r.error();
  std::span<const uint8_t> f;
  while (r.next_frame(f)) {
    std::vector<wire::Record> recs;
    EXPECT_TRUE(wire::decode_frame(f, recs).ok());
    ++c.frames;
  }
  c.stats = r.stats();
  c.report = r.damage_report();
  return c;
}

std::string write_temp(const std::string& name, const std::vector<uint8_t>& bytes) {
  const auto path =
      (fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))).string();
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace

TEST(TraceBlocks, RoundTripAndHeaderTimes) {
  Count c = read_bytes(v2_file(4));
  EXPECT_EQ(c.frames, 20u);
  EXPECT_EQ(c.stats.format, 2);
  EXPECT_EQ(c.stats.blocks, 4u);
  EXPECT_TRUE(c.report.empty()) << c.report;
  const auto path = write_temp("inferscope-blocks-ok", v2_file(4));
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
  ASSERT_EQ(scan.blocks.size(), 4u);
  EXPECT_FALSE(scan.torn_tail);
  EXPECT_EQ(scan.valid_bytes, scan.file_bytes);
  EXPECT_EQ(scan.blocks[2].header.min_ns, 2'000'000'000);
  EXPECT_EQ(scan.blocks[2].header.max_ns, 2'000'000'000 + 4 * 10'000 + 19 * 100 + 50);
  EXPECT_EQ(scan.blocks[2].header.frames, 5u);
  EXPECT_EQ(scan.blocks[2].header.records, 100u);
  EXPECT_TRUE(scan.blocks[2].header.flags & wire::kBlockFlagZstd);
  fs::remove(path);
}

TEST(TraceBlocks, V1FilesStillRead) {
  const auto path =
      (fs::temp_directory_path() / ("inferscope-blocks-v1-" + std::to_string(::getpid()))).string();
  wire::TraceFileWriter w;
  ASSERT_TRUE(w.open(path)) << w.error();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(w.write_frame(frame_at(i)));
  w.close();
  wire::TraceFileReader r;
  ASSERT_TRUE(r.open(path)) << r.error();
  std::span<const uint8_t> f;
  size_t n = 0;
  while (r.next_frame(f)) ++n;
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(r.stats().format, 1);
  fs::remove(path);
}

TEST(TraceBlocks, TornLastBlockKeepsEveryEarlierBlock) {
  std::vector<size_t> offsets;
  auto bytes = v2_file(4, &offsets);
  bytes.resize(offsets[3] + 30);  // inside the last block's header
  Count c = read_bytes(bytes);
  EXPECT_EQ(c.frames, 15u);
  EXPECT_TRUE(c.stats.truncated_tail);
  EXPECT_NE(c.report.find("ends inside a block"), std::string::npos) << c.report;
  bytes = v2_file(4);
  bytes.resize(bytes.size() - 7);  // inside the last block's payload
  c = read_bytes(bytes);
  EXPECT_EQ(c.frames, 15u);
  EXPECT_TRUE(c.stats.truncated_tail);
  const auto path = write_temp("inferscope-blocks-torn", bytes);
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
  EXPECT_TRUE(scan.torn_tail);
  EXPECT_EQ(scan.blocks.size(), 3u);
  EXPECT_EQ(scan.valid_bytes, offsets[3]);
  EXPECT_FALSE(scan.tail_problem.empty());
  fs::remove(path);
}

TEST(TraceBlocks, CorruptPayloadSkipsThatBlockOnlyAndSaysSo) {
  std::vector<size_t> offsets;
  auto bytes = v2_file(4, &offsets);
  bytes[offsets[1] + wire::kBlockHeaderBytes + 5] ^= 0x40;  // payload CRC no longer matches
  Count c = read_bytes(bytes);
  EXPECT_EQ(c.frames, 15u);
  EXPECT_EQ(c.stats.corrupt_blocks, 1u);
  EXPECT_FALSE(c.stats.truncated_tail);
  EXPECT_NE(c.report.find("1 corrupt block"), std::string::npos) << c.report;
}

TEST(TraceBlocks, CorruptHeaderInTheMiddleResynchronises) {
  std::vector<size_t> offsets;
  auto bytes = v2_file(4, &offsets);
  bytes[offsets[1] + 12] ^= 0xff;  // stored size: the header CRC catches it
  Count c = read_bytes(bytes);
  EXPECT_EQ(c.frames, 15u);
  EXPECT_EQ(c.stats.corrupt_blocks, 1u);
  EXPECT_GT(c.stats.bytes_skipped, 0u);
  const auto path = write_temp("inferscope-blocks-mid", bytes);
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
  EXPECT_EQ(scan.blocks.size(), 3u);
  EXPECT_EQ(scan.damaged_regions, 1u);
  EXPECT_FALSE(scan.torn_tail);
  fs::remove(path);
}

TEST(TraceBlocks, GarbageAndShortFilesGiveClearErrors) {
  wire::TraceFileReader r;
  EXPECT_FALSE(r.open_bytes({'h', 'e', 'l', 'l', 'o'}));
  EXPECT_NE(r.error().find("not an inferscope trace file"), std::string::npos) << r.error();
  auto header_only = v2_file(0);
  header_only.resize(12);
  EXPECT_FALSE(r.open_bytes(header_only));
  auto bad_format = v2_file(1);
  bad_format[10] = 9;
  EXPECT_FALSE(r.open_bytes(bad_format));
  EXPECT_NE(r.error().find("block format 9"), std::string::npos) << r.error();
  // A good header followed by garbage: nothing is handed out, and it is counted.
  auto garbage = v2_file(0);
  for (int i = 0; i < 1000; ++i) garbage.push_back(static_cast<uint8_t>(i * 37));
  Count c = read_bytes(garbage);
  EXPECT_EQ(c.frames, 0u);
  EXPECT_FALSE(c.report.empty());
  const auto path = write_temp("inferscope-blocks-garbage", garbage);
  wire::BlockScan scan;
  std::string error;
  ASSERT_TRUE(wire::scan_blocks(path, scan, error)) << error;
  EXPECT_TRUE(scan.torn_tail);
  EXPECT_TRUE(scan.blocks.empty());
  EXPECT_EQ(scan.valid_bytes, 16u);
  const auto not_trace = write_temp("inferscope-blocks-text", {'t', 'e', 'x', 't'});
  EXPECT_FALSE(wire::scan_blocks(not_trace, scan, error));
  EXPECT_NE(error.find("not a v2"), std::string::npos) << error;
  fs::remove(path);
  fs::remove(not_trace);
}
