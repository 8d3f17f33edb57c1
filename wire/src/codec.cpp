// Frame encoder and decoder. Byte layout: docs/wire-format.md.
#include "inferscope/wire/codec.hpp"

#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <string>

#include "byte_io.hpp"
#include "crc32.hpp"
#include "inferscope/wire/column_builder.hpp"
#include "record_codec.hpp"

namespace inferscope::wire {
namespace {

using detail::ByteReader;
using detail::ByteWriter;

uint32_t crc32_of(const uint8_t* header24, std::span<const uint8_t> payload) {
  const uint32_t crc = detail::crc32_update(0, header24, 24);
  return detail::crc32_update(crc, payload.data(), payload.size());
}

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint16_t get_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | p[1] << 8);
}

DecodeStatus fail(DecodeError error, std::string message) {
  return DecodeStatus{error, std::move(message)};
}

}  // namespace

const char* to_string(DecodeError error) {
  switch (error) {
    case DecodeError::kOk:
      return "ok";
    case DecodeError::kNeedMoreData:
      return "need more data";
    case DecodeError::kBadMagic:
      return "bad magic";
    case DecodeError::kUnsupportedVersion:
      return "unsupported version";
    case DecodeError::kFrameTooLarge:
      return "frame too large";
    case DecodeError::kChecksumMismatch:
      return "checksum mismatch";
    case DecodeError::kDecompressFailed:
      return "decompression failed";
    case DecodeError::kTruncatedRecord:
      return "truncated record";
    case DecodeError::kMalformedRecord:
      return "malformed record";
    case DecodeError::kRecordCountMismatch:
      return "record count mismatch";
  }
  return "unknown error";
}

// [SECTION] Encoder ------------------------------------------------------------

FrameEncoder::FrameEncoder(EncoderOptions options) : options_(options) {
  payload_.reserve(64 * 1024);
}

void FrameEncoder::add(const Record& record) {
  std::visit([this](const auto& r) { add_one(payload_, previous_ns_, r); }, record);
  ++record_count_;
}
void FrameEncoder::add(const Span& span) {
  add_one(payload_, previous_ns_, span);
  ++record_count_;
}
void FrameEncoder::add(const ExpertLoad& load) {
  add_one(payload_, previous_ns_, load);
  ++record_count_;
}
void FrameEncoder::add(const StringDef& def) {
  add_one(payload_, previous_ns_, def);
  ++record_count_;
}

void FrameEncoder::finish(std::vector<uint8_t>& out) {
  uint16_t flags = 0;
  std::span<const uint8_t> stored(payload_);
  if (options_.compress && payload_.size() >= options_.compress_min_bytes) {
    compressed_.resize(ZSTD_compressBound(payload_.size()));
    size_t n =
        ZSTD_compress(compressed_.data(), compressed_.size(), payload_.data(), payload_.size(), 1);
    if (!ZSTD_isError(n) && n < payload_.size()) {
      compressed_.resize(n);
      stored = compressed_;
      flags |= kFlagZstd;
    }
  }
  size_t base = out.size();
  out.resize(base + kFrameHeaderBytes + stored.size());
  uint8_t* h = out.data() + base;
  put_u32(h + 0, kFrameMagic);
  put_u16(h + 4, kProtocolVersion);
  put_u16(h + 6, flags);
  put_u32(h + 8, static_cast<uint32_t>(stored.size()));
  put_u32(h + 12, static_cast<uint32_t>(payload_.size()));
  put_u32(h + 16, static_cast<uint32_t>(record_count_));
  put_u32(h + 20, options_.source_id);
  std::memcpy(h + kFrameHeaderBytes, stored.data(), stored.size());
  put_u32(h + 24, crc32_of(h, stored));

  payload_.clear();
  record_count_ = 0;
  previous_ns_ = 0;
}

// [SECTION] Decoder ------------------------------------------------------------

FrameDecoder::FrameDecoder(DecoderOptions options) : options_(options) {}

DecodeStatus FrameDecoder::frame_size(std::span<const uint8_t> stream, size_t& frame_bytes) const {
  frame_bytes = 0;
  if (stream.size() < kFrameHeaderBytes) {
    // A wrong magic is reported as soon as it can be seen.
    if (stream.size() >= 4 && get_u32(stream.data()) != kFrameMagic)
      return fail(DecodeError::kBadMagic, "stream does not start with a frame (bad magic)");
    return fail(DecodeError::kNeedMoreData, "");
  }
  const uint8_t* h = stream.data();
  if (get_u32(h) != kFrameMagic)
    return fail(DecodeError::kBadMagic, "stream does not start with a frame (bad magic)");
  uint16_t version = get_u16(h + 4);
  if (version != kProtocolVersion)
    return fail(DecodeError::kUnsupportedVersion, "frame version " + std::to_string(version) +
                                                      ", this build speaks " +
                                                      std::to_string(kProtocolVersion));
  uint64_t total = uint64_t(kFrameHeaderBytes) + get_u32(h + 8);
  if (total > options_.max_frame_bytes || get_u32(h + 12) > options_.max_frame_bytes)
    return fail(DecodeError::kFrameTooLarge, "frame of " + std::to_string(total) +
                                                 " bytes exceeds the limit of " +
                                                 std::to_string(options_.max_frame_bytes));
  frame_bytes = static_cast<size_t>(total);
  if (stream.size() < total) return fail(DecodeError::kNeedMoreData, "");
  return DecodeStatus::Ok();
}

DecodeStatus FrameDecoder::open(std::span<const uint8_t> frame) {
  payload_ = {};
  frame_ = frame;
  columns_ = nullptr;
  offset_ = 0;
  records_read_ = 0;
  previous_ns_ = 0;
  size_t size = 0;
  status_ = frame_size(frame, size);
  if (status_.error == DecodeError::kNeedMoreData)
    status_ = fail(DecodeError::kTruncatedRecord,
                   "frame truncated: " + std::to_string(frame.size()) + " bytes present");
  if (!status_.ok()) return status_;
  if (size != frame.size()) {
    status_ = fail(DecodeError::kMalformedRecord,
                   "frame has " + std::to_string(frame.size() - size) + " trailing bytes");
    return status_;
  }
  const uint8_t* h = frame.data();
  header_.magic = get_u32(h);
  header_.version = get_u16(h + 4);
  header_.flags = get_u16(h + 6);
  header_.payload_bytes = get_u32(h + 8);
  header_.raw_bytes = get_u32(h + 12);
  header_.record_count = get_u32(h + 16);
  header_.source_id = get_u32(h + 20);
  header_.checksum = get_u32(h + 24);
  std::span<const uint8_t> stored = frame.subspan(kFrameHeaderBytes);
  if (crc32_of(h, stored) != header_.checksum) {
    status_ = fail(DecodeError::kChecksumMismatch, "frame checksum mismatch (corrupt frame)");
    return status_;
  }
  if (header_.flags & ~kFlagZstd) {
    status_ = fail(DecodeError::kMalformedRecord, "unknown frame flags");
    return status_;
  }
  if (header_.flags & kFlagZstd) {
    decompressed_.resize(header_.raw_bytes);
    size_t n =
        ZSTD_decompress(decompressed_.data(), decompressed_.size(), stored.data(), stored.size());
    if (ZSTD_isError(n) || n != header_.raw_bytes) {
      status_ = fail(DecodeError::kDecompressFailed,
                     std::string("zstd: ") +
                         (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size differs from header"));
      return status_;
    }
    payload_ = decompressed_;
  } else {
    if (header_.raw_bytes != header_.payload_bytes) {
      status_ = fail(DecodeError::kMalformedRecord, "raw size differs from stored size");
      return status_;
    }
    payload_ = stored;
  }
  // A record takes at least two bytes, so the count is bounded by the payload.
  if (header_.record_count > payload_.size() / 2 + 1) {
    status_ =
        fail(DecodeError::kRecordCountMismatch, "record count larger than the payload allows");
    return status_;
  }
  return status_;
}

bool FrameDecoder::next_record(Record& out) {
  for (;;) {
    if (!status_.ok()) return false;
    if (offset_ >= payload_.size()) {
      if (records_read_ != header_.record_count)
        status_ = fail(DecodeError::kRecordCountMismatch,
                       "frame header says " + std::to_string(header_.record_count) +
                           " records, payload holds " + std::to_string(records_read_));
      return false;
    }
    const uint8_t* const record = payload_.data() + offset_;
    const size_t left = payload_.size() - offset_;
    uint8_t tag = 0;
    uint64_t body_bytes = 0;
    size_t head_bytes = 0;
    if (left >= 2 && record[1] < 0x80) {
      // The common case, a body under 128 bytes: a one-byte length.
      tag = record[0];
      body_bytes = record[1];
      head_bytes = 2;
    } else {
      ByteReader reader(payload_.subspan(offset_));
      if (!reader.u8(tag) || !reader.varint(body_bytes)) body_bytes = left;  // refused below
      head_bytes = reader.position();
    }
    if (body_bytes > left - head_bytes) {
      status_ = fail(DecodeError::kTruncatedRecord,
                     "record " + std::to_string(records_read_) + " at payload offset " +
                         std::to_string(offset_) + " runs past the end of the frame");
      return false;
    }
    offset_ += head_bytes + body_bytes;
    if (++records_read_ > header_.record_count) {
      status_ = fail(DecodeError::kRecordCountMismatch, "more records than the frame header says");
      return false;
    }
    if (tag == static_cast<uint8_t>(RecordKind::kSpan)) {
      if (columns_) {
        if (columns_->decode_span(record, head_bytes, body_bytes, left - head_bytes, previous_ns_,
                                  out))
          return true;
      } else if (decode_span_fast(record + head_bytes, body_bytes, left - head_bytes, previous_ns_,
                                  out)) {
        return true;
      }
    }
    if (const auto decoded = decode_checked(tag, record, head_bytes, body_bytes, left, out))
      return *decoded;
    // Skipped: a newer record kind (forward compatible); on to the next.
  }
}

std::optional<bool> FrameDecoder::decode_checked(uint8_t tag, const uint8_t* record,
                                                 size_t head_bytes, size_t body_bytes, size_t left,
                                                 Record& out) {
  // A span the builder refused may have ended its split of the frame.
  if (columns_ && !columns_->decoding_frame()) columns_ = nullptr;
  std::span<const uint8_t> body(record + head_bytes, body_bytes);
  std::string why;
  const BodyResult result = decode_body(tag, body, previous_ns_, out, why);
  // Records decoded the checked way, and those skipped, are bytes of the frame all the same.
  if (columns_ && result != BodyResult::kError &&
      !columns_->split_record(record, head_bytes + body_bytes, left))
    columns_ = nullptr;
  switch (result) {
    case BodyResult::kOk:
      return true;
    case BodyResult::kSkipped:
      return std::nullopt;
    case BodyResult::kError:
      status_ = fail(DecodeError::kMalformedRecord,
                     "record " + std::to_string(records_read_ - 1) + " (" +
                         to_string(static_cast<RecordKind>(tag)) + "): " + why);
      return false;
  }
  return false;
}

bool FrameDecoder::fuse_columns(ColumnBuilder* columns) {
  columns_ = nullptr;
  if (!columns || !status_.ok() || offset_ != 0 || (header_.flags & kFlagZstd) ||
      frame_.size() < kFrameHeaderBytes)
    return false;
  if (!columns->begin_decoded_frame(frame_.first(kFrameHeaderBytes), payload_.size())) return false;
  columns_ = columns;
  return true;
}

void FrameDecoder::stop_columns() {
  if (columns_) columns_->abandon_frame();
  columns_ = nullptr;
}

// [SECTION] Header helpers -------------------------------------------------------

std::optional<FrameHeader> peek_frame_header(std::span<const uint8_t> frame) {
  if (frame.size() < kFrameHeaderBytes) return std::nullopt;
  const uint8_t* h = frame.data();
  FrameHeader out;
  out.magic = get_u32(h);
  out.version = get_u16(h + 4);
  out.flags = get_u16(h + 6);
  out.payload_bytes = get_u32(h + 8);
  out.raw_bytes = get_u32(h + 12);
  out.record_count = get_u32(h + 16);
  out.source_id = get_u32(h + 20);
  out.checksum = get_u32(h + 24);
  return out;
}

bool restamp_source_id(std::span<uint8_t> frame, uint32_t source_id) {
  if (frame.size() < kFrameHeaderBytes) return false;
  uint8_t* h = frame.data();
  // The checksum is CRC-32 of header[0, 24) || payload. zlib's crc32_combine(c1,
  // c2, n) is shift_n(c1) ^ c2 with shift_n linear, so changing only the header
  // changes the checksum by shift_n(crc(old header) ^ crc(new header)): O(log n)
  // instead of a pass over the payload (the collector restamps every frame it
  // forwards). A frame whose checksum was wrong stays wrong.
  const uLong before = crc32(crc32(0L, Z_NULL, 0), h, 24);
  put_u32(h + 20, source_id);
  const uLong after = crc32(crc32(0L, Z_NULL, 0), h, 24);
  const auto payload = static_cast<z_off_t>(frame.size() - kFrameHeaderBytes);
  const uLong delta = crc32_combine(before ^ after, 0, payload);
  put_u32(h + 24, get_u32(h + 24) ^ static_cast<uint32_t>(delta));
  return true;
}

bool seal_frame_checksum(std::span<uint8_t> frame) {
  if (frame.size() < kFrameHeaderBytes) return false;
  put_u32(frame.data() + 24, crc32_of(frame.data(), frame.subspan(kFrameHeaderBytes)));
  return true;
}

DecodeStatus decode_frame(std::span<const uint8_t> frame, std::vector<Record>& out,
                          DecoderOptions options) {
  FrameDecoder decoder(options);
  DecodeStatus status = decoder.open(frame);
  if (!status.ok()) return status;
  Record record;
  while (decoder.next(record)) out.push_back(record);
  return decoder.status();
}

}  // namespace inferscope::wire
