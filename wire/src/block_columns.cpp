// Column-split block payloads (trace file format 4): the frames' bytes regrouped by field.
//
// Why: the store's blocks are mostly spans, and in wire form a span's fields
// (track, name, start delta, duration, ids) alternate byte by byte, so zstd
// sees high-entropy bytes everywhere and its match finder works hard for
// little. Regrouped, each stream is a run of one field's varints: zstd level 1
// compresses it about twice as fast and 15% smaller (docs/collector.md). The
// split is a permutation of the bytes, never a re-encoding, so a joined block
// is the stored frames byte for byte, CRCs and all.
//
// Streams: 0 everything that is not a span field (frame headers, compressed
// frame payloads, other records' bodies, bytes after a span's known fields),
// 1 record tags and length varints, 2 a span's one-byte fields (track kind,
// category, arg count), 3.. one stream per span varint field, 11 span args.
//
// Format 5 (block flag kBlockFlagCorrelationDeltas) codes one stream instead of
// permuting it: correlation ids count up (CUPTI numbers launches in order), so
// stream 9 holds each id as a delta from the previous non-zero one in the
// block, which zstd shrinks to almost nothing where the ids themselves were
// ~13% of a compressed block. Exact all the same: a code is only used where
// the join writes back the very bytes it replaced (see code_correlation()).
//
// Format 6 (block flag kBlockFlagImpliedSpanLengths) drops most span lengths
// from stream 1: a span whose body is its fields and nothing after them, with
// a one-byte length, is the one byte kImpliedLengthSpanTag there, and the join
// writes its length back from the fields it joins. Stream 1 was half those
// lengths, and zstd found them costly: 3-8 ns a record on the bench's blocks
// (a third of zstd's time), 0.2-0.55 B compressed; without them the stream is
// all but one repeated byte (0.2 ns, 0.003 B).
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>

#include "block_columns.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/column_builder.hpp"
#include "inferscope/wire/trace_block.hpp"
#include "record_codec.hpp"

namespace inferscope::wire {

namespace {

enum Column : size_t {
  kHead,
  kTag,
  kSmall,
  kTrack,
  kStream,
  kName,
  kDepth,
  kStart,
  kDuration,
  kCorrelation,
  kRequest,
  kArgs,
};
static_assert(kArgs + 1 == kBlockColumns);

// A span body's fields before its args, in wire order (record_codec.cpp writes
// them so), and the stream each goes to: the one table the split, its fast
// path and the join read. Those marked one_byte are single bytes (track kind,
// category, arg count; < 0x80 in a valid span), the rest varints. The args
// after them (2 x the count's varints) all go to kArgs.
struct SpanField {
  Column column;
  bool one_byte;
};
constexpr SpanField kSpanFields[] = {{kSmall, true},    {kTrack, false},    {kStream, false},
                                     {kName, false},    {kSmall, true},     {kDepth, false},
                                     {kStart, false},   {kDuration, false}, {kCorrelation, false},
                                     {kRequest, false}, {kSmall, true}};
constexpr size_t kSpanFieldCount = std::size(kSpanFields);
static_assert(kSpanFields[kSpanFieldCount - 1].one_byte, "the arg count ends the fields");

constexpr uint8_t kSpanTag = static_cast<uint8_t>(RecordKind::kSpan);
// In stream 1 of a format 6 block: a span whose length the join works out. Not
// a record tag this code writes; a block holding a record with this tag (a
// newer protocol's) is split without implied lengths.
constexpr uint8_t kImpliedLengthSpanTag = 0x80 | kSpanTag;
constexpr size_t kMaxVarintBytes = 10;

uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// Bytes of the varint at p, 0 when it does not end before `end` (or within 10 bytes).
size_t varint_bytes(const uint8_t* p, const uint8_t* end) {
  for (size_t i = 0; i < kMaxVarintBytes && p + i < end; ++i)
    if (!(p[i] & 0x80)) return i + 1;
  return 0;
}

uint64_t varint_value(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t(p[i] & 0x7F) << (7 * i);
  return v;
}

uint64_t zigzag(uint64_t v) {
  return (v << 1) ^ (0 - (v >> 63));
}
uint64_t unzigzag(uint64_t v) {
  return (v >> 1) ^ (0 - (v & 1));
}

using detail::put_varint;  // into a stream, which has 16 bytes of slack

// Whether the varint of n bytes at p is the shortest form of its value: no
// trailing 0x00 byte, and a tenth byte holds only bit 63 (0x00 alone is 0).
[[gnu::always_inline]] inline bool shortest_varint(const uint8_t* p, size_t n) {
  return n == 1 || (p[n - 1] != 0 && (n < kMaxVarintBytes || p[n - 1] <= 1));
}

// Correlation-id codes in stream 9 of a format 5 block (one varint each):
//   0      the id is 0 (the one byte 0x00)
//   1      the varint that follows in the stream is the id's bytes as they were
//          (not the shortest form of its value, which the join would not
//          write back byte for byte)
//   k >= 2 the id is prev + unzigzag(k - 2), written in its shortest form;
//          prev is the last id so coded in the block (0 at its start)
constexpr uint64_t kCorrelationZero = 0, kCorrelationAsIs = 1, kCorrelationDelta = 2;

// Codes the varint of n bytes (1..10) at p into dst (16 bytes of slack).
[[gnu::always_inline]] inline void code_correlation(uint8_t*& dst, const uint8_t* p, size_t n,
                                                    uint64_t& prev) {
  if (n == 1 && p[0] == 0) {
    *dst++ = kCorrelationZero;
    return;
  }
  if (shortest_varint(p, n)) {
    const uint64_t v = varint_value(p, n);
    const uint64_t code = zigzag(v - prev);
    if (code <= UINT64_MAX - kCorrelationDelta) {
      put_varint(dst, code + kCorrelationDelta);
      prev = v;
      return;
    }
  }
  *dst++ = kCorrelationAsIs;
  std::memcpy(dst, p, n);
  dst += n;
}

// A span's args (n bytes) into the args stream, whose slack takes 16 bytes:
// one fixed 16-byte copy for the common case, the rest only past it. (Written
// `n <= 16 ? 16 : n`, the compiler made one libc memcpy call of either size:
// a call for every span with args, a quarter of the bench's.)
[[gnu::always_inline]] inline void copy_args(uint8_t* dst, const uint8_t* from, size_t n) {
  std::memcpy(dst, from, 16);
  if (n > 16) [[unlikely]]
    std::memcpy(dst + 16, from + 16, n - 16);
}

// Copies the varint at p to dst, advancing both; false when it does not end
// before `end`. dst has 16 bytes of slack, so with 8 bytes of input readable
// (before `limit`) a varint is one 8-byte load and store: no byte loop.
[[gnu::always_inline]] inline bool copy_varint(uint8_t*& dst, const uint8_t*& p, const uint8_t* end,
                                               const uint8_t* limit) {
  if (limit - p >= 8) {
    uint64_t x;
    std::memcpy(&x, p, 8);
    const uint64_t stops = ~x & 0x8080808080808080ull;
    if (stops != 0) {
      const size_t n = static_cast<size_t>(std::countr_zero(stops) >> 3) + 1;
      if (n > static_cast<size_t>(end - p)) return false;
      std::memcpy(dst, &x, 8);
      dst += n;
      p += n;
      return true;
    }
  }
  const size_t n = varint_bytes(p, end);
  if (n == 0) return false;
  std::memcpy(dst, p, n);
  dst += n;
  p += n;
  return true;
}

[[gnu::always_inline]] inline bool copy_byte(uint8_t*& dst, const uint8_t*& p, const uint8_t* end) {
  if (p >= end) return false;
  *dst++ = *p++;
  return true;
}

// The correlation field, field by field: copied as it is, or coded (format 5).
template <bool kDeltas>
[[gnu::always_inline]] inline bool copy_correlation(uint8_t*& dst, const uint8_t*& p,
                                                    const uint8_t* end, const uint8_t* limit,
                                                    uint64_t& prev) {
  if constexpr (!kDeltas) {
    return copy_varint(dst, p, end, limit);
  } else {
    const size_t n = varint_bytes(p, end);
    if (n == 0) return false;
    code_correlation(dst, p, n, prev);
    p += n;
    return true;
  }
}

#if defined(__SSE2__)
// Bit i set: byte i of the first `length` (<= 64) at p ends a varint (its high
// bit is clear); bits past `length` are clear. Most span bodies are under 32
// bytes: two loads then, not four. (64 bytes at p are readable either way.)
[[gnu::always_inline]] inline uint64_t stop_bits(const uint8_t* p, size_t length) {
  const auto mask16 = [p](int i) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i));
    return uint64_t{static_cast<uint32_t>(_mm_movemask_epi8(v))} << (16 * i);
  };
  uint64_t continues = mask16(0) | mask16(1);
  if (length > 32) continues |= mask16(2) | mask16(3);
  const uint64_t stops = ~continues;
  return length < 64 ? stops & ((uint64_t{1} << length) - 1) : stops;
}

// A span's fields from the stop bits of its body, at once. Parsing varints one
// after the other makes each field wait for the previous one's length (a load
// and a count per field, ~35 ns a span); here the field boundaries are the set
// bits of one mask and every copy is independent (one 16-byte load and store).
// One-byte fields (track kind, category, arg count) are < 0x80 in any valid
// span, so they are one-byte tokens too; anything else (a field that is not,
// a varint over 10 bytes, a body over 64 bytes, the end of the block near)
// returns false with every stream back where it was, for the field-by-field
// path. The streams' cursors are at[]: a field loads its stream's cursor and
// stores it back. (Eleven cursors in locals did not fit in registers, and
// the compiler's spills cost more than that, ~15 instructions a field.)
template <bool kDeltas>
[[gnu::always_inline]] inline bool split_span_fast(const uint8_t*& p, const uint8_t* body_end,
                                                   const uint8_t* end, uint8_t** at,
                                                   uint64_t& prev_correlation) {
  const size_t length = static_cast<size_t>(body_end - p);
  if (length > 64 || end - p < 96) return false;  // copies read up to p + 81
  const uint64_t all_stops = stop_bits(p, length);
  // Checked on the mask before anything is written: no token over 10 bytes
  // (no run of 10 continuation bytes) and the first field one byte. As the
  // tokens are cut: the two other one-byte fields, the arg count, and that the
  // tokens ended inside the body (a token past the last stop bit ends at 65).
  const uint64_t continues = ~all_stops & (length < 64 ? (uint64_t{1} << length) - 1 : ~0ull);
  uint64_t run = continues & (continues >> 1);  // bit i: bytes i, i+1 continue
  run &= run >> 2;                              // i..i+3
  run &= run >> 4;                              // i..i+7
  run &= (continues >> 8) & (continues >> 9);   // i..i+9: a varint over 10 bytes
  if (run != 0 || !(all_stops & 1)) return false;
  uint8_t* const correlation_at = at[kCorrelation];
  const uint64_t prev_at = prev_correlation;
  uint64_t stops = all_stops;
  size_t from = 0;  // where the next field starts
  size_t one_byte = 0;
#pragma GCC unroll 11
  for (size_t k = 0; k < kSpanFieldCount; ++k) {
    const size_t last = static_cast<size_t>(std::countr_zero(stops));
    stops &= stops - 1;
    const size_t n = last + 1 - from;
    const Column column = kSpanFields[k].column;
    uint8_t* dst = at[column];
    if (kDeltas && column == kCorrelation) {
      // A field over 10 bytes can only run past the body (the run check allows
      // none inside it), and the span is refused below; the coder is never
      // handed more than a varint's 10 bytes (its value would shift past 64).
      code_correlation(dst, p + from, std::min(n, kMaxVarintBytes), prev_correlation);
    } else {
      std::memcpy(dst, p + from, 16);  // the streams' slack takes the rest
      dst += n;
    }
    at[column] = dst;
    if (k != 0 && kSpanFields[k].one_byte) one_byte |= n;  // the first: checked on the mask
    from = last + 1;
  }
  // The args are contiguous and all go to one stream: one copy, up to the
  // stop bit that ends the last of their 2 * count fields.
  const uint8_t count = p[from - 1];
  size_t args_end = from;
  if (count != 0 && count <= kMaxSpanArgs) {
    for (uint8_t i = 1; i < 2 * count; ++i) stops &= stops - 1;
    args_end = static_cast<size_t>(std::countr_zero(stops)) + 1;
  }
  if (one_byte != 1 || count > kMaxSpanArgs || args_end > length) [[unlikely]] {
    // Refused after the fields were cut (rare): they are taken back by the same
    // walk over the stop bits. Cheaper than keeping every stream's position at
    // the start of each span, which every span would pay. The correlation
    // field may be coded (format 5): its stream is put back whole.
    uint64_t st = all_stops;
    size_t back = 0;
    for (size_t k = 0; k < kSpanFieldCount; ++k) {
      const size_t last = static_cast<size_t>(std::countr_zero(st));
      st &= st - 1;
      if (kSpanFields[k].column != kCorrelation) at[kSpanFields[k].column] -= last + 1 - back;
      back = last + 1;
    }
    at[kCorrelation] = correlation_at;
    prev_correlation = prev_at;
    return false;
  }
  const size_t args_bytes = args_end - from;
  copy_args(at[kArgs], p + from, args_bytes);
  at[kArgs] += args_bytes;
  p += args_end;
  return true;
}
#else
template <bool kDeltas>
inline bool split_span_fast(const uint8_t*&, const uint8_t*, const uint8_t*, uint8_t**, uint64_t&) {
  return false;  // the field-by-field path
}
#endif

// A span's fields before its args, one after the other (split_span_fast's
// fallback): false when one does not end inside the body.
template <bool kDeltas>
[[gnu::always_inline]] inline bool split_span_fields(const uint8_t*& p, const uint8_t* body_end,
                                                     const uint8_t* end, uint8_t** at,
                                                     uint64_t& prev_correlation) {
#pragma GCC unroll 11
  for (const SpanField& field : kSpanFields) {
    const bool ok =
        field.one_byte ? copy_byte(at[field.column], p, body_end)
        : field.column == kCorrelation
            ? copy_correlation<kDeltas>(at[field.column], p, body_end, end, prev_correlation)
            : copy_varint(at[field.column], p, body_end, end);
    if (!ok) return false;
  }
  return true;
}

// Splits one record at p (inside a frame ending at frame_end; `end` bounds
// what may be read, the fast path's 96 bytes included) into the streams,
// advancing p past it; false when it is not a well-formed record. A span
// whose fields (and args) are its whole body, with a one-byte length, keeps
// only the marker tag in the tag stream (format 6), whichever path split it:
// so the column form of a record does not depend on where it lies in the
// block (ColumnBuilder splits frames before the block's end is known).
template <bool kDeltas, bool kImpliedLengths>
[[gnu::always_inline]] inline bool split_one_record(const uint8_t*& p,
                                                    const uint8_t* const frame_end,
                                                    const uint8_t* const end, uint8_t*& head,
                                                    uint8_t*& tag, uint8_t** at,
                                                    uint64_t& prev_correlation) {
  size_t n = 0;
  uint64_t length = 0;
  if (end - p >= 16 && p[1] < 0x80) {
    // The common case, a record under 128 bytes: a fixed-size copy, no loop.
    n = 1;
    length = p[1];
    std::memcpy(tag, p, 16);  // the stream's slack takes the rest
  } else {
    n = p + 1 < frame_end ? varint_bytes(p + 1, frame_end) : 0;
    if (n == 0) return false;
    length = varint_value(p + 1, n);
    std::memcpy(tag, p, 1 + n);
  }
  const uint8_t record_tag = *p;
  if (p + 1 + n > frame_end || length > static_cast<size_t>(frame_end - p) - 1 - n ||
      (kImpliedLengths && record_tag == kImpliedLengthSpanTag))
    return false;
  tag += 1 + n;
  p += 1 + n;
  const uint8_t* const body_end = p + length;
  if (record_tag == kSpanTag) {
    if (!split_span_fast<kDeltas>(p, body_end, end, at, prev_correlation)) {
      // Field by field (kSpanFields); bytes after them stay in stream 0.
      bool ok = split_span_fields<kDeltas>(p, body_end, end, at, prev_correlation);
      for (uint8_t i = 0, count = ok ? p[-1] : 0; ok && i < count; ++i)
        ok = copy_varint(at[kArgs], p, body_end, end) && copy_varint(at[kArgs], p, body_end, end);
      if (!ok) return false;
    }
    // With nothing after the fields, the join can work the length out (format
    // 6): the tag alone.
    if (kImpliedLengths && n == 1 && p == body_end) {
      tag[-2] = kImpliedLengthSpanTag;
      --tag;
    }
  }
  if (p != body_end) {
    std::memcpy(head, p, static_cast<size_t>(body_end - p));
    head += body_end - p;
  }
  p = body_end;
  return true;
}

// Splits whole frames into the streams at at[]; false when the bytes are not
// whole, well-formed frames. The frame headers' and tags' cursors live in
// locals; the span streams' in at[] (split_span_fast says why).
// prev_correlation: the correlation coder's chain, 0 at a block's start.
template <bool kDeltas, bool kImpliedLengths>
[[gnu::always_inline]] inline bool split(const uint8_t* p, const uint8_t* const end,
                                         uint8_t* at[kBlockColumns], uint64_t& prev_correlation) {
  uint8_t *head = at[kHead], *tag = at[kTag];
  bool ok = true;
  while (ok && p < end) {
    if (static_cast<size_t>(end - p) < kFrameHeaderBytes || get_u32(p) != kFrameMagic) {
      ok = false;
      break;
    }
    const uint16_t flags = static_cast<uint16_t>(p[6] | p[7] << 8);
    const uint32_t stored = get_u32(p + 8);
    if (stored > static_cast<size_t>(end - p) - kFrameHeaderBytes) {
      ok = false;
      break;
    }
    std::memcpy(head, p, kFrameHeaderBytes);
    head += kFrameHeaderBytes;
    p += kFrameHeaderBytes;
    const uint8_t* const frame_end = p + stored;
    if (flags & kFlagZstd) {  // compressed by the agent: kept as it is
      std::memcpy(head, p, stored);
      head += stored;
      p = frame_end;
      continue;
    }
    while (ok && p < frame_end)
      ok = split_one_record<kDeltas, kImpliedLengths>(p, frame_end, end, head, tag, at,
                                                      prev_correlation);
  }
  at[kHead] = head, at[kTag] = tag;
  return ok;
}

// One stream while joining: never read past its end.
struct Stream {
  const uint8_t* p = nullptr;
  const uint8_t* end = nullptr;
  bool take(uint8_t*& out, size_t n) {
    if (n > static_cast<size_t>(end - p)) return false;
    std::memcpy(out, p, n);
    out += n;
    p += n;
    return true;
  }
  // Copies one varint; its value in v.
  bool take_varint(uint8_t*& out, uint64_t* v = nullptr) {
    const size_t n = varint_bytes(p, end);
    if (n == 0) return false;
    if (v) *v = varint_value(p, n);
    for (size_t i = 0; i < n; ++i) out[i] = p[i];
    out += n;
    p += n;
    return true;
  }
  // The correlation field: copied (format 4), or decoded from its code (format 5).
  bool take_correlation(uint8_t*& out, bool deltas, uint64_t& prev) {
    if (!deltas) return take_varint(out);
    const size_t n = varint_bytes(p, end);
    // Codes are written in their shortest form: any other is damage (and
    // would hide it, the bits past 64 being dropped).
    if (n == 0 || !shortest_varint(p, n)) return false;
    const uint64_t code = varint_value(p, n);
    p += n;
    if (code == kCorrelationZero) {
      *out++ = 0;
      return true;
    }
    if (code == kCorrelationAsIs) return take_varint(out);
    prev += unzigzag(code - kCorrelationDelta);
    put_varint(out, prev);
    return true;
  }
};

// Bytes a join may write past the end of the frames before a check stops it
// (format 5 streams may be shorter than what they expand to): a span's fields
// before its args at their widest (83), then one arg (20); or a record tag.
constexpr size_t kJoinSlack = 256;

// The split compiled for BMI1/2 as well (tzcnt and blsr for the walk over the
// stop bits: baseline x86-64 has neither, and its bsf needs a branch or cmov
// for a zero mask), chosen at run time: ~90 instructions a record fewer on
// the bench's blocks (docs/collector.md, sixth pass). The same source, so the
// same bytes out.
#if defined(__x86_64__) && defined(__GNUC__)
#define INFERSCOPE_SPLIT_BMI 1
template <bool kDeltas, bool kImpliedLengths>
__attribute__((target("bmi,bmi2"))) bool split_bmi(const uint8_t* p, const uint8_t* const end,
                                                   uint8_t* at[kBlockColumns],
                                                   uint64_t& prev_correlation) {
  return split<kDeltas, kImpliedLengths>(p, end, at, prev_correlation);
}
#endif

std::atomic<bool> baseline_split_only{false};  // detail::use_baseline_split

bool split_with_bmi() {
#if defined(INFERSCOPE_SPLIT_BMI)
  static const bool cpu = __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  return cpu && !baseline_split_only.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// split() on the BMI path where the CPU has it; prev_correlation: the block's chain so far.
template <bool kDeltas, bool kImpliedLengths>
bool split_frames(std::span<const uint8_t> frames, uint8_t* at[kBlockColumns],
                  uint64_t& prev_correlation) {
  const uint8_t* const p = frames.data();
#if defined(INFERSCOPE_SPLIT_BMI)
  if (split_with_bmi())
    return split_bmi<kDeltas, kImpliedLengths>(p, p + frames.size(), at, prev_correlation);
#endif
  return split<kDeltas, kImpliedLengths>(p, p + frames.size(), at, prev_correlation);
}
template <bool kDeltas, bool kImpliedLengths>
bool split_frames(std::span<const uint8_t> frames, uint8_t* at[kBlockColumns]) {
  uint64_t prev_correlation = 0;
  return split_frames<kDeltas, kImpliedLengths>(frames, at, prev_correlation);
}

template <bool kDeltas, bool kImpliedLengths>
bool split_into(std::span<const uint8_t> frames, uint8_t* scratch, size_t stride,
                std::vector<uint8_t>& out) {
  uint8_t* at[kBlockColumns];
  for (size_t c = 0; c < kBlockColumns; ++c) at[c] = scratch + c * stride;
  if (!split_frames<kDeltas, kImpliedLengths>(frames, at)) return false;
  size_t total = 0;
  for (size_t c = 0; c < kBlockColumns; ++c)
    total += static_cast<size_t>(at[c] - (scratch + c * stride));
  out.resize(kBlockColumnTableBytes + total);
  uint8_t* to = out.data() + kBlockColumnTableBytes;
  for (size_t c = 0; c < kBlockColumns; ++c) {
    const uint8_t* start = scratch + c * stride;
    const auto size = static_cast<uint32_t>(at[c] - start);
    for (int i = 0; i < 4; ++i) out[4 * c + i] = static_cast<uint8_t>(size >> (8 * i));
    std::memcpy(to, start, size);
    to += size;
  }
  return true;
}

}  // namespace

void detail::use_baseline_split(bool on) {
  baseline_split_only.store(on, std::memory_order_relaxed);
}

bool split_block_columns(std::span<const uint8_t> frames, std::vector<uint8_t>& out,
                         bool* correlation_deltas, bool* implied_span_lengths) {
  // One pass into per-stream scratch areas, each as large as the block (any one
  // stream may hold all of it; a coded correlation id takes at most 11 bytes,
  // less than the smallest span record), then one copy each into place. The
  // scratch is left uninitialized, so only the pages the streams reach are
  // ever touched: about one block's worth per thread that seals blocks.
  thread_local std::unique_ptr<uint8_t[]> scratch;
  thread_local size_t scratch_stride = 0;
  const size_t stride = frames.size() + 16;
  if (stride > scratch_stride) {
    // A quarter more than asked: blocks close at slightly different sizes.
    scratch_stride = stride + stride / 4;
    scratch.reset(new uint8_t[scratch_stride * kBlockColumns]);
  }
  const auto split_as = [&](bool deltas, bool lengths) {
    uint8_t* const at = scratch.get();
    if (deltas)
      return lengths ? split_into<true, true>(frames, at, scratch_stride, out)
                     : split_into<true, false>(frames, at, scratch_stride, out);
    return lengths ? split_into<false, true>(frames, at, scratch_stride, out)
                   : split_into<false, false>(frames, at, scratch_stride, out);
  };
  bool deltas = correlation_deltas && *correlation_deltas;
  bool lengths = implied_span_lengths && *implied_span_lengths;
  for (;;) {
    if (split_as(deltas, lengths)) {
      // Coded, the column form must not be larger than the frames (a reader
      // sizes its buffer by the block header); ids that do not count up can
      // make it so. Then the ids are split as they are (format 4 has them).
      if (!deltas || out.size() <= kBlockColumnTableBytes + frames.size()) break;
      deltas = false;
    } else if (lengths) {
      lengths = false;  // a record with the marker's tag; or not frames, refused again
    } else {
      return false;
    }
  }
  if (correlation_deltas) *correlation_deltas = deltas;
  if (implied_span_lengths) *implied_span_lengths = lengths;
  return true;
}

bool join_block_columns(std::span<const uint8_t> columns, std::vector<uint8_t>& frames,
                        std::string& error, bool correlation_deltas, size_t frame_bytes,
                        bool implied_span_lengths) {
  auto bad = [&](const std::string& why) {
    error = "block columns are inconsistent: " + why;
    return false;
  };
  if (columns.size() < kBlockColumnTableBytes) return bad("no stream table");
  Stream s[kBlockColumns];
  const uint8_t* at = columns.data() + kBlockColumnTableBytes;
  uint64_t total = 0;
  for (size_t c = 0; c < kBlockColumns; ++c) {
    const uint32_t size = get_u32(columns.data() + 4 * c);
    total += size;
    if (total > columns.size() - kBlockColumnTableBytes) return bad("streams past the payload");
    s[c] = {at, at + size};
    at += size;
  }
  if (total != columns.size() - kBlockColumnTableBytes) return bad("bytes after the streams");
  // Format 4: the frames are exactly the streams' bytes. Formats 5 and 6: as
  // many as the block header says; a coded id or an implied length may expand,
  // so every write is checked against the end, up to kJoinSlack bytes late.
  const size_t size = correlation_deltas || implied_span_lengths ? frame_bytes : total;
  frames.resize(size + kJoinSlack);
  uint8_t* out = frames.data();
  uint8_t* const out_end = out + size;
  uint64_t prev_correlation = 0;
  // A span's fields, in wire order (the split's), ending by body_end.
  const auto take_span = [&](uint8_t*& to, const uint8_t* body_end) {
    for (const SpanField& field : kSpanFields) {
      Stream& from = s[field.column];
      const bool ok = field.one_byte ? from.take(to, 1)
                      : field.column == kCorrelation
                          ? from.take_correlation(to, correlation_deltas, prev_correlation)
                          : from.take_varint(to);
      if (!ok) return false;
    }
    bool ok = to <= body_end;
    // Checked per arg: no more than one arg's bytes are written past the record.
    for (uint8_t i = 0, args = ok ? to[-1] : 0; ok && i < args; ++i)
      ok = s[kArgs].take_varint(to) && s[kArgs].take_varint(to) && to <= body_end;
    return ok;
  };
  while (s[kHead].p < s[kHead].end) {
    uint8_t* header = out;
    if (static_cast<size_t>(out_end - out) < kFrameHeaderBytes ||
        !s[kHead].take(out, kFrameHeaderBytes))
      return bad("frame header cut short");
    const uint16_t flags = static_cast<uint16_t>(header[6] | header[7] << 8);
    const uint32_t stored = get_u32(header + 8);
    if (stored > static_cast<size_t>(out_end - out)) return bad("frame past the block");
    uint8_t* const frame_end = out + stored;
    if (flags & kFlagZstd) {
      if (!s[kHead].take(out, stored)) return bad("compressed frame cut short");
      continue;
    }
    while (out < frame_end) {
      uint64_t length = 0;
      uint8_t* const record = out;
      if (!s[kTag].take(out, 1)) return bad("record tag stream cut short");
      if (implied_span_lengths && *record == kImpliedLengthSpanTag) {
        // Format 6: a span of its fields alone, under 128 bytes; its length
        // byte is written once they are.
        *record = kSpanTag;
        uint8_t* const length_at = out++;
        if (out > frame_end) return bad("record past its frame");
        const uint8_t* const body_end = out + std::min<size_t>(0x7F, frame_end - out);
        if (!take_span(out, body_end)) return bad("span fields cut short or past the record");
        *length_at = static_cast<uint8_t>(out - length_at - 1);
        continue;
      }
      if (!s[kTag].take_varint(out, &length)) return bad("record tag stream cut short");
      if (out > frame_end || length > static_cast<size_t>(frame_end - out))
        return bad("record past its frame");
      uint8_t* const body_end = out + length;
      if (*record == kSpanTag && !take_span(out, body_end))
        return bad("span fields cut short or past the record");
      if (!s[kHead].take(out, static_cast<size_t>(body_end - out))) return bad("record cut short");
    }
    if (out != frame_end) return bad("records past their frame");
  }
  for (size_t c = 0; c < kBlockColumns; ++c)
    if (s[c].p != s[c].end) return bad("stream " + std::to_string(c) + " not used up");
  if (out != out_end) return bad("frames of another size than the block header's");
  frames.resize(size);
  return true;
}

}  // namespace inferscope::wire

// [SECTION] ColumnBuilder (column_builder.hpp)
namespace inferscope::wire {

namespace {

// decode_span_fast_with's hooks (record_codec.hpp): each field's bytes into
// its stream (kSpanFields) as the decoder reads them, as the split writes them.
struct StreamFields {
  uint8_t** at;
  uint64_t& prev_correlation;
  const uint8_t* end = nullptr;  // where the known fields end (done())

  template <size_t K>
  [[gnu::always_inline]] void field(const uint8_t* from, const uint8_t* to) {
    constexpr SpanField f = kSpanFields[K];
    uint8_t*& dst = at[f.column];
    if constexpr (f.one_byte) {
      *dst++ = *from;
    } else if constexpr (f.column == kCorrelation) {
      // unchecked_varint reads at most 10 bytes: the coder's bound holds.
      code_correlation(dst, from, static_cast<size_t>(to - from), prev_correlation);
    } else {
      std::memcpy(dst, from, 16);  // 16 bytes readable from any field (kSpanFieldsMaxBytes)
      dst += to - from;
    }
  }
  [[gnu::always_inline]] void args(const uint8_t* from, const uint8_t* to) {
    const auto n = static_cast<size_t>(to - from);
    copy_args(at[kArgs], from, n);
    at[kArgs] += n;
  }
  void done(const uint8_t* known_end) { end = known_end; }
};
static_assert(kSpanFieldCount == 11, "decode_span_fast_with reports eleven fields");

// Bytes a write may go past a stream's end: a 16-byte copy.
constexpr size_t kStreamSlack = 32;

}  // namespace

ColumnBuilder::ColumnBuilder() = default;
ColumnBuilder::~ColumnBuilder() = default;

void ColumnBuilder::reserve(size_t bytes) {
  const size_t need = bytes + kStreamSlack;
  for (size_t c = 0; c < kBlockColumns; ++c) {
    const auto used = static_cast<size_t>(at_[c] - begin_[c]);
    if (capacity_[c] - used >= need) continue;
    const size_t capacity = std::max({capacity_[c] * 2, used + need, size_t{64} << 10});
    std::unique_ptr<uint8_t[]> grown(new uint8_t[capacity]);  // uninitialized: touched as written
    if (used) std::memcpy(grown.get(), begin_[c], used);
    buffers_[c] = std::move(grown);
    capacity_[c] = capacity;
    begin_[c] = buffers_[c].get();
    at_[c] = begin_[c] + used;
  }
}

void ColumnBuilder::reset() {
  for (size_t c = 0; c < kBlockColumns; ++c) at_[c] = begin_[c];
  prev_correlation_ = 0;
  spoiled_ = false;
  frame_bytes_ = 0;
  state_ = State::kIdle;
}

void ColumnBuilder::add_frame(std::span<const uint8_t> frame) {
  frame_bytes_ += frame.size();
  if (state_ == State::kDecoding) spoiled_ = true;  // its place in the block is taken
  if (spoiled_) return;
  reserve(frame.size());
  if (!split_frames<true, true>(frame, at_, prev_correlation_)) spoiled_ = true;
}

bool ColumnBuilder::begin_decoded_frame(std::span<const uint8_t> header, size_t payload_bytes) {
  if (spoiled_ || state_ != State::kIdle || header.size() != kFrameHeaderBytes) return false;
  reserve(kFrameHeaderBytes + payload_bytes);
  for (size_t c = 0; c < kBlockColumns; ++c) mark_[c] = at_[c];
  mark_correlation_ = prev_correlation_;
  // The header as decoded for now: finish_decoded_frame() writes the stored one.
  header_at_ = static_cast<size_t>(at_[kHead] - begin_[kHead]);
  std::memcpy(at_[kHead], header.data(), kFrameHeaderBytes);
  at_[kHead] += kFrameHeaderBytes;
  payload_bytes_ = payload_bytes;
  state_ = State::kDecoding;
  return true;
}

void ColumnBuilder::abandon_frame() {
  if (state_ != State::kDecoding) return;
  for (size_t c = 0; c < kBlockColumns; ++c) at_[c] = mark_[c];
  prev_correlation_ = mark_correlation_;
  state_ = State::kAbandoned;
}

void ColumnBuilder::undo_frame() {
  abandon_frame();
  state_ = State::kIdle;
}

bool ColumnBuilder::finish_decoded_frame(std::span<const uint8_t> frame) {
  if (state_ != State::kDecoding || frame.size() != kFrameHeaderBytes + payload_bytes_) {
    undo_frame();
    return false;
  }
  std::memcpy(begin_[kHead] + header_at_, frame.data(), kFrameHeaderBytes);
  frame_bytes_ += frame.size();
  state_ = State::kIdle;
  return true;
}

bool ColumnBuilder::decode_span(const uint8_t* record, size_t head_bytes, size_t body_bytes,
                                size_t readable, int64_t& previous_ns, Record& out) {
  if (readable < kSpanFieldsMaxBytes) return false;  // nothing written: decoded the checked way
  const uint8_t* const body = record + head_bytes;
  StreamFields fields{at_, prev_correlation_};
  if (!detail::decode_span_fast_with(body, body_bytes, readable, previous_ns, out, fields))
      [[unlikely]] {
    abandon_frame();  // fields were written
    return false;
  }
  // As split_one_record: the marker alone for a span of its fields with a one-byte length.
  const uint8_t* const body_end = body + body_bytes;
  if (head_bytes == 2 && fields.end == body_end) {
    *at_[kTag]++ = kImpliedLengthSpanTag;
    return true;
  }
  std::memcpy(at_[kTag], record, head_bytes);
  at_[kTag] += head_bytes;
  if (fields.end != body_end) {
    std::memcpy(at_[kHead], fields.end, static_cast<size_t>(body_end - fields.end));
    at_[kHead] += body_end - fields.end;
  }
  return true;
}

bool ColumnBuilder::split_record(const uint8_t* record, size_t bytes, size_t readable) {
  const uint8_t* p = record;
  uint8_t *head = at_[kHead], *tag = at_[kTag];
  const bool ok = split_one_record<true, true>(p, record + bytes, record + readable, head, tag, at_,
                                               prev_correlation_) &&
                  p == record + bytes;
  at_[kHead] = head, at_[kTag] = tag;
  if (!ok) abandon_frame();
  return ok;
}

bool ColumnBuilder::take(RawBlock& block) {
  size_t total = 0;
  for (size_t c = 0; c < kBlockColumns; ++c) total += static_cast<size_t>(at_[c] - begin_[c]);
  // Coded ids may make the form larger than the frames (split_block_columns
  // then splits without coding them); a reader sizes its buffer by the frames.
  const bool ok = !spoiled_ && state_ == State::kIdle && frame_bytes_ == block.bytes.size() &&
                  total <= block.bytes.size();
  block.has_columns = ok;
  if (ok) {
    // Appended, not resized then copied into: a resize zeroes the whole form
    // (~230 KiB a block on the bench) only for the copy to overwrite it.
    block.columns.clear();
    block.columns.reserve(kBlockColumnTableBytes + total);
    uint8_t table[kBlockColumnTableBytes];
    for (size_t c = 0; c < kBlockColumns; ++c) {
      const auto size = static_cast<uint32_t>(at_[c] - begin_[c]);
      for (int i = 0; i < 4; ++i) table[4 * c + i] = static_cast<uint8_t>(size >> (8 * i));
    }
    block.columns.insert(block.columns.end(), table, table + kBlockColumnTableBytes);
    for (size_t c = 0; c < kBlockColumns; ++c)
      block.columns.insert(block.columns.end(), begin_[c], at_[c]);
  }
  reset();
  return ok;
}

}  // namespace inferscope::wire
