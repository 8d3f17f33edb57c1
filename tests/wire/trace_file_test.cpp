// Trace files: written whole, read back, and recovered after truncation or corruption.
#include "inferscope/wire/trace_file.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "sample_records.hpp"

namespace inferscope::wire {
namespace {

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() /
          (std::string("inferscope_") + name + "_" + std::to_string(::getpid())))
      .string();
}

std::vector<uint8_t> frame_of(int64_t base) {
  FrameEncoder enc;
  for (int i = 0; i < 10; ++i) enc.add(testing::sample_span(base + i));
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  return bytes;
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

size_t count_frames(TraceFileReader& reader) {
  std::span<const uint8_t> frame;
  size_t n = 0;
  while (reader.next_frame(frame)) ++n;
  return n;
}

TEST(TraceFile, WriteAndReadBack) {
  auto path = temp_path("ok");
  TraceFileWriter w;
  ASSERT_TRUE(w.open(path)) << w.error();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(w.write_frame(frame_of(i * 100)));
  w.close();
  TraceFileReader r;
  ASSERT_TRUE(r.open(path)) << r.error();
  EXPECT_EQ(count_frames(r), 5u);
  EXPECT_TRUE(r.damage_report().empty());
  std::filesystem::remove(path);
}

TEST(TraceFile, TruncatedTailRecoversEveryCompleteFrame) {
  auto path = temp_path("trunc");
  TraceFileWriter w;
  ASSERT_TRUE(w.open(path));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(w.write_frame(frame_of(i * 100)));
  w.close();
  auto bytes = file_bytes(path);
  size_t frame_bytes = frame_of(0).size();
  for (size_t cut = 1; cut < frame_bytes; cut += 7) {
    std::vector<uint8_t> truncated(bytes.begin(), bytes.end() - static_cast<long>(cut));
    TraceFileReader r;
    ASSERT_TRUE(r.open_bytes(truncated));
    EXPECT_EQ(count_frames(r), 4u) << "cut " << cut;
    EXPECT_TRUE(r.stats().truncated_tail);
    EXPECT_NE(r.damage_report().find("recovered 4 frames"), std::string::npos);
  }
  std::filesystem::remove(path);
}

TEST(TraceFile, CorruptMiddleFrameIsSkippedOthersRecovered) {
  std::vector<uint8_t> bytes(kTraceFileHeaderBytes);
  std::memcpy(bytes.data(), kTraceFileMagic, 8);
  bytes[8] = kProtocolVersion;
  std::vector<size_t> starts;
  for (int i = 0; i < 5; ++i) {
    starts.push_back(bytes.size());
    auto f = frame_of(i);
    bytes.insert(bytes.end(), f.begin(), f.end());
  }
  bytes[starts[2] + 40] ^= 0xff;  // inside frame 2's payload
  TraceFileReader r;
  ASSERT_TRUE(r.open_bytes(bytes));
  EXPECT_EQ(count_frames(r), 4u);
  EXPECT_GE(r.stats().corrupt_frames, 1u);
  EXPECT_FALSE(r.stats().truncated_tail);
}

TEST(TraceFile, NotATraceIsAClearError) {
  TraceFileReader r;
  EXPECT_FALSE(r.open_bytes({'h', 'e', 'l', 'l', 'o'}));
  EXPECT_NE(r.error().find("not an inferscope trace"), std::string::npos);
  EXPECT_FALSE(r.open("/nonexistent/trace.istrace"));
  EXPECT_NE(r.error().find("cannot open"), std::string::npos);
}

TEST(TraceFile, FullDiskLeavesOnlyWholeFrames) {
  // /dev/full fails every write with ENOSPC.
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "/dev/full not present";
  TraceFileWriter w;
  EXPECT_FALSE(w.open("/dev/full"));
  EXPECT_NE(w.error().find("No space"), std::string::npos) << w.error();
}

}  // namespace
}  // namespace inferscope::wire
