// Trace file format 2: block headers, compression, the header walk (time index).
#include "inferscope/wire/trace_block.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstring>

#include "column_zstd.hpp"
#include "crc32.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::wire {

namespace {

void put(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
uint32_t crc_of(std::span<const uint8_t> bytes) {
  return detail::crc32_update(0, bytes.data(), bytes.size());
}

// Full pread: false on error or end of file.
bool read_at(int fd, uint8_t* out, size_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    out += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

}  // namespace

void summarize_other_record(const Record& record, FrameSummary& s) {
  ++s.records;
  // Every record kind with a time has one of these fields; new kinds that
  // follow the naming are indexed without a change here.
  std::visit(
      [&s](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, Hello> || std::is_same_v<T, StringDef>)
          s.definitions = true;
        if constexpr (requires { r.timestamp_ns; }) s.widen(r.timestamp_ns);
        if constexpr (requires { r.start_ns; }) s.widen(r.start_ns);
        if constexpr (requires { r.end_ns; })
          if (r.end_ns != 0) s.widen(r.end_ns);  // 0: an alert episode still open
        if constexpr (requires { r.arrival_ns; }) s.widen(r.arrival_ns);
        if constexpr (requires { r.finish_ns; })
          if (r.finish_ns != 0) s.widen(r.finish_ns);
      },
      record);
}

FrameSummary summarize_frame(std::span<const uint8_t> frame) {
  FrameSummary s;
  FrameDecoder dec(DecoderOptions{UINT32_MAX});
  if (!dec.open(frame).ok()) return s;
  Record r;
  while (dec.next(r)) summarize_record(r, s);
  return s;
}

void encode_block_header(const BlockHeader& h, uint8_t out[kBlockHeaderBytes]) {
  put(out + 0, kBlockMagic, 4);
  put(out + 4, kTraceBlockFormatVersion, 2);
  put(out + 6, h.flags, 2);
  put(out + 8, h.raw_bytes, 4);
  put(out + 12, h.stored_bytes, 4);
  put(out + 16, h.frames, 4);
  put(out + 20, h.records, 4);
  put(out + 24, static_cast<uint64_t>(h.min_ns), 8);
  put(out + 32, static_cast<uint64_t>(h.max_ns), 8);
  put(out + 40, h.payload_crc, 4);
  put(out + 44, crc_of({out, 44}), 4);
}

bool decode_block_header(std::span<const uint8_t> b, BlockHeader& h, std::string& error) {
  if (b.size() < kBlockHeaderBytes) {
    error = "block header cut short";
    return false;
  }
  if (get(b.data(), 4) != kBlockMagic) {
    error = "no block magic";
    return false;
  }
  if (static_cast<uint32_t>(get(b.data() + 44, 4)) != crc_of(b.first(44))) {
    error = "block header checksum mismatch";
    return false;
  }
  const auto version = static_cast<uint16_t>(get(b.data() + 4, 2));
  if (version != kTraceBlockFormatVersion) {
    error = "block format version " + std::to_string(version) + " is not supported";
    return false;
  }
  h.flags = static_cast<uint16_t>(get(b.data() + 6, 2));
  h.raw_bytes = static_cast<uint32_t>(get(b.data() + 8, 4));
  h.stored_bytes = static_cast<uint32_t>(get(b.data() + 12, 4));
  h.frames = static_cast<uint32_t>(get(b.data() + 16, 4));
  h.records = static_cast<uint32_t>(get(b.data() + 20, 4));
  h.min_ns = static_cast<int64_t>(get(b.data() + 24, 8));
  h.max_ns = static_cast<int64_t>(get(b.data() + 32, 8));
  h.payload_crc = static_cast<uint32_t>(get(b.data() + 40, 4));
  if ((h.flags &
       ~(kBlockFlagZstd | kBlockFlagDefinitions | kBlockSummaryLevelMask | kBlockFlagColumns |
         kBlockFlagCorrelationDeltas | kBlockFlagImpliedSpanLengths)) != 0 ||
      ((h.flags & kBlockFlagColumns) && !(h.flags & kBlockFlagZstd)) ||
      ((h.flags & (kBlockFlagCorrelationDeltas | kBlockFlagImpliedSpanLengths)) &&
       !(h.flags & kBlockFlagColumns))) {
    error = "unknown block flags " + std::to_string(h.flags);
    return false;
  }
  if (h.raw_bytes > kMaxBlockRawBytes ||
      h.stored_bytes >
          ((h.flags & kBlockFlagZstd) ? ZSTD_compressBound(h.raw_bytes) : h.raw_bytes) ||
      (!(h.flags & kBlockFlagZstd) && h.stored_bytes != h.raw_bytes)) {
    error = "block sizes out of range (raw " + std::to_string(h.raw_bytes) + ", stored " +
            std::to_string(h.stored_bytes) + ")";
    return false;
  }
  return true;
}

void encode_v2_file_header(uint8_t out[16], uint16_t format) {
  std::memset(out, 0, 16);
  std::memcpy(out, kTraceFileMagicV2, sizeof(kTraceFileMagicV2));
  put(out + 8, kProtocolVersion, 2);
  put(out + 10, format, 2);
}

void RawBlock::add(std::span<const uint8_t> frame, const FrameSummary& s) {
  bytes.insert(bytes.end(), frame.begin(), frame.end());
  ++frames;
  summary.records += s.records;
  summary.definitions = summary.definitions || s.definitions;
  if (s.has_time()) {
    summary.widen(s.min_ns);
    summary.widen(s.max_ns);
  }
}

void RawBlock::clear() {
  bytes.clear();
  columns.clear();
  has_columns = false;
  frames = 0;
  summary = {};
}

namespace {
constexpr size_t kUnsplitRatio = 6;  // see seal()
constexpr int kUnsplitBlocks = 64;   // this one and the next 63
}  // namespace

BlockCompressor::BlockCompressor(int zstd_level, bool columns)
    : level_(zstd_level),
      columns_(columns),
      cctx_(ZSTD_createCCtx()),
      codings_(std::make_unique<detail::ColumnCodings>()) {}
BlockCompressor::~BlockCompressor() {
  ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(cctx_));
}

void BlockCompressor::seal(const RawBlock& block, std::vector<uint8_t>& out, int summary_level) {
  BlockHeader h;
  h.raw_bytes = static_cast<uint32_t>(block.bytes.size());
  h.frames = block.frames;
  h.records = block.summary.records;
  h.min_ns = block.summary.min_ns;
  h.max_ns = block.summary.max_ns;
  if (block.summary.definitions) h.flags |= kBlockFlagDefinitions;
  if (summary_level > 0 && summary_level <= kMaxSummaryLevel)
    h.flags |= static_cast<uint16_t>(summary_level << kBlockSummaryLevelShift);
  // Format 4: compress the column form when the bytes are whole frames (they
  // always are in the store; anything else is compressed as it is).
  // Splitting costs about a decode (~20 ns a span). It pays where zstd works
  // hard, on varied spans (zstd twice as fast on the columns, 15% smaller); on
  // input so repetitive that zstd finds whole frames again (ratio >= 6) zstd is
  // cheap already and the split is most of the cost. So a data block that
  // compresses that well sends the next 63 unsplit, then the split is tried
  // again; summary blocks follow their data block's choice.
  if (summary_level == 0 && unsplit_left_ > 0) --unsplit_left_;
  // A block may come split already (RawBlock::columns: formats 5 and 6).
  bool deltas = true, lengths = true;
  const bool presplit = columns_ && unsplit_left_ == 0 && block.has_columns;
  const bool columns = presplit || (columns_ && unsplit_left_ == 0 &&
                                    split_block_columns(block.bytes, split_, &deltas, &lengths));
  const std::span<const uint8_t> input = presplit  ? std::span<const uint8_t>(block.columns)
                                         : columns ? std::span<const uint8_t>(split_)
                                                   : std::span<const uint8_t>(block.bytes);
  size_t n = 0;
  bool failed = false;  // a zstd error: stored as it is, below
  if (columns) {
    // One zstd frame per stream, each coded as pays (column_zstd.hpp); the
    // codings are chosen again on every 64th data block.
    const bool probe = summary_level == 0 && codings_->blocks_to_probe-- <= 0;
    if (probe) codings_->blocks_to_probe = detail::kColumnProbeEvery - 1;
    out.resize(kBlockHeaderBytes + detail::column_zstd_bound(input.size()));
    n = detail::compress_columns(cctx_, level_, input, probe, *codings_,
                                 out.data() + kBlockHeaderBytes, out.size() - kBlockHeaderBytes);
    failed = n == 0;
  } else {
    out.resize(kBlockHeaderBytes + ZSTD_compressBound(input.size()));
    n = ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(cctx_), out.data() + kBlockHeaderBytes,
                          out.size() - kBlockHeaderBytes, input.data(), input.size(), level_);
    failed = ZSTD_isError(n);
  }
  if (failed || n >= block.bytes.size()) {
    // Incompressible (or a zstd failure): store the frames as they are.
    std::memcpy(out.data() + kBlockHeaderBytes, block.bytes.data(), block.bytes.size());
    n = block.bytes.size();
  } else {
    h.flags |= kBlockFlagZstd;
    if (columns) h.flags |= kBlockFlagColumns;
    if (columns && deltas) h.flags |= kBlockFlagCorrelationDeltas;
    if (columns && lengths) h.flags |= kBlockFlagImpliedSpanLengths;
    if (columns && summary_level == 0 && n * kUnsplitRatio <= block.bytes.size())
      unsplit_left_ = kUnsplitBlocks;
  }
  out.resize(kBlockHeaderBytes + n);
  h.stored_bytes = static_cast<uint32_t>(n);
  h.payload_crc = crc_of({out.data() + kBlockHeaderBytes, n});
  encode_block_header(h, out.data());
}

bool unpack_block(const BlockHeader& h, std::span<const uint8_t> payload, std::vector<uint8_t>& raw,
                  std::string& error) {
  if (payload.size() != h.stored_bytes) {
    error = "block payload cut short";
    return false;
  }
  if (crc_of(payload) != h.payload_crc) {
    error = "block payload checksum mismatch";
    return false;
  }
  raw.resize(h.raw_bytes);
  if (!(h.flags & kBlockFlagZstd)) {
    if (!payload.empty()) std::memcpy(raw.data(), payload.data(), payload.size());
    return true;
  }
  if (h.flags & kBlockFlagColumns) {
    // The column form is the frames plus the stream table (format 4), or at
    // most that (formats 5 and 6: coded correlation ids, implied span
    // lengths); joined back into raw.
    const bool deltas = h.flags & kBlockFlagCorrelationDeltas;
    const bool lengths = h.flags & kBlockFlagImpliedSpanLengths;
    thread_local std::vector<uint8_t> split;
    split.resize(size_t{h.raw_bytes} + kBlockColumnTableBytes);
    const size_t n = ZSTD_decompress(split.data(), split.size(), payload.data(), payload.size());
    if (ZSTD_isError(n) || (deltas || lengths ? n > split.size() : n != split.size())) {
      error = std::string("block decompression failed: ") +
              (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size differs from the header");
      return false;
    }
    return join_block_columns({split.data(), n}, raw, error, deltas, h.raw_bytes, lengths);
  }
  const size_t n = ZSTD_decompress(raw.data(), raw.size(), payload.data(), payload.size());
  if (ZSTD_isError(n) || n != h.raw_bytes) {
    error = std::string("block decompression failed: ") +
            (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size differs from the header");
    return false;
  }
  return true;
}

bool read_block(int fd, const BlockLocation& where, std::vector<uint8_t>& raw, std::string& error) {
  std::vector<uint8_t> payload(where.header.stored_bytes);
  if (!read_at(fd, payload.data(), payload.size(), where.offset + kBlockHeaderBytes)) {
    error = "cannot read block at offset " + std::to_string(where.offset);
    return false;
  }
  return unpack_block(where.header, payload, raw, error);
}

bool scan_blocks(const std::string& path, BlockScan& scan, std::string& error) {
  scan = {};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  const off_t size = ::lseek(fd, 0, SEEK_END);
  uint8_t file_header[16];
  if (size < 16 || !read_at(fd, file_header, 16, 0) ||
      std::memcmp(file_header, kTraceFileMagicV2, sizeof(kTraceFileMagicV2)) != 0) {
    ::close(fd);
    error = path + ": not a v2 inferscope trace file (bad header)";
    return false;
  }
  const auto format = static_cast<uint16_t>(file_header[10] | file_header[11] << 8);
  if (!supported_trace_format(format)) {
    // A newer writer's file: its blocks may use flags this code does not know,
    // which the walk would take for damage (and a store would cut off).
    ::close(fd);
    error = path + ": trace block format " + std::to_string(format) + " is not supported";
    return false;
  }
  scan.file_bytes = static_cast<uint64_t>(size);
  scan.valid_bytes = 16;
  uint64_t offset = 16;
  uint8_t hb[kBlockHeaderBytes];
  std::string why;
  // Resynchronisation after a bad header reads the file in windows looking for the magic.
  std::vector<uint8_t> window;
  while (offset < scan.file_bytes) {
    BlockLocation b;
    b.offset = offset;
    const bool whole_header = scan.file_bytes - offset >= kBlockHeaderBytes;
    if (whole_header && read_at(fd, hb, kBlockHeaderBytes, offset) &&
        decode_block_header({hb, kBlockHeaderBytes}, b.header, why)) {
      if (b.end() > scan.file_bytes) {
        scan.torn_tail = true;
        scan.tail_problem = "last block is cut short (" + std::to_string(scan.file_bytes - offset) +
                            " of " + std::to_string(b.end() - offset) + " bytes)";
        break;
      }
      scan.blocks.push_back(b);
      scan.valid_bytes = b.end();
      offset = b.end();
      continue;
    }
    if (!whole_header) {
      scan.torn_tail = true;
      scan.tail_problem = "file ends inside a block header";
      break;
    }
    // A bad header: look for the next valid one; if there is none, the rest is a torn tail.
    uint64_t next = offset + 1;
    bool found = false;
    while (next + kBlockHeaderBytes <= scan.file_bytes && !found) {
      window.resize(static_cast<size_t>(std::min<uint64_t>(1u << 20, scan.file_bytes - next)));
      if (!read_at(fd, window.data(), window.size(), next)) break;
      for (size_t i = 0; i + 4 <= window.size(); ++i) {
        if (get(window.data() + i, 4) != kBlockMagic) continue;
        BlockHeader probe;
        std::string ignored;
        if (next + i + kBlockHeaderBytes <= scan.file_bytes &&
            read_at(fd, hb, kBlockHeaderBytes, next + i) &&
            decode_block_header({hb, kBlockHeaderBytes}, probe, ignored)) {
          next += i;
          found = true;
          break;
        }
      }
      if (!found) next += window.size() > 3 ? window.size() - 3 : window.size();
    }
    if (!found) {
      scan.torn_tail = true;
      scan.tail_problem = "bad block header at offset " + std::to_string(offset) + " (" + why + ")";
      break;
    }
    ++scan.damaged_regions;
    offset = next;
  }
  // A crash can leave a block whose size is right but whose bytes never reached
  // the disk (page cache lost): check the last block's payload.
  if (!scan.blocks.empty()) {
    std::vector<uint8_t> raw;
    std::string bad;
    const BlockLocation last = scan.blocks.back();
    if (!read_block(fd, last, raw, bad)) {
      scan.blocks.pop_back();
      scan.valid_bytes = scan.blocks.empty() ? 16 : scan.blocks.back().end();
      if (!scan.torn_tail) scan.tail_problem = "last block: " + bad;
      scan.torn_tail = true;
    }
  }
  ::close(fd);
  return true;
}

}  // namespace inferscope::wire
