#include "kernel_time.hpp"

#include <algorithm>
#include <utility>

namespace inferscope::collector {

KernelTime::KernelTime(CollectorMetrics& metrics, const MoeRouting& routing)
    : metrics_(metrics), routing_(routing) {}
KernelTime::~KernelTime() = default;

void KernelTime::revalidate(const Source& source) {
  if (source.id == cached_source_ && source.strings_version == cached_version_) return;
  cached_source_ = source.id;
  cached_version_ = source.strings_version;
  key_.clear();
}

KernelTime::Key KernelTime::key_by_name(const Source& source, uint32_t id) {
  auto name = [&] {
    const std::string_view s = source.string(id);
    return s == "range" ? Key::kRange : s == "layer" ? Key::kLayer : Key::kOther;
  };
  if (id >= kCachedIds) return name();
  if (key_.size() <= id) key_.resize(id + 1, Key::kUnknown);
  if (key_[id] == Key::kUnknown) key_[id] = name();
  return key_[id];
}

bool KernelTime::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const auto& s = std::get<wire::Span>(record);
  if (s.category != wire::SpanCategory::kKernel) return true;
  revalidate(ctx.source);
  const auto duration = static_cast<uint64_t>(std::max<int64_t>(0, s.end_ns - s.start_ns));
  bool attributed = false;
  std::optional<int64_t> layer_arg;
  for (uint8_t i = 0; i < s.num_args && i < wire::kMaxSpanArgs; ++i) {
    const Key key = key_of(ctx.source, s.args[i].key_id);
    if (key == Key::kRange && s.args[i].value != 0) attributed = true;
    if (key == Key::kLayer && !layer_arg) layer_arg = s.args[i].value;
  }
  const RankState* rank = ctx.rank();
  if (rank == nullptr) return true;
  if (rank != last_rank_) {  // a RankState belongs to one model and lives as long as it
    last_counters_ = &ranks_.at(ctx.model, *rank);
    last_rank_ = rank;
  }
  Rank& counters = *last_counters_;
  prometheus::Counter*& total = counters.kernel_seconds[attributed ? 1 : 0];
  if (total == nullptr)
    total = &metrics_.gpu_kernel_seconds.Add({{"model", ctx.model.name},
                                              {"rank", rank->label},
                                              {"attributed", attributed ? "true" : "false"}});
  counters.pending_ns[attributed ? 1 : 0] += duration;
  if (!counters.dirty) {
    counters.dirty = true;
    dirty_.push_back(&counters);
  }
  if (!layer_arg || *layer_arg < 0 || *layer_arg >= int64_t{wire::kMaxLayers})
    return true;  // no layer, or not one: layer unknown
  const auto layer = static_cast<uint32_t>(*layer_arg);
  auto& by_layer = counters.gpu_seconds;
  // A layer's counter exists only once the routing had the layer, and the routing never
  // forgets one: asking it again per kernel is needed only until then.
  if (layer >= by_layer.size() || by_layer[layer] == nullptr) {
    if (!routing_.has_layer(ctx.model, *rank, layer)) return true;
    if (by_layer.size() <= layer) {
      by_layer.resize(layer + 1, nullptr);
      counters.pending_layer_ns.resize(layer + 1, 0);
    }
    by_layer[layer] = &metrics_.layer_gpu_seconds.Add(
        {{"model", ctx.model.name}, {"rank", rank->label}, {"layer", std::to_string(layer)}});
  }
  counters.pending_layer_ns[layer] += duration;
  return true;
}

void KernelTime::flush() {
  for (Rank* r : dirty_) {
    for (int a = 0; a < 2; ++a)
      if (r->pending_ns[a] != 0)
        r->kernel_seconds[a]->Increment(
            seconds(static_cast<int64_t>(std::exchange(r->pending_ns[a], 0))));
    for (size_t l = 0; l < r->pending_layer_ns.size(); ++l)
      if (r->pending_layer_ns[l] != 0)
        r->gpu_seconds[l]->Increment(
            seconds(static_cast<int64_t>(std::exchange(r->pending_layer_ns[l], 0))));
    r->dirty = false;
  }
  dirty_.clear();
}

}  // namespace inferscope::collector
