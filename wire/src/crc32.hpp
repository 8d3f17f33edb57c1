// CRC-32 (zlib's: the reflected 0x04C11DB7 polynomial, pre- and post-inverted),
// the checksum of frames and trace blocks.
//
// Why not zlib's crc32() alone: the collector checks every frame it receives and
// the store every block it reads, and zlib 1.2's table-driven loop (~1-2 GB/s)
// was 6% of ingest with the store on (docs/collector.md). Where the CPU has
// carry-less multiply (PCLMULQDQ, any x86-64 since 2010) the bulk is folded 64
// bytes at a time (Intel's "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ", as in Linux and Chromium's zlib), an order of magnitude faster;
// the rest, and CPUs without it, go to zlib. Same values either way.
#pragma once

#include <cstddef>
#include <cstdint>

namespace inferscope::wire::detail {

// zlib semantics: crc32_update(0, p, n) is the CRC of p[0, n); pass the
// previous result to continue over more bytes.
uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n);

}  // namespace inferscope::wire::detail
