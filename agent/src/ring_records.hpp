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
// Spans: hot::kSubCompact (CpuSpanSlot), kSubFull (wire::Span), kSubTicks and
// kSubTicksRequest (hot::TickRange*, from ScopedRange; hot_path.hpp).
using hot::kSubCompact;
using hot::kSubFull;
using hot::kSubTicks;
using hot::kSubTicksRequest;

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

using hot::kKinds;
// One producing thread's ring and its drop counters (hot_path.hpp).
using hot::ThreadRing;

}  // namespace inferscope::agent::detail
