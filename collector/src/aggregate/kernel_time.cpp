#include "kernel_time.hpp"

#include <algorithm>

namespace inferscope::collector {

KernelTime::KernelTime(CollectorMetrics& metrics, const MoeRouting& routing)
    : metrics_(metrics), routing_(routing) {}
KernelTime::~KernelTime() = default;

void KernelTime::revalidate(const Source& source) {
  if (source.id == cached_source_ && source.strings_version == cached_version_) return;
  cached_source_ = source.id;
  cached_version_ = source.strings_version;
  key_is_layer_.clear();
}

bool KernelTime::is_layer_key(const Source& source, uint32_t id) {
  if (id >= kCachedIds) return source.string(id) == "layer";
  if (key_is_layer_.size() <= id) key_is_layer_.resize(id + 1, -1);
  if (key_is_layer_[id] < 0) key_is_layer_[id] = source.string(id) == "layer" ? 1 : 0;
  return key_is_layer_[id] == 1;
}

bool KernelTime::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const auto& s = std::get<wire::Span>(record);
  if (s.category != wire::SpanCategory::kKernel || s.num_args == 0) return true;
  revalidate(ctx.source);
  for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
    if (!is_layer_key(ctx.source, s.args[i].key_id)) continue;
    const int64_t value = s.args[i].value;
    if (value < 0 || value >= int64_t{wire::kMaxLayers}) break;  // not a layer: unknown
    const auto layer = static_cast<uint32_t>(value);
    const RankState* rank = ctx.rank();
    if (rank == nullptr || !routing_.has_layer(ctx.model, *rank, layer)) break;
    auto& counters = ranks_.at(ctx.model, *rank).gpu_seconds;
    if (counters.size() <= layer) counters.resize(layer + 1, nullptr);
    if (counters[layer] == nullptr)
      counters[layer] = &metrics_.layer_gpu_seconds.Add(
          {{"model", ctx.model.name}, {"rank", rank->label}, {"layer", std::to_string(layer)}});
    counters[layer]->Increment(seconds(std::max<int64_t>(0, s.end_ns - s.start_ns)));
    break;
  }
  return true;
}

}  // namespace inferscope::collector
