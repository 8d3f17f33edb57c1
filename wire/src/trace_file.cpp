// Trace file writer and recovering reader.
#include "inferscope/wire/trace_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "inferscope/wire/trace_block.hpp"

namespace inferscope::wire {

TraceFileWriter::~TraceFileWriter() {
  close();
}

bool TraceFileWriter::open(const std::string& path) {
  close();
  file_ = std::fopen(path.c_str(), "wb");
  if (!file_) {
    error_ = "cannot create trace file " + path + ": " + std::strerror(errno);
    return false;
  }
  uint8_t header[kTraceFileHeaderBytes] = {};
  std::memcpy(header, kTraceFileMagic, sizeof(kTraceFileMagic));
  header[8] = static_cast<uint8_t>(kProtocolVersion);
  header[9] = static_cast<uint8_t>(kProtocolVersion >> 8);
  if (std::fwrite(header, 1, sizeof(header), file_) != sizeof(header) || std::fflush(file_) != 0) {
    error_ = "cannot write trace file header to " + path + ": " + std::strerror(errno);
    close();
    return false;
  }
  bytes_written_ = sizeof(header);
  return true;
}

bool TraceFileWriter::write_frame(std::span<const uint8_t> frame) {
  if (!file_) {
    error_ = "trace file is not open";
    return false;
  }
  size_t n = std::fwrite(frame.data(), 1, frame.size(), file_);
  if (n != frame.size() || std::fflush(file_) != 0) {
    int saved = errno;
    // Leave only whole frames behind: cut what was partly written.
    std::clearerr(file_);
    if (ftruncate(fileno(file_), static_cast<off_t>(bytes_written_)) == 0)
      std::fseek(file_, static_cast<long>(bytes_written_), SEEK_SET);
    error_ = std::string("trace write failed: ") + std::strerror(saved);
    return false;
  }
  bytes_written_ += frame.size();
  return true;
}

bool TraceFileWriter::flush() {
  return file_ && std::fflush(file_) == 0;
}

void TraceFileWriter::close() {
  if (file_) std::fclose(file_);
  file_ = nullptr;
}

bool TraceFileReader::open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error_ = "cannot open trace file " + path + ": " + std::strerror(errno);
    return false;
  }
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (!open_bytes(std::move(bytes))) {
    error_ = path + ": " + error_;
    return false;
  }
  return true;
}

int trace_file_format(std::span<const uint8_t> b) {
  if (b.size() < sizeof(kTraceFileMagic)) return 0;
  if (std::memcmp(b.data(), kTraceFileMagic, sizeof(kTraceFileMagic)) == 0) return 1;
  if (std::memcmp(b.data(), kTraceFileMagicV2, sizeof(kTraceFileMagicV2)) == 0) return 2;
  return 0;
}

bool TraceFileReader::open_bytes(std::vector<uint8_t> bytes) {
  bytes_ = std::move(bytes);
  stats_ = {};
  block_.clear();
  block_offset_ = 0;
  const int format = bytes_.size() < kTraceFileHeaderBytes ? 0 : trace_file_format(bytes_);
  if (format == 0) {
    error_ = "not an inferscope trace file (bad header)";
    return false;
  }
  uint16_t version = static_cast<uint16_t>(bytes_[8] | bytes_[9] << 8);
  if (version != kProtocolVersion) {
    error_ = "trace file version " + std::to_string(version) + " is not supported";
    return false;
  }
  if (format == 2) {
    uint16_t block_format = static_cast<uint16_t>(bytes_[10] | bytes_[11] << 8);
    if (!supported_trace_format(block_format)) {
      error_ = "trace block format " + std::to_string(block_format) + " is not supported";
      return false;
    }
  }
  stats_.format = format;
  offset_ = kTraceFileHeaderBytes;
  return true;
}

bool TraceFileReader::next_frame(std::span<const uint8_t>& frame) {
  if (stats_.format == 0) return false;  // not opened
  if (stats_.format == 1) return next_frame_in(bytes_, offset_, frame);
  while (true) {
    if (block_offset_ < block_.size() && next_frame_in(block_, block_offset_, frame)) return true;
    if (!next_block()) return false;
  }
}

bool TraceFileReader::next_block() {
  block_.clear();
  block_offset_ = 0;
  std::string why;
  while (offset_ < bytes_.size()) {
    std::span<const uint8_t> rest(bytes_.data() + offset_, bytes_.size() - offset_);
    BlockHeader h;
    if (rest.size() < kBlockHeaderBytes) {
      // The writer died inside a header (or the file is damaged at its end).
      stats_.truncated_tail = true;
      stats_.bytes_skipped += rest.size();
      offset_ = bytes_.size();
      return false;
    }
    if (decode_block_header(rest, h, why)) {
      const size_t total = kBlockHeaderBytes + h.stored_bytes;
      if (total > rest.size()) {
        stats_.truncated_tail = true;  // a torn last block
        stats_.bytes_skipped += rest.size();
        offset_ = bytes_.size();
        return false;
      }
      offset_ += total;
      if (h.summary_level() != 0) continue;  // a level-of-detail copy of the block before it
      if (unpack_block(h, rest.subspan(kBlockHeaderBytes, h.stored_bytes), block_, why)) {
        ++stats_.blocks;
        return true;
      }
      // A good header with a bad payload: the size is trustworthy, skip just this block.
      ++stats_.corrupt_blocks;
      stats_.bytes_skipped += total;
      block_.clear();
      continue;
    }
    // A bad header: resynchronise on the next block magic.
    ++stats_.corrupt_blocks;
    size_t next = offset_ + 1;
    while (next + 4 <= bytes_.size() && !(bytes_[next] == 'I' && bytes_[next + 1] == 'S' &&
                                          bytes_[next + 2] == 'B' && bytes_[next + 3] == '2'))
      ++next;
    if (next + 4 > bytes_.size()) next = bytes_.size();
    stats_.bytes_skipped += next - offset_;
    offset_ = next;
  }
  return false;
}

bool TraceFileReader::next_frame_in(std::span<const uint8_t> region, size_t& offset,
                                    std::span<const uint8_t>& frame) {
  while (offset < region.size()) {
    std::span<const uint8_t> rest(region.data() + offset, region.size() - offset);
    size_t size = 0;
    DecodeStatus status = decoder_.frame_size(rest, size);
    if (status.ok()) {
      // Check the CRC before handing it out: a corrupt frame is skipped whole.
      if (decoder_.open(rest.first(size)).ok()) {
        frame = rest.first(size);
        offset += size;
        ++stats_.frames;
        return true;
      }
    } else if (status.error == DecodeError::kNeedMoreData) {
      // A frame that starts but never ends: the writer died mid-frame.
      if (rest.size() >= 4 && rest[0] == 'I' && rest[1] == 'S' && rest[2] == 'F' &&
          rest[3] == '1') {
        stats_.truncated_tail = true;
        stats_.bytes_skipped += rest.size();
        offset = region.size();
        return false;
      }
    }
    // Resynchronise: find the next frame magic after this position.
    ++stats_.corrupt_frames;
    size_t next = offset + 1;
    while (next + 4 <= region.size() && !(region[next] == 'I' && region[next + 1] == 'S' &&
                                          region[next + 2] == 'F' && region[next + 3] == '1'))
      ++next;
    if (next + 4 > region.size()) next = region.size();
    stats_.bytes_skipped += next - offset;
    offset = next;
  }
  return false;
}

std::string TraceFileReader::damage_report() const {
  if (stats_.corrupt_frames == 0 && stats_.corrupt_blocks == 0 && !stats_.truncated_tail) return {};
  std::string report = "trace damaged: recovered " + std::to_string(stats_.frames) + " frames";
  if (stats_.format == 2) report += " in " + std::to_string(stats_.blocks) + " blocks";
  if (stats_.corrupt_blocks)
    report += ", skipped " + std::to_string(stats_.corrupt_blocks) + " corrupt block(s)";
  if (stats_.corrupt_frames)
    report += ", skipped " + std::to_string(stats_.corrupt_frames) + " corrupt region(s)";
  if (stats_.truncated_tail)
    report += stats_.format == 2 ? ", file ends inside a block (writer stopped mid-write)"
                                 : ", file ends inside a frame (writer stopped mid-write)";
  report += " (" + std::to_string(stats_.bytes_skipped) + " bytes unreadable)";
  return report;
}

}  // namespace inferscope::wire
