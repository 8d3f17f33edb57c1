// Per-record body encoding. Every record is: tag (u8), body length (varint), body.
// Timestamps are delta-coded against the previous timestamp in the same frame.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "byte_io.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const Hello& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const StringDef& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const Span& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const ExpertLoad& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const MemorySample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const PrefixCacheSample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const StageTiming& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RequestEvent& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const AgentHealth& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const CounterSample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const AlertEpisode& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const ExpertParallelStep& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RangeQuery& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RangeEnd& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const FrameSequence& r);

enum class BodyResult : uint8_t { kOk, kSkipped, kError };

// Bytes a span body's known fields can take at most, args included: a
// decode_span_fast read never goes further than this past the body's start.
inline constexpr size_t kSpanFieldsMaxBytes = 3 + 8 * 10 + kMaxSpanArgs * 20;

// decode_span_fast (codec.hpp) reads a span's fields; detail::decode_span_fast_with
// below is its body.

namespace detail {

// ByteReader::varint without its check per byte (the caller's readable bytes
// bound every read): at most 10 bytes, bits past 64 dropped, as there. bad is
// set when the tenth byte still continues.
[[gnu::always_inline]] inline uint64_t unchecked_varint(const uint8_t*& p, bool& bad) {
  uint64_t b = *p++;
  if (b < 0x80) [[likely]]
    return b;
  uint64_t v = b & 0x7f;
  for (int shift = 7;; shift += 7) {
    b = *p++;
    v |= (b & 0x7f) << shift;
    if (b < 0x80) return v;
    if (shift == 63) {
      bad = true;
      return v;
    }
  }
}

// What decode_span_fast_with tells about a span's bytes as it reads them:
// field<k>(from, to) for the k-th field before the args (wire order, the
// order block_columns.cpp's kSpanFields lists), args(from, to) for all the
// args at once, done(end) once the span is valid (end: where its known fields
// end; the body may go on). Nothing is said to be valid before done(). The
// column builder (column_builder.hpp) writes the fields into a block's column
// streams here, so a decoded frame's bytes are not walked a second time.
struct NoSpanFields {
  template <size_t K>
  void field(const uint8_t*, const uint8_t*) {}
  void args(const uint8_t*, const uint8_t*) {}
  void done(const uint8_t*) {}
};

// decode_span_fast, telling `fields` where each field is.
template <class Fields>
[[gnu::always_inline]] inline bool decode_span_fast_with(const uint8_t* p, size_t body_bytes,
                                                         size_t readable, int64_t& prev,
                                                         Record& out, Fields& fields) {
  // Every read below is at most kSpanFieldsMaxBytes past the start; whether the
  // fields fit the body (and are in range) is checked once, after them.
  if (readable < kSpanFieldsMaxBytes) return false;
  const uint8_t* const body_end = p + body_bytes;
  if (!std::holds_alternative<Span>(out)) out.emplace<Span>();
  Span& s = *std::get_if<Span>(&out);
  bool bad = false;
  const uint8_t* const body = p;
  const uint8_t kind = *p++;
  fields.template field<0>(body, p);
  const uint8_t* from = p;
  const uint64_t track = unchecked_varint(p, bad);
  fields.template field<1>(from, p);
  from = p;
  const uint64_t stream = unchecked_varint(p, bad);
  fields.template field<2>(from, p);
  from = p;
  const uint64_t name = unchecked_varint(p, bad);
  fields.template field<3>(from, p);
  from = p;
  const uint8_t category = *p++;
  fields.template field<4>(from, p);
  from = p;
  const uint64_t depth = unchecked_varint(p, bad);
  fields.template field<5>(from, p);
  from = p;
  const int64_t start_delta = unzigzag(unchecked_varint(p, bad));
  fields.template field<6>(from, p);
  from = p;
  const int64_t duration = unzigzag(unchecked_varint(p, bad));
  fields.template field<7>(from, p);
  from = p;
  s.correlation_id = unchecked_varint(p, bad);
  fields.template field<8>(from, p);
  from = p;
  s.request_id = unchecked_varint(p, bad);
  fields.template field<9>(from, p);
  from = p;
  const uint8_t num_args = *p++;
  fields.template field<10>(from, p);
  from = p;
  bad |= (kind >= 2) | (track > UINT32_MAX) | (stream > UINT32_MAX) | (name > UINT32_MAX) |
         (category >= 8) | (depth > UINT16_MAX) | (duration < 0) | (num_args > kMaxSpanArgs);
  if (bad) return false;  // num_args bounds the reads below
  for (uint8_t i = 0; i < num_args; ++i) {
    const uint64_t key = unchecked_varint(p, bad);
    bad |= key > UINT32_MAX;
    s.args[i].key_id = static_cast<uint32_t>(key);
    s.args[i].value = unzigzag(unchecked_varint(p, bad));
  }
  fields.args(from, p);
  if (bad || p > body_end) return false;
  // The args past num_args are cleared, as decode(Span) does: a jump to the
  // first, then straight-line stores (the loop took ~24 instructions a span).
  static_assert(kMaxSpanArgs == 4);
  switch (num_args) {
    case 0:
      s.args[0] = {};
      [[fallthrough]];
    case 1:
      s.args[1] = {};
      [[fallthrough]];
    case 2:
      s.args[2] = {};
      [[fallthrough]];
    case 3:
      s.args[3] = {};
      break;
    default:
      break;
  }
  s.track_kind = static_cast<TrackKind>(kind);
  s.track_id = static_cast<uint32_t>(track);
  s.stream = static_cast<uint32_t>(stream);
  s.name_id = static_cast<uint32_t>(name);
  s.category = static_cast<SpanCategory>(category);
  s.depth = static_cast<uint16_t>(depth);
  s.num_args = num_args;
  // Wrapping, as read_delta_ts and decode(Span) do.
  s.start_ns =
      static_cast<int64_t>(static_cast<uint64_t>(prev) + static_cast<uint64_t>(start_delta));
  s.end_ns =
      static_cast<int64_t>(static_cast<uint64_t>(s.start_ns) + static_cast<uint64_t>(duration));
  prev = s.start_ns;
  fields.done(p);
  return true;
}

}  // namespace detail

// Decodes one record body of the given tag into out. kSkipped: a tag from a
// newer protocol revision, ignored. kError: why says what was wrong.
BodyResult decode_body(uint8_t tag, std::span<const uint8_t> body, int64_t& previous_ns,
                       Record& out, std::string& why);

}  // namespace inferscope::wire
