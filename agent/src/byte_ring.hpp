// A single-producer single-consumer byte ring for variable-size records.
//
// The producer is the thread that records (the host's thread); the consumer is
// the agent's shipper thread. Each record is an 8-byte header followed by its
// payload, padded to 8 bytes. A record never wraps: when it does not fit before
// the end of the buffer, the producer writes a padding record there and starts
// again at offset 0. head_ and tail_ count bytes since creation (64-bit, they
// never overflow in practice), so full/empty need no extra flag.
//
// The producer path is two relaxed loads, a few memcpy and one release store:
// no lock, no allocation, no syscall. When the ring is full, write() returns
// false and the caller counts the drop.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

namespace inferscope::agent::detail {

struct RingHeader {
  uint32_t bytes;  // whole record including this header and padding
  uint8_t kind;    // see ring_records.hpp; kPadKind marks padding to the end
  uint8_t sub;
  uint16_t count;  // payload-specific (e.g. number of experts)
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
  bool write(uint8_t kind, uint8_t sub, uint16_t count, const void* a, size_t alen,
             const void* b = nullptr, size_t blen = 0) {
    const size_t need = (sizeof(RingHeader) + alen + blen + 7) & ~size_t{7};
    if (need - sizeof(RingHeader) > max_payload()) return false;
    const uint64_t head = head_.load(std::memory_order_relaxed);
    const size_t pos = head & mask_;
    const size_t to_end = capacity_ - pos;
    const size_t total = need <= to_end ? need : to_end + need;
    if (head + total - cached_tail_ > capacity_) {
      cached_tail_ = tail_.load(std::memory_order_acquire);
      if (head + total - cached_tail_ > capacity_) return false;
    }
    size_t at = pos;
    if (need > to_end) {
      RingHeader pad{static_cast<uint32_t>(to_end), kPadKind, 0, 0};
      std::memcpy(data_.get() + pos, &pad, sizeof pad);
      at = 0;
    }
    RingHeader h{static_cast<uint32_t>(need), kind, sub, count};
    uint8_t* p = data_.get() + at;
    std::memcpy(p, &h, sizeof h);
    std::memcpy(p + sizeof h, a, alen);
    if (blen) std::memcpy(p + sizeof h + alen, b, blen);
    head_.store(head + total, std::memory_order_release);
    const uint64_t used = head + total - cached_tail_;
    if (used > high_water_.load(std::memory_order_relaxed))
      high_water_.store(used, std::memory_order_relaxed);
    return true;
  }

  // Consumer only. Calls fn(const RingHeader&, const uint8_t* payload) for every
  // record present when called, in order; returns how many.
  template <typename Fn>
  size_t drain(Fn&& fn) {
    uint64_t tail = tail_.load(std::memory_order_relaxed);
    const uint64_t head = head_.load(std::memory_order_acquire);
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
    tail_.store(tail, std::memory_order_release);
    return n;
  }

  bool empty() const {
    return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_acquire);
  }
  uint64_t high_water() const { return high_water_.load(std::memory_order_relaxed); }

 private:
  size_t capacity_ = 0;
  size_t mask_ = 0;
  std::unique_ptr<uint8_t[]> data_;
  // Producer-side: its own index and its last view of the consumer's.
  alignas(64) std::atomic<uint64_t> head_{0};
  uint64_t cached_tail_ = 0;
  std::atomic<uint64_t> high_water_{0};
  // Consumer-side, on its own cache line so the two threads do not share one.
  alignas(64) std::atomic<uint64_t> tail_{0};
};

}  // namespace inferscope::agent::detail
