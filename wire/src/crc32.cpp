// CRC-32 with carry-less multiplication where the CPU has it (crc32.hpp).
#include "crc32.hpp"

#include <zlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define INFERSCOPE_CRC_CLMUL 1
#endif

namespace inferscope::wire::detail {

namespace {

uint32_t crc32_zlib(uint32_t crc, const uint8_t* p, size_t n) {
  // zlib takes uInt lengths: feed it in pieces below 4 GiB.
  while (n > 0) {
    const size_t piece = n > (1u << 30) ? (1u << 30) : n;
    crc = static_cast<uint32_t>(crc32(crc, p, static_cast<uInt>(piece)));
    p += piece;
    n -= piece;
  }
  return crc;
}

#if INFERSCOPE_CRC_CLMUL
// Folds n bytes (n >= 64, a multiple of 16) into the CRC state `crc` (the
// inverted CRC, as the bit-reflected algorithm keeps it) and returns the new
// state. Eight 128-bit lanes are folded 128 bytes at a time where there are
// 192 bytes or more, then four lanes 64 bytes at a time, then into one lane,
// then 16 bytes at a time, then reduced to 32 bits (Barrett). The constants are
// x^(k) mod P for the fold distances, and P and its Barrett quotient, all
// bit-reflected (Intel's paper; the same as Linux's crc32-pclmul).
#define INFERSCOPE_CLMUL_TARGET __attribute__((target("pclmul,sse4.1")))

INFERSCOPE_CLMUL_TARGET inline __m128i load(const uint8_t* at) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
}

// x * k folded onto the next 16 bytes y: (x.lo * k.lo) ^ (x.hi * k.hi) ^ y.
INFERSCOPE_CLMUL_TARGET inline __m128i fold16(__m128i x, __m128i k, __m128i y) {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), y);
}

// Each of the first kLanes lanes folded onto its 16 bytes of the step at p.
template <int kLanes>
INFERSCOPE_CLMUL_TARGET inline void fold_lanes(__m128i* x, __m128i k, const uint8_t* p) {
  for (int i = 0; i < kLanes; ++i) x[i] = fold16(x[i], k, load(p + 16 * i));
}

INFERSCOPE_CLMUL_TARGET uint32_t fold(uint32_t crc, const uint8_t* p, size_t n) {
  // k1k2 folds by 512 bits (x^(512+32), x^(512-32)), k8 by 1024 (x^(1024+32),
  // x^(1024-32)), k3k4 by 128, k5 by 64.
  const __m128i k8 = _mm_set_epi64x(0x014a7fe880, 0x01e88ef372);
  const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
  const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
  const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
  const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
  // x[i]: lane i, the 16 bytes at 16 * i of each step.
  __m128i x[8];
  x[0] = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(crc)));
  for (int i = 1; i < 4; ++i) x[i] = load(p + 16 * i);
  p += 64;
  n -= 64;
  if (n >= 128) {
    // Long inputs (frames, whose checksum every collector ingest pays): eight
    // lanes, 128 bytes a step, twice the multiplies in flight of four lanes
    // (each lane's fold waits on its last multiply).
    for (int i = 4; i < 8; ++i) x[i] = load(p + 16 * (i - 4));
    p += 64;
    n -= 64;
    for (; n >= 128; p += 128, n -= 128) fold_lanes<8>(x, k8, p);
    // Eight lanes to four: each folded 512 bits onto its partner.
    for (int i = 0; i < 4; ++i) x[i] = fold16(x[i], k1k2, x[i + 4]);
  }
  for (; n >= 64; p += 64, n -= 64) fold_lanes<4>(x, k1k2, p);
  __m128i x1 = x[0];
  for (int i = 1; i < 4; ++i) x1 = fold16(x1, k3k4, x[i]);
  while (n >= 16) {
    x1 = fold16(x1, k3k4, load(p));
    p += 16;
    n -= 16;
  }
  // 128 bits to 64.
  const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
  __m128i x2b = _mm_clmulepi64_si128(x1, k3k4, 0x10);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2b);
  x2b = _mm_srli_si128(x1, 4);
  x1 = _mm_and_si128(x1, low32);
  x1 = _mm_clmulepi64_si128(x1, k5k0, 0x00);
  x1 = _mm_xor_si128(x1, x2b);
  // Barrett reduction to 32 bits.
  x2b = _mm_and_si128(x1, low32);
  x2b = _mm_clmulepi64_si128(x2b, poly, 0x10);
  x2b = _mm_and_si128(x2b, low32);
  x2b = _mm_clmulepi64_si128(x2b, poly, 0x00);
  x1 = _mm_xor_si128(x1, x2b);
  return static_cast<uint32_t>(_mm_extract_epi32(x1, 1));
}

bool has_clmul() {
  static const bool yes = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return yes;
}
#endif

}  // namespace

uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
#if INFERSCOPE_CRC_CLMUL
  if (n >= 64 && has_clmul()) {
    const size_t bulk = n & ~size_t{15};
    crc = ~fold(~crc, p, bulk);
    p += bulk;
    n -= bulk;
  }
#endif
  return n > 0 ? crc32_zlib(crc, p, n) : crc;
}

}  // namespace inferscope::wire::detail
