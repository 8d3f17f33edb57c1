// Consumer: GPU kernel time per MoE layer (inferscope_moe_layer_gpu_seconds_total)
// from kernel spans, and all traced kernel time split by whether a range enclosed the
// launch (inferscope_gpu_kernel_seconds_total{attributed}): how much of the GPU time
// the ranges explain. CUPTI kernel spans carry the enclosing range's name as the
// arg "range" (an interned string id); the layer is read from that name
// ("moe.layer.12", "moe.layer.12.gate_up", "layer.12.attention+moe"), and
// counted only for layers the rank reports expert_load for.
//
// Why the name is parsed rather than a typed layer arg read: the kernel spans
// are made by the agent's CUPTI tracer, which knows only the name id on top of
// the launching thread's range stack (agent/src/cupti/cupti_tracer.cpp). A typed
// layer would need the agent's range API to carry a number per range and the
// tracer to copy it, an agent change (the agent's range path is being reworked
// for issue 22 part 1), not something the collector or the wire can add alone.
#pragma once

#include "consumer.hpp"
#include "inferscope/collector/metrics.hpp"
#include "moe_routing.hpp"

namespace inferscope::collector {

// The MoE layer a range name stands for; nullopt for any other name.
std::optional<uint32_t> moe_layer_of(std::string_view range);

class KernelTime final : public RecordConsumer {
 public:
  KernelTime(CollectorMetrics& metrics, const MoeRouting& routing);
  ~KernelTime() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;

 private:
  struct Rank {
    std::vector<prometheus::Counter*> gpu_seconds;  // by layer; created by its first kernel
    prometheus::Counter* kernel_seconds[2] = {nullptr, nullptr};  // [attributed]
  };
  // What a string id means here, cached for one source while its strings stay as
  // they are (Source::strings_version): every kernel span carries a "range" arg,
  // and looking up and parsing its name each time cost more than the rest of
  // the span's path. Only ids below kCachedIds (agents number strings from 1).
  static constexpr uint32_t kCachedIds = 4096;
  static constexpr int32_t kUnknown = -2, kNotALayer = -1;
  bool is_range_key(const Source& source, uint32_t id);
  int32_t layer_of_name(const Source& source, uint32_t id);  // kNotALayer or the layer
  void revalidate(const Source& source);

  CollectorMetrics& metrics_;
  const MoeRouting& routing_;
  RankTable<Rank> ranks_;
  uint32_t cached_source_ = 0;
  uint64_t cached_version_ = 0;
  std::vector<int8_t> key_is_range_;  // by id: -1 unknown, 0 no, 1 yes
  std::vector<int32_t> name_layer_;   // by id: kUnknown, kNotALayer or the layer
};

}  // namespace inferscope::collector
