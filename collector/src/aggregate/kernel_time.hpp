// Consumer: GPU kernel time from kernel spans.
//  * inferscope_gpu_kernel_seconds_total{attributed}: all traced kernel time, split by whether
//    a range of the host enclosed the launch (the span carries a non-zero "range" arg): how
//    much of the GPU time the ranges explain.
//  * inferscope_moe_layer_gpu_seconds_total: per MoE layer. A kernel launched inside a range
//    that stands for a model layer carries the typed arg "layer" = that layer (the agent adds
//    it for range names the host tied to a layer with intern_layer; the reference engine does
//    for its "layer.<n>.<mixer>+<ffn>" ranges). It is counted only for layers the rank reports
//    expert_load for (its MoE layers).
//
// Kernel spans without the "layer" arg (agents from before it, hosts that do not tie their
// ranges to layers) count as layer unknown: in no layer's series. The range's name is not
// parsed for a number, so a name that merely looks like a layer is never guessed into one.
//
// Spans add integer nanoseconds to plain per-rank totals; flush() adds them to the
// prometheus counters (an atomic compare-exchange each, ~4 ns per span when done per span).
// The pipeline flushes at the end of every frame, so a scrape sees every frame applied
// before it; the sum in integers is exact, with one rounding to seconds per flush.
#pragma once

#include "consumer.hpp"
#include "inferscope/collector/metrics.hpp"
#include "moe_routing.hpp"

namespace inferscope::collector {

class KernelTime final : public RecordConsumer {
 public:
  KernelTime(CollectorMetrics& metrics, const MoeRouting& routing);
  ~KernelTime() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;
  // Adds the time counted since the last flush to the counters.
  void flush();

 private:
  struct Rank {
    std::vector<prometheus::Counter*> gpu_seconds;  // by layer; made by its first kernel
    std::vector<uint64_t> pending_layer_ns;         // by layer: not yet in gpu_seconds
    prometheus::Counter* kernel_seconds[2] = {nullptr, nullptr};  // [attributed]
    uint64_t pending_ns[2] = {0, 0};                              // not yet in kernel_seconds
    bool dirty = false;                                           // in dirty_
  };
  // What an arg key's string id names ("range", "layer" or another key), cached for one
  // source while its strings stay as they are (Source::strings_version): every attributed
  // kernel span carries args, and looking each key up by name cost more than the rest of the
  // span's path. Only ids below kCachedIds (agents number strings from 1).
  enum class Key : int8_t { kUnknown = -1, kOther = 0, kRange = 1, kLayer = 2 };
  static constexpr uint32_t kCachedIds = 4096;
  Key key_of(const Source& source, uint32_t id) {  // inline: the cached case is one load
    if (id < key_.size() && key_[id] != Key::kUnknown) return key_[id];
    return key_by_name(source, id);
  }
  Key key_by_name(const Source& source, uint32_t id);
  void revalidate(const Source& source);

  CollectorMetrics& metrics_;
  const MoeRouting& routing_;
  RankTable<Rank> ranks_;
  std::vector<Rank*> dirty_;  // ranks with pending time (bounded by the rank bound)
  // The last kernel's rank and its counters: a frame's kernels share one rank.
  const RankState* last_rank_ = nullptr;
  Rank* last_counters_ = nullptr;
  uint32_t cached_source_ = 0;
  uint64_t cached_version_ = 0;
  std::vector<Key> key_;  // by id
};

}  // namespace inferscope::collector
