#include "kernel_time.hpp"

#include <algorithm>
#include <charconv>

namespace inferscope::collector {

std::optional<uint32_t> moe_layer_of(std::string_view range) {
  static constexpr std::string_view kMoePrefix = "moe.layer.", kLayerPrefix = "layer.";
  size_t at = 0;
  bool need_moe_suffix = false;
  if (range.starts_with(kMoePrefix)) {
    at = kMoePrefix.size();
  } else if (range.starts_with(kLayerPrefix)) {
    at = kLayerPrefix.size();
    need_moe_suffix = true;
  } else {
    return std::nullopt;
  }
  uint32_t layer = 0;
  const char* begin = range.data() + at;
  const char* end = range.data() + range.size();
  auto [ptr, ec] = std::from_chars(begin, end, layer);
  if (ec != std::errc() || ptr == begin || (ptr != end && *ptr != '.')) return std::nullopt;
  if (need_moe_suffix &&
      range.find("+moe", static_cast<size_t>(ptr - range.data())) == std::string_view::npos)
    return std::nullopt;
  if (layer >= wire::kMaxLayers) return std::nullopt;
  return layer;
}

KernelTime::KernelTime(CollectorMetrics& metrics, const MoeRouting& routing)
    : metrics_(metrics), routing_(routing) {}
KernelTime::~KernelTime() = default;

bool KernelTime::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const auto& s = std::get<wire::Span>(record);
  if (s.category != wire::SpanCategory::kKernel || s.num_args == 0) return true;
  for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
    if (ctx.source.string(s.args[i].key_id) != "range") continue;
    auto layer = moe_layer_of(ctx.source.string(static_cast<uint32_t>(s.args[i].value)));
    if (!layer) break;
    const RankState* rank = ctx.rank();
    if (rank == nullptr || !routing_.has_layer(ctx.model, *rank, *layer)) break;
    auto& counters = ranks_.at(ctx.model, *rank).gpu_seconds;
    if (counters.size() <= *layer) counters.resize(*layer + 1, nullptr);
    if (counters[*layer] == nullptr)
      counters[*layer] = &metrics_.layer_gpu_seconds.Add(
          {{"model", ctx.model.name}, {"rank", rank->label}, {"layer", std::to_string(*layer)}});
    counters[*layer]->Increment(seconds(std::max<int64_t>(0, s.end_ns - s.start_ns)));
    break;
  }
  return true;
}

}  // namespace inferscope::collector
