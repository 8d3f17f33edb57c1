// Run summary as JSON and text.
#include "inferscope/engine/summary.hpp"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "inferscope/analysis/classify.hpp"
#include "inferscope/analysis/layer_stats.hpp"

namespace inferscope::engine {
namespace {

using nlohmann::json;

json percentiles(std::vector<double> v) {
  if (v.empty()) return json{{"count", 0}};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
  };
  return json{{"count", v.size()},
              {"p50", at(0.5)},
              {"p90", at(0.9)},
              {"p99", at(0.99)},
              {"mean", std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size())}};
}

double mib(size_t b) {
  return static_cast<double>(b) / (1024.0 * 1024.0);
}

}  // namespace

// [SECTION] The summary as JSON

json make_summary(const ModelConfig& c, const MemoryFootprint& mem, const EngineStats& s,
                  const std::vector<RequestResult>& results, double wall) {
  json j;
  j["model"] = c.name;
  j["wall_seconds"] = wall;
  j["steps"] = s.steps;
  j["requests"] = {{"finished", s.requests_finished}, {"rejected", s.requests_rejected}};
  const double w = std::max(wall, 1e-9);
  j["throughput"] = {{"prefill_tokens", s.prefill_tokens},
                     {"decode_tokens", s.decode_tokens},
                     {"prefill_tokens_per_s", static_cast<double>(s.prefill_tokens) / w},
                     {"decode_tokens_per_s", static_cast<double>(s.decode_tokens) / w},
                     {"busy_fraction", static_cast<double>(s.busy_ns) / 1e9 / w}};
  std::vector<double> ttft, tpot, e2e;
  for (const auto& r : results) {
    const auto& e = r.event;
    if (e.status != RequestStatus::kOk) continue;
    e2e.push_back(static_cast<double>(e.finish_ns - e.arrival_ns) / 1e6);
    if (e.first_token_ns > 0)
      ttft.push_back(static_cast<double>(e.first_token_ns - e.arrival_ns) / 1e6);
    if (e.output_tokens > 1)
      tpot.push_back(static_cast<double>(e.finish_ns - e.first_token_ns) / 1e6 /
                     (e.output_tokens - 1));
  }
  j["latency_ms"] = {
      {"ttft", percentiles(ttft)}, {"tpot", percentiles(tpot)}, {"e2e", percentiles(e2e)}};

  // [SECTION] MoE routing per layer
  // The collector's thresholds. The summary counts over the whole run, not per
  // window, so it names every expert at or above the level a hot episode would
  // not clear on (hot_clear_threshold): the set a collector may call hot.
  const analysis::AnalysisOptions thresholds;
  json layers = json::array(), hot = json::array();
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const LayerRouting& r = s.layers[l];
    if (r.routed.empty()) continue;
    const analysis::LayerStats st = analysis::compute_layer_stats(r.routed, r.dropped);
    const uint64_t total = st.routed;
    std::vector<size_t> order(r.routed.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return r.routed[a] > r.routed[b]; });
    json top = json::array();
    for (size_t i = 0; i < std::min<size_t>(3, order.size()); ++i) {
      const double share = st.share[order[i]], utilization = st.utilization[order[i]];
      top.push_back({{"expert", order[i]}, {"share", share}, {"utilization", utilization}});
      if (total > 0 && !analysis::hot_clears(utilization, thresholds))
        hot.push_back(
            {{"layer", l}, {"expert", order[i]}, {"share", share}, {"utilization", utilization}});
    }
    const double assignments = static_cast<double>(r.tokens) * c.moe.top_k;
    layers.push_back(
        {{"layer", l},
         {"imbalance_max_over_mean", st.imbalance},
         {"mean_step_imbalance", r.steps ? r.imbalance_sum / static_cast<double>(r.steps) : 0.0},
         {"assignments", total},
         {"dropped", r.dropped},
         {"drop_rate", assignments > 0 ? static_cast<double>(r.dropped) / assignments : 0.0},
         {"rerouted", r.rerouted},
         {"top_experts", top},
         // Every expert's routed count (logical ids): drives scripts/ep-placement.
         {"routed", r.routed}});
  }
  j["moe_layers"] = layers;
  j["hot_experts"] = hot;
  j["memory_mib"] = {{"weights", mib(mem.weights)},
                     {"activations", mib(mem.activations)},
                     {"kv_cache_capacity", mib(mem.kv_cache)},
                     {"kv_cache_peak", mib(s.peak_kv_bytes)},
                     {"ssm_state_capacity", mib(mem.ssm_state)},
                     {"ssm_state_peak", mib(s.peak_ssm_bytes)},
                     {"ssm_checkpoints_capacity", mib(mem.ssm_checkpoints)},
                     {"ssm_checkpoints_peak", mib(s.peak_ckpt_bytes)}};
  auto rate = [](uint64_t hit, uint64_t q) {
    return q ? static_cast<double>(hit) / static_cast<double>(q) : 0.0;
  };
  j["prefix_cache"] = {{"attention_queried", s.attention_queried},
                       {"attention_hit", s.attention_hit},
                       {"attention_hit_rate", rate(s.attention_hit, s.attention_queried)},
                       {"ssm_queried", s.ssm_queried},
                       {"ssm_hit", s.ssm_hit},
                       {"ssm_hit_rate", rate(s.ssm_hit, s.ssm_queried)},
                       {"reused_tokens", s.reused_tokens},
                       {"checkpoints_saved", s.checkpoints_saved},
                       {"checkpoints_restored", s.checkpoints_restored},
                       {"checkpoints_evicted_unused", s.checkpoints_evicted_unused},
                       {"checkpoints_evicted_reused", s.checkpoints_evicted_reused}};
  j["stage_seconds"] = {{"encoder", static_cast<double>(s.encoder_ns) / 1e9},
                        {"connector", static_cast<double>(s.connector_ns) / 1e9},
                        {"backbone_prefill_only_steps", static_cast<double>(s.prefill_ns) / 1e9},
                        {"backbone_decode_only_steps", static_cast<double>(s.decode_ns) / 1e9},
                        {"backbone_mixed_steps", static_cast<double>(s.mixed_ns) / 1e9},
                        {"image_tokens", s.image_tokens}};
  return j;
}

// [SECTION] The same JSON as text

std::string format_summary(const json& j) {
  std::string out;
  char line[512];
  auto add = [&](const char* fmt, auto... args) {
    std::snprintf(line, sizeof line, fmt, args...);
    out += line;
  };
  const auto& t = j["throughput"];
  add("== inferscope-engine summary: model %s, %.1f s, %llu steps\n",
      j["model"].get<std::string>().c_str(), j["wall_seconds"].get<double>(),
      static_cast<unsigned long long>(j["steps"].get<uint64_t>()));
  add("requests    %llu finished, %llu rejected\n",
      static_cast<unsigned long long>(j["requests"]["finished"].get<uint64_t>()),
      static_cast<unsigned long long>(j["requests"]["rejected"].get<uint64_t>()));
  add("throughput  prefill %.1f tok/s, decode %.1f tok/s (busy %.0f%%)\n",
      t["prefill_tokens_per_s"].get<double>(), t["decode_tokens_per_s"].get<double>(),
      100.0 * t["busy_fraction"].get<double>());
  for (const char* k : {"ttft", "tpot", "e2e"}) {
    const auto& p = j["latency_ms"][k];
    if (p["count"].get<size_t>() == 0) continue;
    add("%-11s p50 %.1f ms, p90 %.1f ms, p99 %.1f ms\n", k, p["p50"].get<double>(),
        p["p90"].get<double>(), p["p99"].get<double>());
  }
  out += "moe layers  (imbalance = max/mean load; top experts with their share of assignments)\n";
  for (const auto& l : j["moe_layers"]) {
    add("  layer %2d  imbalance %.2f (per step %.2f)  dropped %llu (%.1f%%)  rerouted %llu  top:",
        l["layer"].get<int>(), l["imbalance_max_over_mean"].get<double>(),
        l["mean_step_imbalance"].get<double>(),
        static_cast<unsigned long long>(l["dropped"].get<uint64_t>()),
        100.0 * l["drop_rate"].get<double>(),
        static_cast<unsigned long long>(l["rerouted"].get<uint64_t>()));
    for (const auto& e : l["top_experts"])
      add(" e%d %.1f%%", e["expert"].get<int>(), 100.0 * e["share"].get<double>());
    out += "\n";
  }
  if (!j["hot_experts"].empty()) {
    out += "hot experts (share >= 1.5x fair):";
    for (const auto& h : j["hot_experts"])
      add(" L%d/e%d %.1f%%", h["layer"].get<int>(), h["expert"].get<int>(),
          100.0 * h["share"].get<double>());
    out += "\n";
  }
  const auto& m = j["memory_mib"];
  add("memory MiB  weights %.1f, activations %.1f, kv peak %.2f / %.2f, ssm state peak %.2f / "
      "%.2f, "
      "ssm checkpoints peak %.2f / %.2f\n",
      m["weights"].get<double>(), m["activations"].get<double>(), m["kv_cache_peak"].get<double>(),
      m["kv_cache_capacity"].get<double>(), m["ssm_state_peak"].get<double>(),
      m["ssm_state_capacity"].get<double>(), m["ssm_checkpoints_peak"].get<double>(),
      m["ssm_checkpoints_capacity"].get<double>());
  const auto& p = j["prefix_cache"];
  add("prefix     attention hit %.1f%% of %llu, ssm hit %.1f%% of %llu, reused %llu tokens, "
      "checkpoints "
      "saved %llu restored %llu, evicted %llu never restored + %llu restored\n",
      100.0 * p["attention_hit_rate"].get<double>(),
      static_cast<unsigned long long>(p["attention_queried"].get<uint64_t>()),
      100.0 * p["ssm_hit_rate"].get<double>(),
      static_cast<unsigned long long>(p["ssm_queried"].get<uint64_t>()),
      static_cast<unsigned long long>(p["reused_tokens"].get<uint64_t>()),
      static_cast<unsigned long long>(p["checkpoints_saved"].get<uint64_t>()),
      static_cast<unsigned long long>(p["checkpoints_restored"].get<uint64_t>()),
      static_cast<unsigned long long>(p["checkpoints_evicted_unused"].get<uint64_t>()),
      static_cast<unsigned long long>(p["checkpoints_evicted_reused"].get<uint64_t>()));
  const auto& s = j["stage_seconds"];
  add("stages s   encoder %.3f, connector %.3f, backbone prefill %.3f, decode %.3f, mixed %.3f\n",
      s["encoder"].get<double>(), s["connector"].get<double>(),
      s["backbone_prefill_only_steps"].get<double>(), s["backbone_decode_only_steps"].get<double>(),
      s["backbone_mixed_steps"].get<double>());
  return out;
}

}  // namespace inferscope::engine
