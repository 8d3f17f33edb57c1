// zstd over a block's column form (format 4), one frame per stream.
//
// Why: in the column form most streams are a field's varints with few repeats
// (start deltas, durations, names, ids): zstd level 1 spends most of its time
// there looking for matches it does not find, and Huffman-coding bytes that
// barely shrink. One frame per stream lets each stream be coded the way that
// pays for it (and gives each its own Huffman table, which alone makes the
// block ~12% smaller than one frame over all streams):
//
//   kMatch     zstd at the store's level (matches and Huffman-coded literals)
//   kLiterals  literals only: the match finder steps over the stream (zstd's
//              largest targetLength), literals still Huffman-coded
//   kRaw       neither: bytes as they are, in a zstd frame
//
// The coding of each stream is chosen on a probe block (the first, then every
// 64th data block): each stream is compressed as kMatch and as kLiterals;
// kLiterals is taken when it is at most 30% larger, and kRaw when it would
// still keep more than 4/5 of the stream. Summary blocks use the choice of the
// data block before them. Why those bounds (collector_bench's agent-like
// blocks, 2-core EPYC VM): per input byte, kMatch costs 2.0-2.7 ns where the
// matches are short (record tags, track ids, args), kLiterals 0.8-1.0 ns,
// kRaw 0.04 ns; Huffman on start deltas and durations (random-looking
// varints) keeps 82-84% of them. The choice depends on sizes only, so the
// same blocks are always written the same bytes.
//
// Readers are unchanged: ZSTD_decompress takes concatenated frames and returns
// their concatenation, which is the column form byte for byte.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "inferscope/wire/trace_block.hpp"

namespace inferscope::wire::detail {

inline constexpr int kColumnProbeEvery = 64;  // data blocks

enum class StreamCoding : uint8_t { kMatch, kLiterals, kRaw };

struct ColumnCodings {
  std::array<StreamCoding, kBlockColumns> coding{};  // all kMatch until the first probe
  int blocks_to_probe = 0;                           // data blocks until the next probe
};

// Bytes of dst that compress_columns may need for `bytes` of column form.
size_t column_zstd_bound(size_t bytes);

// Compresses the column form (its table then its streams) into dst as
// concatenated zstd frames; the bytes written, or 0 on a zstd error. cctx: a
// ZSTD_CCtx (its parameters are reset). probe: choose the codings again first.
size_t compress_columns(void* cctx, int level, std::span<const uint8_t> columns, bool probe,
                        ColumnCodings& codings, uint8_t* dst, size_t capacity);

}  // namespace inferscope::wire::detail
