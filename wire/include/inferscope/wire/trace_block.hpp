// inferscope trace files, format 2: zstd-compressed blocks of wire frames with a time index.
//
// A v2 file is a 16-byte file header ("ISTRACE2", u16 protocol version, u16
// format version 2, 4 reserved bytes) followed by blocks. A block is a 48-byte
// header and a payload; the payload is whole wire frames, concatenated, then
// compressed with zstd (or stored raw when flags say so):
//
//   off size field
//     0   4  magic "ISB2" (0x32425349 little-endian)
//     4   2  format version (2)
//     6   2  flags: bit 0 zstd, bit 1 holds hello / string definitions,
//                bits 2-5 summary level k (0: a data block; see below)
//     8   4  raw bytes (the frames, after decompression; <= kMaxBlockRawBytes)
//    12   4  stored bytes (the payload as written)
//    16   4  frames in the block
//    20   4  records in those frames
//    24   8  min record timestamp (ns; INT64_MAX when no record has a time)
//    32   8  max record timestamp (ns; INT64_MIN when none)
//    40   4  CRC-32 of the stored payload
//    44   4  CRC-32 of header bytes [0, 44)
//
// The header has its own CRC, so a reader can walk a file block by block by
// seeking over stored sizes (no decompression) and trust the [min, max] times
// it finds: that walk is the time index. A writer appends a block with one
// write and cuts it off again if the write fails, so a crash leaves at most one
// torn block at the end of a file, which the walk detects (size past the end of
// the file, or payload CRC mismatch).
//
// Level-of-detail summaries (file format version 3, same block layout): a data
// block may be followed by summary blocks, one per level k (1..15) in rising
// order, written with it in the same write(). A level-k summary holds the data
// block's records with its spans merged per lane at a resolution of
// summary_level_ns(k) (runs of shorter spans become one span named
// kMergedSpansStringId with args[0] = {kMergedSpansStringId, count}, as a range
// query reply does); every other record is copied as it is. Its header carries
// the data block's times. Readers that want every stored record skip summary
// blocks; a range query may read one instead of its data block (store docs).
// Format 2 files have no summaries and read as before; a format 2 reader
// refuses format 3 files instead of misreading them.
//
// Column-split payloads (file format version 4; format 3 otherwise): a block
// with flag bit 6 (always with bit 0) holds, compressed, not the frames but the
// same bytes regrouped by field (split_block_columns below): frame headers and
// everything that is not a span's fields in one stream, record tags and lengths
// in another, each span field's varint bytes in its own. A pure permutation of
// the bytes, so exact by construction; zstd finds the regrouped bytes about
// twice as fast and 15% smaller (docs/collector.md, "Ingest with the trace
// store"). Readers join the streams back after decompressing; a format 3
// reader refuses format 4 files.
//
// Correlation-id deltas (file format version 5): a column-split block may
// also have flag bit 7: its correlation-id stream holds each id coded as a
// delta from the previous one (block_columns.cpp says how; ids that would not
// come back byte for byte are kept as they are). Still exact; the column form
// is then never larger than the frames. A format 4 reader refuses format 5
// files.
//
// Implied span lengths (file format version 6): a column-split block may also
// have flag bit 8: spans that are their fields alone, with a one-byte length,
// keep only a marker tag in the tag stream, and the join writes the length
// back (block_columns.cpp). Exact as before; a format 5 reader refuses format
// 6 files; this code reads 2 to 6.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

inline constexpr char kTraceFileMagicV2[8] = {'I', 'S', 'T', 'R', 'A', 'C', 'E', '2'};
inline constexpr uint16_t kTraceBlockFormatVersion = 2;
inline constexpr uint32_t kBlockMagic = 0x32425349;  // "ISB2"
inline constexpr size_t kBlockHeaderBytes = 48;
inline constexpr uint32_t kMaxBlockRawBytes = 64u << 20;
inline constexpr uint16_t kBlockFlagZstd = 1u << 0;
inline constexpr uint16_t kBlockFlagDefinitions = 1u << 1;
inline constexpr int kBlockSummaryLevelShift = 2;
inline constexpr uint16_t kBlockSummaryLevelMask = 0xFu << kBlockSummaryLevelShift;
inline constexpr uint16_t kBlockFlagColumns = 1u << 6;  // the payload is column-split (format 4)
// With kBlockFlagColumns: the correlation-id stream is delta-coded (format 5).
inline constexpr uint16_t kBlockFlagCorrelationDeltas = 1u << 7;
// With kBlockFlagColumns: most span lengths are left to the join (format 6).
inline constexpr uint16_t kBlockFlagImpliedSpanLengths = 1u << 8;
inline constexpr int kMaxSummaryLevel = 15;
// File header format versions: 2 data blocks only, 3 may hold summary blocks,
// 4 may also hold column-split blocks, 5 correlation-id deltas in them too,
// 6 implied span lengths in them too.
inline constexpr uint16_t kTraceFileFormatSummaries = 3;
inline constexpr uint16_t kTraceFileFormatColumns = 4;
inline constexpr uint16_t kTraceFileFormatCorrelationDeltas = 5;
inline constexpr uint16_t kTraceFileFormatImpliedSpanLengths = 6;

// The merge resolution of summary level k: 1024 ns * 4^k (4 us .. 1100 s).
constexpr int64_t summary_level_ns(int level) {
  return int64_t{1024} << (2 * level);
}

// What the store needs to know about one frame to index it.
struct FrameSummary {
  int64_t min_ns = std::numeric_limits<int64_t>::max();
  int64_t max_ns = std::numeric_limits<int64_t>::min();
  uint32_t records = 0;
  bool definitions = false;  // holds a hello or a string definition

  bool has_time() const { return min_ns <= max_ns; }
  void widen(int64_t t) {
    if (t < min_ns) min_ns = t;
    if (t > max_ns) max_ns = t;
  }
};

// summarize_record for anything but a span.
void summarize_other_record(const Record& record, FrameSummary& summary);

// Widens the summary by one record (its timestamps; hellos and strings set
// definitions). Inline for spans, most records, which the pipeline summarizes
// one by one as it decodes them: no call for them.
inline void summarize_record(const Record& record, FrameSummary& s) {
  if (const auto* span = std::get_if<Span>(&record)) [[likely]] {
    ++s.records;
    s.widen(span->start_ns);
    if (span->end_ns != 0) s.widen(span->end_ns);
    return;
  }
  summarize_other_record(record, s);
}
// Decodes a whole frame to summarize it (the slow path for tools and tests:
// the collector's pipeline summarizes records while it decodes them anyway).
FrameSummary summarize_frame(std::span<const uint8_t> frame);

struct BlockHeader {
  uint16_t flags = 0;
  uint32_t raw_bytes = 0;
  uint32_t stored_bytes = 0;
  uint32_t frames = 0;
  uint32_t records = 0;
  int64_t min_ns = std::numeric_limits<int64_t>::max();
  int64_t max_ns = std::numeric_limits<int64_t>::min();
  uint32_t payload_crc = 0;

  bool overlaps(int64_t start_ns, int64_t end_ns) const {
    return min_ns <= end_ns && max_ns >= start_ns;
  }
  // Every record time of the block lies in [start_ns, end_ns].
  bool within(int64_t start_ns, int64_t end_ns) const {
    return min_ns >= start_ns && max_ns <= end_ns;
  }
  // 0 for a data block, else the summary level (1..15).
  int summary_level() const { return (flags & kBlockSummaryLevelMask) >> kBlockSummaryLevelShift; }
};

void encode_block_header(const BlockHeader& header, uint8_t out[kBlockHeaderBytes]);
// False with error set when the bytes are not a valid block header (magic,
// version, header CRC, sizes within limits).
bool decode_block_header(std::span<const uint8_t> bytes, BlockHeader& header, std::string& error);

// The 16-byte header of a v2 file; format 2 (data blocks only) or kTraceFileFormatSummaries.
void encode_v2_file_header(uint8_t out[16], uint16_t format = kTraceBlockFormatVersion);
// Whether a reader of this code reads a v2 file whose header says this format version.
constexpr bool supported_trace_format(uint16_t format) {
  return format >= kTraceBlockFormatVersion && format <= kTraceFileFormatImpliedSpanLengths;
}
// Whether a file of this format may hold summary blocks.
constexpr bool trace_format_has_summaries(uint16_t format) {
  return format >= kTraceFileFormatSummaries && format <= kTraceFileFormatImpliedSpanLengths;
}

// The column form of a block's frames (format 4): a table of kBlockColumns
// u32 stream sizes, then the streams. False when the bytes are not whole,
// well-formed frames: the block is then compressed as it is.
// correlation_deltas: when it points to true, the correlation ids are coded
// as deltas (format 5) unless that would make the form larger than the frames;
// on return it says whether they were. implied_span_lengths likewise for
// format 6 (not taken where a record has the marker's tag).
inline constexpr size_t kBlockColumns = 12;
inline constexpr size_t kBlockColumnTableBytes = 4 * kBlockColumns;
bool split_block_columns(std::span<const uint8_t> frames, std::vector<uint8_t>& out,
                         bool* correlation_deltas = nullptr, bool* implied_span_lengths = nullptr);
// The inverse; false with error when the column form is inconsistent (it never
// reads outside `columns`, nor writes more than frame_bytes). frames is
// replaced. A form with correlation deltas or implied span lengths must say
// how many bytes its frames are (the block header's raw size).
bool join_block_columns(std::span<const uint8_t> columns, std::vector<uint8_t>& frames,
                        std::string& error, bool correlation_deltas = false, size_t frame_bytes = 0,
                        bool implied_span_lengths = false);

// Frames gathered for one block, before compression. Movable, so a store can
// hand a full block to another thread to compress and write.
struct RawBlock {
  std::vector<uint8_t> bytes;  // whole frames
  uint32_t frames = 0;
  FrameSummary summary;
  // The frames' column form (split_block_columns with correlation deltas and
  // implied span lengths), when its builder made it as they arrived
  // (column_builder.hpp): BlockCompressor then does not split them again.
  std::vector<uint8_t> columns;
  bool has_columns = false;

  void add(std::span<const uint8_t> frame, const FrameSummary& s);
  bool empty() const { return frames == 0; }
  void clear();
};

namespace detail {
struct ColumnCodings;  // how each column stream is compressed (src/column_zstd.hpp)
}

// Compresses raw blocks into header + payload. Keeps one zstd context (not thread-safe).
class BlockCompressor {
 public:
  // columns: split each block's bytes by field before compressing, with the
  // correlation ids delta-coded and most span lengths implied (format 6 files only).
  explicit BlockCompressor(int zstd_level = 1, bool columns = false);
  ~BlockCompressor();
  BlockCompressor(const BlockCompressor&) = delete;
  BlockCompressor& operator=(const BlockCompressor&) = delete;

  // Replaces out with the sealed block (header then payload). summary_level > 0
  // seals a summary block (its times are the block's own: pass the data block's).
  void seal(const RawBlock& block, std::vector<uint8_t>& out, int summary_level = 0);
  // Whether the next data block will be column-split: not while input so
  // repetitive that blocks go unsplit lasts (seal() says why). A block's
  // column form built in advance (RawBlock::columns) is wasted work otherwise.
  bool splits_next_block() const { return columns_ && unsplit_left_ <= 1; }

 private:
  int level_;
  bool columns_;
  int unsplit_left_ = 0;        // data blocks still to seal unsplit (see seal())
  std::vector<uint8_t> split_;  // the column form of the block being sealed
  void* cctx_ = nullptr;        // ZSTD_CCtx, kept out of the header
  std::unique_ptr<detail::ColumnCodings> codings_;
};

// One block found by walking a file.
struct BlockLocation {
  uint64_t offset = 0;  // of the block header
  BlockHeader header;
  uint64_t end() const { return offset + kBlockHeaderBytes + header.stored_bytes; }
};

struct BlockScan {
  std::vector<BlockLocation> blocks;  // valid headers, in file order
  uint64_t file_bytes = 0;
  uint64_t valid_bytes = 0;      // end of the last good block (the file header when none)
  uint64_t damaged_regions = 0;  // bad headers skipped in the middle
  bool torn_tail = false;        // bytes after valid_bytes that are no whole block
  std::string tail_problem;      // why, for the log
};

// Walks a v2 file's block headers (seeking over payloads; only the last
// block's payload is read, to check its CRC). False with error when the file
// cannot be read or is not a v2 trace file.
bool scan_blocks(const std::string& path, BlockScan& scan, std::string& error);

// Reads, checks and decompresses one block of an open file into raw (the frames).
bool read_block(int fd, const BlockLocation& where, std::vector<uint8_t>& raw, std::string& error);
// Checks and decompresses a block whose stored payload is in memory.
bool unpack_block(const BlockHeader& header, std::span<const uint8_t> payload,
                  std::vector<uint8_t>& raw, std::string& error);

}  // namespace inferscope::wire
