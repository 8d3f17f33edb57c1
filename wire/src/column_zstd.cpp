// zstd over the column form, one frame per stream, each coded as pays (column_zstd.hpp).
#include "column_zstd.hpp"

#include <algorithm>

#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_c_literalCompressionMode
#include <zstd.h>

namespace inferscope::wire::detail {

namespace {

// Streams shorter than this keep kMatch and share a frame with their
// neighbours: a frame costs a few bytes and a context reset, and small streams
// (frame headers, one-byte fields) are where matches pay anyway.
constexpr size_t kMinFrameBytes = 4096;

// Sets cctx for one coding; false when this zstd refuses a parameter (then the
// caller uses kMatch, which any zstd takes).
bool set_coding(ZSTD_CCtx* cctx, int level, StreamCoding coding) {
  ZSTD_CCtx_reset(cctx, ZSTD_reset_parameters);
  switch (coding) {
    case StreamCoding::kMatch:
      return !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level));
    case StreamCoding::kLiterals: {
      // The fast strategy steps ahead by targetLength: at its largest, the
      // match finder looks at a few positions of the stream. zstd turns
      // literal compression off with a targetLength; it is turned back on.
      const int step = ZSTD_cParam_getBounds(ZSTD_c_targetLength).upperBound;
      return !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 1)) &&
             !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_strategy, ZSTD_fast)) &&
             !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_targetLength, step)) &&
             !ZSTD_isError(
                 ZSTD_CCtx_setParameter(cctx, ZSTD_c_literalCompressionMode, ZSTD_ps_enable));
    }
    case StreamCoding::kRaw:
      // The fastest negative level: no match search to speak of, literals stored.
      return !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, ZSTD_minCLevel()));
  }
  return false;
}

size_t compress_one(ZSTD_CCtx* cctx, int level, StreamCoding coding, std::span<const uint8_t> in,
                    uint8_t* dst, size_t capacity) {
  if (!set_coding(cctx, level, coding) && !set_coding(cctx, level, StreamCoding::kMatch)) return 0;
  const size_t n = ZSTD_compress2(cctx, dst, capacity, in.data(), in.size());
  return ZSTD_isError(n) ? 0 : n;
}

// Compresses one stream both ways into scratch space at dst and picks its coding.
StreamCoding probe_stream(ZSTD_CCtx* cctx, int level, std::span<const uint8_t> stream, uint8_t* dst,
                          size_t capacity) {
  if (stream.size() < kMinFrameBytes) return StreamCoding::kMatch;
  const size_t match = compress_one(cctx, level, StreamCoding::kMatch, stream, dst, capacity);
  // Huffman codes take at least a bit a byte: where matches shrink the stream
  // more than tenfold, literals alone cannot come within 30% (and trying is
  // slow on long repetitive streams). Such streams keep kMatch untried.
  if (match != 0 && match * 10 <= stream.size()) return StreamCoding::kMatch;
  const size_t literals = compress_one(cctx, level, StreamCoding::kLiterals, stream, dst, capacity);
  // Literals alone cost about half of what matches do per input byte (the
  // header says why): worth up to a quarter byte more on disk per input byte,
  // or 30% more than the matches leave.
  if (match == 0 || literals == 0 ||
      (literals * 10 > match * 13 && (literals - std::min(literals, match)) * 4 > stream.size()))
    return StreamCoding::kMatch;
  return literals * 5 > stream.size() * 4 ? StreamCoding::kRaw : StreamCoding::kLiterals;
}

}  // namespace

size_t column_zstd_bound(size_t bytes) {
  // Per frame, ZSTD_compressBound adds at most 64 bytes over its share of the whole.
  return ZSTD_compressBound(bytes) + kBlockColumns * 64;
}

size_t compress_columns(void* cctx_ptr, int level, std::span<const uint8_t> columns, bool probe,
                        ColumnCodings& codings, uint8_t* dst, size_t capacity) {
  auto* cctx = static_cast<ZSTD_CCtx*>(cctx_ptr);
  if (columns.size() < kBlockColumnTableBytes) return 0;
  // Stream k's bytes; stream 0 starts with the table (the frames cover the form exactly).
  std::array<std::span<const uint8_t>, kBlockColumns> streams;
  size_t at = 0;
  for (size_t k = 0; k < kBlockColumns; ++k) {
    const uint8_t* p = columns.data() + 4 * k;
    const size_t n = (k == 0 ? kBlockColumnTableBytes : 0) +
                     (size_t{p[0]} | size_t{p[1]} << 8 | size_t{p[2]} << 16 | size_t{p[3]} << 24);
    if (n > columns.size() - at) return 0;
    streams[k] = columns.subspan(at, n);
    at += n;
  }
  if (at != columns.size()) return 0;
  if (probe)
    for (size_t k = 0; k < kBlockColumns; ++k)
      codings.coding[k] = probe_stream(cctx, level, streams[k], dst, capacity);
  // Frames: consecutive streams of one coding share a frame until it holds kMinFrameBytes.
  size_t written = 0;
  size_t from = 0;  // first stream of the frame being gathered
  for (size_t k = 1; k <= kBlockColumns; ++k) {
    const size_t gathered =
        static_cast<size_t>(streams[k - 1].data() + streams[k - 1].size() - streams[from].data());
    if (k < kBlockColumns && gathered < kMinFrameBytes && codings.coding[k] == codings.coding[from])
      continue;
    // (All streams of a frame have one coding; empty ones add nothing to the concatenation.)
    if (gathered > 0) {
      const size_t n =
          compress_one(cctx, level, codings.coding[from], {streams[from].data(), gathered},
                       dst + written, capacity - written);
      if (n == 0) return 0;
      written += n;
    }
    from = k;
  }
  return written;
}

}  // namespace inferscope::wire::detail
