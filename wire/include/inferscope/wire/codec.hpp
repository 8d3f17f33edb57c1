// inferscope wire: frames of records, and their encoder and decoder.
//
// A frame is a 28-byte little-endian header followed by a payload of records
// (optionally zstd-compressed). docs/wire-format.md is the byte-level spec.
//
//   FrameEncoder enc;                    FrameDecoder dec;
//   enc.add(span); enc.add(load);        size_t n;
//   enc.finish(bytes);                   if (dec.frame_size(stream, n).ok()) {
//                                          dec.open(stream.first(n));
//                                          while (dec.next(record)) {...}
//                                          if (!dec.status().ok()) log(dec.status().message);
//
// The decoder never trusts a length, count or index from the wire: every one is
// checked against the bytes that are there and against the limits in records.hpp
// and DecoderOptions. A bad frame yields an error with a message, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "inferscope/wire/column_builder.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

inline constexpr uint32_t kFrameMagic = 0x31465349;  // "ISF1" little-endian
inline constexpr size_t kFrameHeaderBytes = 28;
inline constexpr uint32_t kDefaultMaxFrameBytes = 4u << 20;
inline constexpr uint16_t kFlagZstd = 1u << 0;
// Source 0 is the collector itself (alerts it derives); agents' streams are
// numbered from 1 by the collector when it stores or forwards them.
inline constexpr uint32_t kCollectorSource = 0;

enum class DecodeError : uint8_t {
  kOk = 0,
  kNeedMoreData,  // not an error on a stream: wait for more bytes
  kBadMagic,
  kUnsupportedVersion,
  kFrameTooLarge,
  kChecksumMismatch,
  kDecompressFailed,
  kTruncatedRecord,  // a record runs past the end of the payload
  kMalformedRecord,  // a field is out of range (enum, limit, count)
  kRecordCountMismatch,
};

const char* to_string(DecodeError error);

struct DecodeStatus {
  DecodeError error = DecodeError::kOk;
  std::string message;  // says what was wrong and where; empty when ok

  bool ok() const { return error == DecodeError::kOk; }
  static DecodeStatus Ok() { return {}; }
};

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint16_t version = kProtocolVersion;
  uint16_t flags = 0;
  uint32_t payload_bytes = 0;  // bytes after the header, as stored
  uint32_t raw_bytes = 0;      // payload size after decompression
  uint32_t record_count = 0;
  uint32_t source_id = 0;  // which stream the records belong to (0 from agents)
  uint32_t checksum = 0;   // CRC-32 of header bytes [0, 24) and the stored payload
};

struct EncoderOptions {
  uint32_t max_frame_bytes = kDefaultMaxFrameBytes;
  bool compress = false;  // zstd level 1 when the payload is large enough
  uint32_t compress_min_bytes = 1024;
  uint32_t source_id = 0;
};

// Accumulates records into one frame. Not thread-safe; reuse it after finish().
class FrameEncoder {
 public:
  explicit FrameEncoder(EncoderOptions options = {});

  void add(const Record& record);
  void add(const Span& span);
  void add(const ExpertLoad& load);
  void add(const StringDef& def);

  size_t record_count() const { return record_count_; }
  size_t payload_bytes() const { return payload_.size(); }
  bool empty() const { return record_count_ == 0; }
  // True once the payload is at or past the frame budget: finish() before adding more.
  bool full() const { return payload_.size() + kFrameHeaderBytes >= options_.max_frame_bytes; }

  // Appends the frame to out and resets the encoder for the next frame.
  void finish(std::vector<uint8_t>& out);
  void set_source_id(uint32_t source_id) { options_.source_id = source_id; }

 private:
  EncoderOptions options_;
  std::vector<uint8_t> payload_;
  std::vector<uint8_t> body_;  // scratch for one record's body
  std::vector<uint8_t> compressed_;
  size_t record_count_ = 0;
  int64_t previous_ns_ = 0;  // timestamps are delta-coded within a frame
};

struct DecoderOptions {
  uint32_t max_frame_bytes = kDefaultMaxFrameBytes;
};

// Decodes frames one at a time. Not thread-safe; one per connection or file.

class FrameDecoder {
 public:
  explicit FrameDecoder(DecoderOptions options = {});

  // Looks at the start of a byte stream. Ok: a whole frame of frame_bytes is
  // there. kNeedMoreData: wait for more; once the header is there, frame_bytes
  // is the size it announces (so a reader can make room), before that 0.
  // Anything else: the stream is bad.
  DecodeStatus frame_size(std::span<const uint8_t> stream, size_t& frame_bytes) const;

  // Checks header and checksum and decompresses; then next() yields the records.
  // The frame's bytes must stay alive until next() returns false.
  DecodeStatus open(std::span<const uint8_t> frame);
  const FrameHeader& header() const { return header_; }

  // Decodes the next record into out. False at the end of the frame or on an
  // error; status() tells which. Records before an error were valid.
  // Inline (below) for a span with a one-byte length, most records.
  bool next(Record& out);
  const DecodeStatus& status() const { return status_; }

  // After open(): splits the frame's records into `columns` as next() decodes
  // them (ColumnBuilder::begin_decoded_frame). False when it does not: a
  // compressed frame (stored as it came), a failed open(), or a builder that
  // will not take it. Lasts until the next open() or stop_columns(), which
  // abandons the frame's split (it is then added whole).
  bool fuse_columns(ColumnBuilder* columns);
  void stop_columns();

 private:
  bool next_record(Record& out);  // next() past its inline case: any record
  // A record the fast span decoders did not take (or any other), decoded the
  // checked way: true when it was, false on an error, nullopt when it was
  // skipped (a newer kind: the caller goes on to the next record).
  std::optional<bool> decode_checked(uint8_t tag, const uint8_t* record, size_t head_bytes,
                                     size_t body_bytes, size_t left, Record& out);

  DecoderOptions options_;
  FrameHeader header_;
  std::vector<uint8_t> decompressed_;
  std::span<const uint8_t> payload_;
  size_t offset_ = 0;
  uint32_t records_read_ = 0;
  int64_t previous_ns_ = 0;
  DecodeStatus status_;
  std::span<const uint8_t> frame_;  // open()'s
  ColumnBuilder* columns_ = nullptr;
};

// The common case of decode_body for a span: each field read without a bounds
// check, the body checked once at the end. Needs kSpanFieldsMaxBytes
// (record_codec.hpp) readable from body (the frame's records after it: not the
// last ones). True when the span is valid; then out and previous_ns are what
// decode_body would make them. False says nothing: decode_body then decodes it
// (and says what is wrong), as if this had not run (previous_ns untouched; out
// may hold anything).
bool decode_span_fast(const uint8_t* body, size_t body_bytes, size_t readable, int64_t& previous_ns,
                      Record& out);

// Inline: the pipeline decodes every record through here, and the call with
// next_record()'s frame (it builds error messages) was ~4% of its samples. The
// same steps as next_record() takes for such a span.
inline bool FrameDecoder::next(Record& out) {
  const size_t left = payload_.size() - offset_;
  if (status_.ok() && left >= 2) [[likely]] {
    const uint8_t* const record = payload_.data() + offset_;
    const size_t body_bytes = record[1];
    if (record[0] == static_cast<uint8_t>(RecordKind::kSpan) && body_bytes < 0x80 &&
        body_bytes <= left - 2 && records_read_ < header_.record_count) [[likely]] {
      offset_ += 2 + body_bytes;
      ++records_read_;
      if (columns_ ? columns_->decode_span(record, 2, body_bytes, left - 2, previous_ns_, out)
                   : decode_span_fast(record + 2, body_bytes, left - 2, previous_ns_, out))
        return true;
      if (const auto decoded = decode_checked(record[0], record, 2, body_bytes, left, out))
        return *decoded;
    }
  }
  return next_record(out);
}

// [SECTION] Header helpers
// For code that handles whole frames without decoding their records (a
// forwarder, a store, an exporter): the header's byte layout stays here, in the
// wire library, and works on any host byte order.

// The header fields of a frame (or of the first kFrameHeaderBytes of a stream),
// as stored; nothing is checked (not magic, version nor checksum). nullopt when
// fewer than kFrameHeaderBytes bytes are there.
std::optional<FrameHeader> peek_frame_header(std::span<const uint8_t> frame);

// Rewrites a complete frame's source id and updates its checksum for the new
// header without reading the payload: a valid frame stays valid (and an invalid
// one invalid). False (nothing changed) when the span is shorter than a header.
bool restamp_source_id(std::span<uint8_t> frame, uint32_t source_id);

// Recomputes a complete frame's checksum from its header and payload as they
// are (tools and fuzzers that build or patch frames by hand). False when the
// span is shorter than a header.
bool seal_frame_checksum(std::span<uint8_t> frame);

// Convenience for tests and tools: every record of one complete frame.
DecodeStatus decode_frame(std::span<const uint8_t> frame, std::vector<Record>& out,
                          DecoderOptions options = {});

}  // namespace inferscope::wire
