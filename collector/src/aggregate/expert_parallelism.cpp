#include "expert_parallelism.hpp"

#include <algorithm>

#include "inferscope/analysis/eplb.hpp"

namespace inferscope::collector {

using prometheus::Labels;

ExpertParallelism::ExpertParallelism(const AggregatorOptions& options, CollectorMetrics& metrics,
                                     AlertOut alerts)
    : options_(options), metrics_(metrics), alerts_(std::move(alerts)) {}
ExpertParallelism::~ExpertParallelism() = default;

// [SECTION] Records
bool ExpertParallelism::on_record(RecordContext& ctx, const wire::Record& record,
                                  std::string& why) {
  if (const auto* load = std::get_if<wire::ExpertLoad>(&record)) return on_expert_load(ctx, *load);
  return on_step(ctx, std::get<wire::ExpertParallelStep>(record), why);
}

// After MoeRouting (which checked the record against the hello and moved the
// window clock): the load joins the all-ranks sum when there is a placement.
bool ExpertParallelism::on_expert_load(RecordContext& ctx, const wire::ExpertLoad& load) {
  const uint32_t experts = static_cast<uint32_t>(load.routed.size());
  if (experts == 0 || !ctx.model.placement || ctx.rank() == nullptr) return true;
  auto& acc = models_.at(ctx.model).placement_acc[load.layer];
  if (acc.size() < experts) acc.resize(experts, 0);
  for (uint32_t e = 0; e < experts; ++e) acc[e] += load.routed[e];
  return true;
}

bool ExpertParallelism::on_step(RecordContext& ctx, const wire::ExpertParallelStep& s,
                                std::string& why) {
  const ModelState& model = ctx.model;
  if (!model.layers.empty() &&
      (s.layer >= model.layers.size() || model.layers[s.layer].ffn != wire::FfnKind::kMoe)) {
    why = "expert_parallel for layer " + std::to_string(s.layer) +
          ", which the hello's model description does not have as a MoE layer";
    return false;
  }
  ctx.at(s.timestamp_ns);
  if (ctx.rank() == nullptr) return true;  // over the rank bound: counted there
  Model& m = models_.at(model);
  if (!m.ep) m.ep = std::make_unique<EpRanks>(options_, metrics_, model.name);
  m.ep->on_step(model.world_size, ctx.source.hello.rank, s);
  return true;
}

// [SECTION] Windows
void ExpertParallelism::close_window(ModelState& model, int64_t start_ns, int64_t end_ns) {
  if (!model.placement && models_.find(model) == nullptr) return;  // nothing to close
  Model& m = models_.at(model);
  std::vector<EpLayerWindow> ep_layers;
  std::vector<analysis::EplbPlan> plans;  // outlive ep_layers' pointers into them
  plans.reserve(m.placement_acc.size());
  if (model.placement) {
    const uint32_t ranks = model.placement->ranks;
    const uint32_t redundant = static_cast<uint32_t>(
        options_.eplb_redundant >= 0 ? std::min<int64_t>(options_.eplb_redundant, wire::kMaxExperts)
                                     : ranks);
    for (auto& [layer, acc] : m.placement_acc) {
      const auto& table = model.placement->for_layer(layer);
      analysis::RankLoad rl = analysis::compute_rank_load(acc, table, ranks);
      if (rl.balancedness <= 0.0) continue;  // idle
      // What-if: EPLB planned from this window's loads, evaluated on them.
      const analysis::EplbPlan& plan =
          plans.emplace_back(analysis::plan_eplb(acc, ranks, redundant, &table));
      analysis::RankLoad eplb = analysis::compute_rank_load(acc, plan.expert_to_ranks, ranks);
      const std::string layer_label = std::to_string(layer);
      auto& gauges = m.rank_util[layer];
      auto& eplb_gauges = m.eplb_util[layer];
      if (gauges.empty()) {
        for (uint32_t r = 0; r < ranks; ++r) {
          const Labels l{
              {"model", model.name}, {"rank", std::to_string(r)}, {"layer", layer_label}};
          gauges.push_back(&metrics_.ep_rank_utilization.Add(l));
          eplb_gauges.push_back(&metrics_.eplb_rank_utilization.Add(l));
        }
        m.balancedness[layer] =
            &metrics_.ep_balancedness.Add({{"model", model.name}, {"layer", layer_label}});
        m.eplb_balancedness[layer] =
            &metrics_.eplb_balancedness.Add({{"model", model.name}, {"layer", layer_label}});
      }
      for (uint32_t r = 0; r < gauges.size(); ++r) gauges[r]->Set(rl.utilization[r]);
      for (uint32_t r = 0; r < eplb_gauges.size(); ++r) eplb_gauges[r]->Set(eplb.utilization[r]);
      m.balancedness[layer]->Set(rl.balancedness);
      m.eplb_balancedness[layer]->Set(eplb.balancedness);
      m.last_rank_load[layer] = std::move(rl);
      m.last_eplb_load[layer] = std::move(eplb);
      ep_layers.push_back({layer, acc, &table, &m.last_rank_load[layer], &plan.expert_to_ranks});
    }
    if (!m.ep) m.ep = std::make_unique<EpRanks>(options_, metrics_, model.name);
  }
  if (m.ep) {
    std::vector<wire::AlertEpisode> alerts;
    m.ep->close_window(start_ns, end_ns, ep_layers, model.placement ? model.placement->ranks : 0,
                       alerts);
    for (auto& a : alerts) alerts_(std::move(a));
  }
  for (auto& [layer, acc] : m.placement_acc) std::fill(acc.begin(), acc.end(), 0);
}

// [SECTION] Inspection
const analysis::RankLoad* ExpertParallelism::rank_load(const ModelState& model,
                                                       uint32_t layer) const {
  const Model* m = models_.find(model);
  if (m == nullptr) return nullptr;
  auto it = m->last_rank_load.find(layer);
  return it == m->last_rank_load.end() ? nullptr : &it->second;
}

const analysis::RankLoad* ExpertParallelism::eplb_rank_load(const ModelState& model,
                                                            uint32_t layer) const {
  const Model* m = models_.find(model);
  if (m == nullptr) return nullptr;
  auto it = m->last_eplb_load.find(layer);
  return it == m->last_eplb_load.end() ? nullptr : &it->second;
}

const EpRanks* ExpertParallelism::ep_ranks(const ModelState& model) const {
  const Model* m = models_.find(model);
  return m == nullptr ? nullptr : m->ep.get();
}

}  // namespace inferscope::collector
