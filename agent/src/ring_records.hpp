// What the hot path stores in a thread's ring, and how the shipper turns it
// back into wire records. Most wire records are trivially copyable and are
// stored as they are; CPU spans and expert loads get compact layouts (a CPU
// span needs no args or GPU fields; an expert load's counts follow its header).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "byte_ring.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::agent::detail {

// The ring header's kind is the wire::RecordKind; sub distinguishes layouts.
inline constexpr uint8_t kSubCompact = 0;  // CpuSpanSlot / ExpertLoadSlot
inline constexpr uint8_t kSubFull = 1;     // a whole wire::Span (GPU spans from CUPTI)

struct CpuSpanSlot {
  int64_t start_ns;
  int64_t end_ns;
  uint64_t request_id;
  uint32_t name_id;
  uint32_t tid;
  uint16_t depth;
  uint8_t category;
};

struct ExpertLoadSlot {
  uint64_t step;
  int64_t timestamp_ns;
  uint32_t layer;
  uint32_t tokens;
  uint32_t dropped;
  uint32_t rerouted;
};

// ExpertParallelStep's fixed fields; its rows_to_rank (count = the header's
// count) follows as uint32s.
struct EpStepSlot {
  uint64_t step;
  int64_t timestamp_ns;
  int64_t dispatch_ns, compute_ns, combine_ns;
  uint32_t layer;
  uint32_t rows_sent, rows_computed, row_bytes;
};

static_assert(std::is_trivially_copyable_v<wire::Span>);
static_assert(std::is_trivially_copyable_v<wire::MemorySample>);
static_assert(std::is_trivially_copyable_v<wire::PrefixCacheSample>);
static_assert(std::is_trivially_copyable_v<wire::StageTiming>);
static_assert(std::is_trivially_copyable_v<wire::RequestEvent>);
static_assert(std::is_trivially_copyable_v<wire::CounterSample>);

inline constexpr size_t kKinds = wire::kRecordKindSlots;  // per-kind counters, as in AgentHealth

// One producing thread's ring plus its counters. Counters are written only by
// the owning thread (load + store, no read-modify-write) and read by the shipper.
struct ThreadRing {
  explicit ThreadRing(size_t bytes) : ring(bytes) {}

  ByteRing ring;
  std::atomic<uint32_t> tid{0};
  std::atomic<bool> exited{false};  // its thread is gone; reusable once drained
  std::array<std::atomic<uint64_t>, kKinds> recorded{};
  std::array<std::atomic<uint64_t>, kKinds> dropped{};

  static void bump(std::atomic<uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  bool put(wire::RecordKind kind, uint8_t sub, uint16_t count, const void* a, size_t alen,
           const void* b = nullptr, size_t blen = 0) {
    const auto k = static_cast<size_t>(kind);
    if (ring.write(static_cast<uint8_t>(kind), sub, count, a, alen, b, blen)) {
      bump(recorded[k]);
      return true;
    }
    bump(dropped[k]);
    return false;
  }
};

}  // namespace inferscope::agent::detail
