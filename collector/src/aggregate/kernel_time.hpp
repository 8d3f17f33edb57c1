// Consumer: GPU kernel time per MoE layer (inferscope_moe_layer_gpu_seconds_total)
// from kernel spans. CUPTI kernel spans carry the enclosing range's name as the
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
  };
  CollectorMetrics& metrics_;
  const MoeRouting& routing_;
  RankTable<Rank> ranks_;
};

}  // namespace inferscope::collector
