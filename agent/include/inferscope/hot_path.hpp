// The agent's per-record fast path, inline in the host's own code (Tracy's
// way): a range open + close is two clock reads, a thread-local load and a
// store into this thread's ring. Everything else (registering a thread,
// sampling, NVTX, CUPTI, counting a thread with no ring) is out of line in the
// library. Included by agent.hpp; not an API to call directly.
//
// These names are exported from libinferscope_agent.so on purpose (namespace
// hot, not detail): inline code compiled into the host reads the thread cache
// and writes the ring, so they are part of the ABI of a given version.
//
// [SECTION] Clock      raw TSC ticks (or CLOCK_MONOTONIC ns where the TSC is unusable)
// [SECTION] ByteRing   the SPSC ring a thread writes and the shipper drains
// [SECTION] ThreadRing a ring plus the counters the shipper reads
// [SECTION] Thread cache and gate
#pragma once

#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define INFERSCOPE_HAVE_TSC 1
#endif

#include "inferscope/export.h"
#include "inferscope/wire/records.hpp"

// The range fast path is inlined into every call site even where the
// compiler's size heuristics would rather call it (Tracy does the same).
#if defined(__GNUC__) || defined(__clang__)
#define INFERSCOPE_FORCE_INLINE inline __attribute__((always_inline))
#else
#define INFERSCOPE_FORCE_INLINE inline
#endif

namespace inferscope::agent::hot {

// [SECTION] Clock
// What the host thread stores: TSC ticks when the process-wide clock choice is
// the TSC (invariant, calibrated; see agent/src/clock/), else CLOCK_MONOTONIC
// ns. The shipper turns ticks into CLOCK_MONOTONIC ns before encoding, so the
// wire format never sees a tick.
INFERSCOPE_FORCE_INLINE int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

INFERSCOPE_FORCE_INLINE uint64_t read_clock(bool tsc) {
#ifdef INFERSCOPE_HAVE_TSC
  // Plain rdtsc, not rdtscp or a fenced read: like Tracy, a range's edges may
  // move by a few cycles of out-of-order execution, which is far below what a
  // range measures and costs nothing.
  if (tsc) return __rdtsc();
#else
  (void)tsc;
#endif
  return static_cast<uint64_t>(monotonic_ns());
}

// [SECTION] ByteRing
// A single-producer single-consumer byte ring for variable-size records. The
// producer is the host thread that records; the consumer is the shipper. Each
// record is an 8-byte header and a payload, padded to 8 bytes. A record never
// wraps: when it does not fit before the end, the producer writes a padding
// record there and starts again at offset 0. head_ and tail_ count bytes since
// creation (64-bit), so full/empty need no flag.
//
// The producer's inline path is one compare against limit_, the furthest head_
// may advance without looking at anything else (the consumer's tail as last
// seen plus the capacity, and the end of the buffer: so a record that passes
// fits and does not wrap), the stores, and one release store. Everything else
// (the end of the buffer, a tail to re-read, a full ring, an oversized record)
// is write_slow(), out of line. When the ring is full the record is refused
// and the caller counts the drop. The high-water mark is measured by the
// consumer (drain), not on the producer path.
struct RingHeader {
  uint32_t bytes;  // whole record including this header and padding
  uint8_t kind;    // wire::RecordKind; kPadKind marks padding to the end
  uint8_t sub;     // layout (agent/src/ring_records.hpp)
  uint16_t count;  // payload-specific (e.g. number of experts, a range's depth)
};
static_assert(sizeof(RingHeader) == 8);

inline constexpr uint8_t kPadKind = 0xff;

class ByteRing {
 public:
  // Records up to this size take the inline path; any ring holds four of them
  // (a payload may be up to a quarter of the capacity, at least 64 KiB).
  static constexpr size_t kInlineRecordMax = 4096;

  // capacity is rounded down to a power of two, at least 64 KiB.
  explicit ByteRing(size_t capacity) {
    size_t cap = size_t{1} << 16;
    while (cap * 2 <= capacity) cap *= 2;
    capacity_ = cap;
    mask_ = cap - 1;
    data_ = std::make_unique<uint8_t[]>(cap);
    limit_ = cap;
  }

  size_t capacity() const { return capacity_; }
  // Largest payload a single record may carry (keeps wrap padding bounded).
  size_t max_payload() const { return capacity_ / 4; }

  // Producer only. Payload = a (alen bytes) followed by b (blen bytes).
  INFERSCOPE_FORCE_INLINE bool write(uint8_t kind, uint8_t sub, uint16_t count, const void* a,
                                     size_t alen, const void* b = nullptr, size_t blen = 0) {
    const size_t need = (sizeof(RingHeader) + alen + blen + 7) & ~size_t{7};
    const RingHeader h{static_cast<uint32_t>(need), kind, sub, count};
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (need > kInlineRecordMax || head + need > limit_) [[unlikely]]
      return write_slow(h, a, alen, b, blen);
    uint8_t* p = data_.get() + (head & mask_);
    std::memcpy(p, &h, sizeof h);
    std::memcpy(p + sizeof h, a, alen);
    if (blen) std::memcpy(p + sizeof h + alen, b, blen);
    publish(head + need);
    return true;
  }

  // The header as the 8-byte word it is in the ring (little-endian targets only: the inline
  // paths are built for x86-64 and AArch64), so a constant kind and size leave one shift and
  // an or for the count.
  static constexpr uint64_t header_word(uint32_t bytes, uint8_t kind, uint8_t sub, uint16_t count) {
    static_assert(std::endian::native == std::endian::little);
    return uint64_t{bytes} | uint64_t{kind} << 32 | uint64_t{sub} << 40 | uint64_t{count} << 48;
  }

  // Producer only. A record of a few payload words: the whole write is a compare and one
  // 8-byte store per word and for the header (what a range is on the inline path). The words
  // go as arguments, not an array, so they stay in registers.
  template <typename... Words>
  INFERSCOPE_FORCE_INLINE bool write_words(uint8_t kind, uint8_t sub, uint16_t count,
                                           Words... words) {
    static_assert((std::is_same_v<Words, uint64_t> && ...));
    constexpr size_t need = 8 * (sizeof...(Words) + 1);
    static_assert(need <= kInlineRecordMax);
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (head + need > limit_) [[unlikely]] {
      const uint64_t payload[] = {words...};
      return write_slow(RingHeader{static_cast<uint32_t>(need), kind, sub, count}, payload,
                        sizeof payload, nullptr, 0);
    }
    uint8_t* p = data_.get() + (head & mask_);
    const uint64_t h = header_word(static_cast<uint32_t>(need), kind, sub, count);
    std::memcpy(p, &h, 8);
    size_t at = 8;
    ((std::memcpy(p + at, &words, 8), at += 8), ...);
    publish(head + need);
    return true;
  }

  // Consumer only. Calls fn(const RingHeader&, const uint8_t* payload) for every
  // record present when called, in order; returns how many.
  template <typename Fn>
  size_t drain(Fn&& fn) {
    const uint64_t start = tail_.load(std::memory_order_relaxed);
    const uint64_t head = head_.load(std::memory_order_acquire);
    uint64_t tail = start;
    size_t n = 0;
    while (tail < head) {
      const uint8_t* p = data_.get() + (tail & mask_);
      RingHeader h;
      std::memcpy(&h, p, sizeof h);
      if (h.kind != kPadKind) {
        fn(h, p + sizeof h);
        ++n;
      }
      tail += h.bytes;
    }
    // The fill level only grows between two drains, so just before this one
    // frees space it is at its peak since the last: that is the high water.
    const uint64_t used = head_.load(std::memory_order_relaxed) - start;
    if (used > high_water_.load(std::memory_order_relaxed))
      high_water_.store(used, std::memory_order_relaxed);
    tail_.store(tail, std::memory_order_release);
    return n;
  }

  bool empty() const {
    return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire);
  }
  // Highest fill level seen by drain(), in bytes (at most capacity()).
  uint64_t high_water() const { return high_water_.load(std::memory_order_relaxed); }
  // Records accepted since creation.
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }

 private:
  INFERSCOPE_FORCE_INLINE void publish(uint64_t head) {
    head_.store(head, std::memory_order_release);
    // Written by this thread only: a load and a store, no read-modify-write.
    written_.store(written_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // Producer only: everything the inline path leaves out. Out of line (and in
  // the host's binary, as a weak function) so the inline path stays small.
  [[gnu::noinline, gnu::cold]] bool write_slow(RingHeader h, const void* a, size_t alen,
                                               const void* b, size_t blen) {
    const size_t need = h.bytes;
    if (need - sizeof(RingHeader) > max_payload()) return false;
    const uint64_t head = head_.load(std::memory_order_relaxed);
    const size_t pos = head & mask_;
    const size_t to_end = capacity_ - pos;
    const size_t total = need <= to_end ? need : to_end + need;
    if (head + total - cached_tail_ > capacity_) {
      cached_tail_ = tail_.load(std::memory_order_acquire);
      if (head + total - cached_tail_ > capacity_) {
        set_limit(head);
        return false;
      }
    }
    size_t at = pos;
    if (need > to_end) {
      const RingHeader pad{static_cast<uint32_t>(to_end), kPadKind, 0, 0};
      std::memcpy(data_.get() + pos, &pad, sizeof pad);
      at = 0;
    }
    uint8_t* p = data_.get() + at;
    std::memcpy(p, &h, sizeof h);
    std::memcpy(p + sizeof h, a, alen);
    if (blen) std::memcpy(p + sizeof h + alen, b, blen);
    publish(head + total);
    set_limit(head + total);
    return true;
  }
  // limit_ for a producer at head: the space the last-seen tail leaves, and at most the end of
  // the buffer (the start of head's next lap).
  void set_limit(uint64_t head) {
    const uint64_t lap_end = (head & ~uint64_t{mask_}) + capacity_;
    limit_ = std::min<uint64_t>(cached_tail_ + capacity_, lap_end);
  }

  size_t capacity_ = 0;
  size_t mask_ = 0;
  std::unique_ptr<uint8_t[]> data_;
  // Producer-side: its own index, how far it may go, its last view of the consumer's, its count.
  alignas(64) std::atomic<uint64_t> head_{0};
  uint64_t limit_ = 0;
  uint64_t cached_tail_ = 0;
  std::atomic<uint64_t> written_{0};
  // Consumer-side, on its own cache line so the two threads do not share one.
  alignas(64) std::atomic<uint64_t> tail_{0};
  std::atomic<uint64_t> high_water_{0};
};

// [SECTION] ThreadRing
inline constexpr size_t kKinds = wire::kRecordKindSlots;  // per-kind counters, as in AgentHealth

// Span layouts in the ring (RingHeader::sub for wire::RecordKind::kSpan).
inline constexpr uint8_t kSubCompact = 0;       // CpuSpanSlot (ns from Agent::span)
inline constexpr uint8_t kSubFull = 1;          // a whole wire::Span (GPU spans from CUPTI)
inline constexpr uint8_t kSubTicks = 2;         // TickRange: a ScopedRange, clock ticks
inline constexpr uint8_t kSubTicksRequest = 3;  // TickRange + request id

// A ScopedRange as stored: 24 bytes + the 8-byte header = 32 per range (40
// with a request id). The thread id is the ring's, the category is
// kCpuRange and the depth rides in the header's count.
struct TickRange {
  uint64_t start;
  uint64_t end;
  uint32_t name_id;
  uint32_t reserved;
};
struct TickRangeRequest {
  uint64_t start;
  uint64_t end;
  uint32_t name_id;
  uint32_t reserved;
  uint64_t request_id;
};
// put_range writes them as words: start, end, name_id (+ the reserved zero), request_id.
static_assert(sizeof(TickRange) == 24 && offsetof(TickRange, name_id) == 16);
static_assert(sizeof(TickRangeRequest) == 32 && offsetof(TickRangeRequest, request_id) == 24);

// One producing thread's ring plus its drop counters. Counters are written
// only by the owning thread (load + store) and read by the shipper.
struct ThreadRing {
  explicit ThreadRing(size_t bytes) : ring(bytes) {}

  ByteRing ring;
  std::atomic<uint32_t> tid{0};
  std::atomic<bool> exited{false};  // its thread is gone; reusable once drained
  std::array<std::atomic<uint64_t>, kKinds> dropped{};

  static void bump(std::atomic<uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  INFERSCOPE_FORCE_INLINE bool put(wire::RecordKind kind, uint8_t sub, uint16_t count,
                                   const void* a, size_t alen, const void* b = nullptr,
                                   size_t blen = 0) {
    if (ring.write(static_cast<uint8_t>(kind), sub, count, a, alen, b, blen)) [[likely]]
      return true;
    bump(dropped[static_cast<size_t>(kind)]);
    return false;
  }

  INFERSCOPE_FORCE_INLINE void put_range(uint64_t start, uint64_t end, uint32_t name_id,
                                         uint64_t request_id, uint16_t depth) {
    // The words of TickRange / TickRangeRequest (name_id, then the reserved zero).
    bool kept;
    if (request_id == 0) [[likely]]
      kept = ring.write_words(kSpanKind, kSubTicks, depth, start, end, uint64_t{name_id});
    else
      kept = ring.write_words(kSpanKind, kSubTicksRequest, depth, start, end, uint64_t{name_id},
                              request_id);
    if (!kept) [[unlikely]]
      bump(dropped[kSpanKind]);
  }

 private:
  static constexpr uint8_t kSpanKind = static_cast<uint8_t>(wire::RecordKind::kSpan);
};

// [SECTION] Thread cache and gate
// The calling thread's ring for the agent it last recorded into (serial), and
// its range depth. Trivial and constant-initialized, so reading it is one
// %fs-relative load, with no TLS init wrapper.
struct ThreadCache {
  uint64_t serial;   // Agent::Impl::serial of `ring`'s agent; 0: none
  ThreadRing* ring;  // never null when serial != 0
  uint16_t depth;    // open ScopedRanges on this thread (all agents)
};
INFERSCOPE_API extern constinit thread_local ThreadCache tl_thread;

// What a ScopedRange has to do on this agent, re-published whenever it changes
// (CUPTI loaded): off (nothing at all), fast (the inline path, reading
// CLOCK_MONOTONIC or the TSC) or slow. The fast modes have bit 0 set and the
// TSC one bit 1 too, so one byte load tells the inline path both.
enum : uint8_t { kGateOff = 0, kGateFast = 1, kGateSlow = 2, kGateFastTsc = 3 };
inline constexpr uint8_t kGateFastBit = 1, kGateTscBit = 2;
struct Gate {
  std::atomic<uint8_t> mode{kGateOff};
  bool tsc = false;     // ranges store TSC ticks (else CLOCK_MONOTONIC ns)
  uint64_t serial = 0;  // matches ThreadCache::serial when this thread's ring is cached
};

}  // namespace inferscope::agent::hot
