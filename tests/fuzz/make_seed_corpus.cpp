// Writes the seed corpus: valid frames of every record kind (plain and zstd),
// multi-frame streams and a trace file, which the fuzzers mutate from.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_file.hpp"
#include "sample_records.hpp"

using namespace inferscope::wire;

static void write(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::filesystem::path root(argv[1]);
  std::filesystem::create_directories(root / "frame_decoder");
  std::filesystem::create_directories(root / "trace_reader");
  auto records = testing::one_of_each();
  std::vector<uint8_t> stream;
  for (size_t i = 0; i < records.size(); ++i) {
    for (bool compress : {false, true}) {
      EncoderOptions options;
      options.compress = compress;
      options.compress_min_bytes = 8;
      FrameEncoder enc(options);
      enc.add(records[i]);
      std::vector<uint8_t> frame;
      enc.finish(frame);
      write(root / "frame_decoder" /
                (std::string(to_string(kind_of(records[i]))) + (compress ? "_zstd" : "") + ".bin"),
            frame);
      stream.insert(stream.end(), frame.begin(), frame.end());
    }
  }
  write(root / "frame_decoder" / "stream_all_kinds.bin", stream);
  std::vector<uint8_t> trace(kTraceFileHeaderBytes);
  std::copy(std::begin(kTraceFileMagic), std::end(kTraceFileMagic), trace.begin());
  trace[8] = kProtocolVersion;
  trace.insert(trace.end(), stream.begin(), stream.end());
  write(root / "trace_reader" / "all_kinds.istrace", trace);
  trace.resize(trace.size() - 9);
  write(root / "trace_reader" / "truncated.istrace", trace);
  std::puts("seed corpus written");
  return 0;
}
