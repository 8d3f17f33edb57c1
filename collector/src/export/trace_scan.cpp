// Read-only, time-indexed frame walks over trace files (trace_scan.hpp).
#include "inferscope/collector/trace_scan.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>

#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "inferscope/wire/trace_file.hpp"

namespace inferscope::collector {
namespace {

int file_format(const std::string& path, std::string& error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = path + ": cannot open";
    return 0;
  }
  std::array<uint8_t, wire::kTraceFileHeaderBytes> head{};
  const ssize_t n = ::read(fd, head.data(), head.size());
  ::close(fd);
  const int format = n > 0 ? wire::trace_file_format({head.data(), static_cast<size_t>(n)}) : 0;
  if (format == 0) error = path + ": not an inferscope trace file";
  return format;
}

// False when the visitor asked to stop.
bool visit_frame(std::span<const uint8_t> frame, const TraceFrameVisitor& visit,
                 TraceScanStats& stats) {
  // The source id sits in the frame header; the exporters decode the frame
  // themselves, so only the header is read here.
  wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  if (!dec.open(frame).ok()) {
    ++stats.corrupt_frames;
    return true;
  }
  ++stats.frames;
  return visit(dec.header().source_id, frame);
}

bool scan_v1(const std::string& path, const TraceFrameVisitor& visit, TraceScanStats& stats,
             bool& stopped, std::string& error) {
  wire::TraceFileReader reader;
  if (!reader.open(path)) {
    error = reader.error();
    return false;
  }
  std::span<const uint8_t> frame;
  while (!stopped && reader.next_frame(frame)) stopped = !visit_frame(frame, visit, stats);
  stats.corrupt_frames += reader.stats().corrupt_frames;
  if (!reader.damage_report().empty()) stats.damage.push_back(path + ": " + reader.damage_report());
  return true;
}

bool scan_v2(const std::string& path, int64_t start_ns, int64_t end_ns,
             const TraceFrameVisitor& visit, TraceScanStats& stats, bool& stopped,
             std::string& error) {
  wire::BlockScan scan;
  if (!wire::scan_blocks(path, scan, error)) return false;
  // The last block that overlaps: definition blocks before it are read too.
  size_t last = scan.blocks.size();
  for (size_t i = scan.blocks.size(); i-- > 0;)
    if (scan.blocks[i].header.overlaps(start_ns, end_ns)) {
      last = i;
      break;
    }
  if (last == scan.blocks.size()) {
    stats.blocks_skipped += scan.blocks.size();
    return true;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = path + ": cannot open";
    return false;
  }
  wire::FrameDecoder sizer(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  std::vector<uint8_t> raw;
  uint64_t bad_blocks = 0;
  for (size_t i = 0; i <= last && !stopped; ++i) {
    const auto& h = scan.blocks[i].header;
    if (h.summary_level() != 0)
      continue;  // level-of-detail copies: every record is in its data block
    if (!h.overlaps(start_ns, end_ns) && !(h.flags & wire::kBlockFlagDefinitions)) {
      ++stats.blocks_skipped;
      continue;
    }
    std::string block_error;
    if (!wire::read_block(fd, scan.blocks[i], raw, block_error)) {
      ++bad_blocks;
      continue;
    }
    ++stats.blocks_read;
    std::span<const uint8_t> rest(raw);
    while (!rest.empty()) {
      size_t n = 0;
      if (!sizer.frame_size(rest, n).ok()) {
        ++bad_blocks;  // the block's CRC was good, so it was written bad: stop there
        break;
      }
      if (!visit_frame(rest.first(n), visit, stats)) {
        stopped = true;
        break;
      }
      rest = rest.subspan(n);
    }
  }
  if (!stopped) stats.blocks_skipped += scan.blocks.size() - 1 - last;
  ::close(fd);
  stats.corrupt_frames += bad_blocks;
  if (bad_blocks || scan.damaged_regions || scan.torn_tail)
    stats.damage.push_back(path + ": " + std::to_string(bad_blocks) + " unreadable block(s), " +
                           std::to_string(scan.damaged_regions) + " damaged region(s)" +
                           (scan.torn_tail ? ", torn tail (" + scan.tail_problem + ")" : ""));
  return true;
}

}  // namespace

bool scan_trace_files(const std::vector<std::string>& files, int64_t start_ns, int64_t end_ns,
                      const TraceFrameVisitor& visit, TraceScanStats& stats, std::string& error) {
  bool stopped = false;
  for (const auto& path : files) {
    if (stopped) break;
    const int format = file_format(path, error);
    if (format == 0) return false;
    ++stats.files;
    const bool ok = format == 2 ? scan_v2(path, start_ns, end_ns, visit, stats, stopped, error)
                                : scan_v1(path, visit, stats, stopped, error);
    if (!ok) return false;
  }
  return true;
}

}  // namespace inferscope::collector
