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

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

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
// creation (64-bit), so full/empty need no flag. The producer path is two
// relaxed loads, a few stores and one release store; when the ring is full,
// write() returns false and the caller counts the drop. The high-water mark is
// measured by the consumer (drain), not on the producer path.
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
  // capacity is rounded down to a power of two, at least 64 KiB.
  explicit ByteRing(size_t capacity) {
    size_t cap = size_t{1} << 16;
    while (cap * 2 <= capacity) cap *= 2;
    capacity_ = cap;
    mask_ = cap - 1;
    data_ = std::make_unique<uint8_t[]>(cap);
  }

  size_t capacity() const { return capacity_; }
  // Largest payload a single record may carry (keeps wrap padding bounded).
  size_t max_payload() const { return capacity_ / 4; }

  // Producer only. Payload = a (alen bytes) followed by b (blen bytes).
  INFERSCOPE_FORCE_INLINE bool write(uint8_t kind, uint8_t sub, uint16_t count, const void* a,
                                     size_t alen, const void* b = nullptr, size_t blen = 0) {
    const size_t need = (sizeof(RingHeader) + alen + blen + 7) & ~size_t{7};
    if (need - sizeof(RingHeader) > max_payload()) [[unlikely]]
      return false;
    const uint64_t head = head_.load(std::memory_order_relaxed);
    const size_t pos = head & mask_;
    const size_t to_end = capacity_ - pos;
    const size_t total = need <= to_end ? need : to_end + need;
    if (head + total - cached_tail_ > capacity_) [[unlikely]] {
      cached_tail_ = tail_.load(std::memory_order_acquire);
      if (head + total - cached_tail_ > capacity_) return false;
    }
    size_t at = pos;
    if (need > to_end) [[unlikely]] {
      const RingHeader pad{static_cast<uint32_t>(to_end), kPadKind, 0, 0};
      std::memcpy(data_.get() + pos, &pad, sizeof pad);
      at = 0;
    }
    const RingHeader h{static_cast<uint32_t>(need), kind, sub, count};
    uint8_t* p = data_.get() + at;
    std::memcpy(p, &h, sizeof h);
    std::memcpy(p + sizeof h, a, alen);
    if (blen) std::memcpy(p + sizeof h + alen, b, blen);
    head_.store(head + total, std::memory_order_release);
    // Written by this thread only: a load and a store, no read-modify-write.
    written_.store(written_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
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
  size_t capacity_ = 0;
  size_t mask_ = 0;
  std::unique_ptr<uint8_t[]> data_;
  // Producer-side: its own index, its last view of the consumer's, its count.
  alignas(64) std::atomic<uint64_t> head_{0};
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
    if (request_id == 0) [[likely]] {
      const TickRange r{start, end, name_id, 0};
      put(wire::RecordKind::kSpan, kSubTicks, depth, &r, sizeof r);
    } else {
      const TickRangeRequest r{start, end, name_id, 0, request_id};
      put(wire::RecordKind::kSpan, kSubTicksRequest, depth, &r, sizeof r);
    }
  }
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
// (CUPTI loaded): off (nothing at all), fast (the inline path) or slow.
enum : uint8_t { kGateOff = 0, kGateFast = 1, kGateSlow = 2 };
struct Gate {
  std::atomic<uint8_t> mode{kGateOff};
  bool tsc = false;     // ranges store TSC ticks (else CLOCK_MONOTONIC ns)
  uint64_t serial = 0;  // matches ThreadCache::serial when this thread's ring is cached
};

}  // namespace inferscope::agent::hot
