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

void KernelTime::revalidate(const Source& source) {
  if (source.id == cached_source_ && source.strings_version == cached_version_) return;
  cached_source_ = source.id;
  cached_version_ = source.strings_version;
  key_is_range_.clear();
  name_layer_.clear();
}

bool KernelTime::is_range_key(const Source& source, uint32_t id) {
  if (id >= kCachedIds) return source.string(id) == "range";
  if (key_is_range_.size() <= id) key_is_range_.resize(id + 1, -1);
  if (key_is_range_[id] < 0) key_is_range_[id] = source.string(id) == "range" ? 1 : 0;
  return key_is_range_[id] == 1;
}

int32_t KernelTime::layer_of_name(const Source& source, uint32_t id) {
  auto parse = [&] {
    auto layer = moe_layer_of(source.string(id));
    return layer ? static_cast<int32_t>(*layer) : kNotALayer;  // layers < kMaxLayers
  };
  if (id >= kCachedIds) return parse();
  if (name_layer_.size() <= id) name_layer_.resize(id + 1, kUnknown);
  if (name_layer_[id] == kUnknown) name_layer_[id] = parse();
  return name_layer_[id];
}

bool KernelTime::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const auto& s = std::get<wire::Span>(record);
  if (s.category != wire::SpanCategory::kKernel) return true;
  revalidate(ctx.source);
  const double duration = seconds(std::max<int64_t>(0, s.end_ns - s.start_ns));
  bool attributed = false;
  for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
    if (is_range_key(ctx.source, s.args[i].key_id) && s.args[i].value != 0) attributed = true;
  }
  if (const RankState* rank = ctx.rank()) {
    prometheus::Counter*& total = ranks_.at(ctx.model, *rank).kernel_seconds[attributed ? 1 : 0];
    if (total == nullptr)
      total = &metrics_.gpu_kernel_seconds.Add({{"model", ctx.model.name},
                                                {"rank", rank->label},
                                                {"attributed", attributed ? "true" : "false"}});
    total->Increment(duration);
  }
  if (!attributed) return true;
  for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
    if (!is_range_key(ctx.source, s.args[i].key_id)) continue;
    const int32_t found = layer_of_name(ctx.source, static_cast<uint32_t>(s.args[i].value));
    if (found == kNotALayer) break;
    const std::optional<uint32_t> layer = static_cast<uint32_t>(found);
    const RankState* rank = ctx.rank();
    if (rank == nullptr || !routing_.has_layer(ctx.model, *rank, *layer)) break;
    auto& counters = ranks_.at(ctx.model, *rank).gpu_seconds;
    if (counters.size() <= *layer) counters.resize(*layer + 1, nullptr);
    if (counters[*layer] == nullptr)
      counters[*layer] = &metrics_.layer_gpu_seconds.Add(
          {{"model", ctx.model.name}, {"rank", rank->label}, {"layer", std::to_string(*layer)}});
    counters[*layer]->Increment(duration);
    break;
  }
  return true;
}

}  // namespace inferscope::collector
