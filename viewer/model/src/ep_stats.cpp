#include "inferscope/viewer/ep_stats.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "inferscope/collector/eplb.hpp"
#include "inferscope/collector/layer_stats.hpp"

namespace inferscope::viewer {

namespace {

// The placement (expert -> rank) and world size from the sources' hellos.
void placement_of(const TraceModel& m, std::vector<uint32_t>& expert_to_rank, uint32_t& world) {
  for (const auto& [id, src] : m.sources()) {
    if (!src.has_hello) continue;
    world = std::max(world, src.hello.world_size);
    if (expert_to_rank.empty() && !src.hello.model.expert_to_rank.empty())
      expert_to_rank = src.hello.model.expert_to_rank;
  }
}

}  // namespace

EpReport ep_report(const TraceModel& m, int64_t t0, int64_t t1, double hot_threshold, int eplb_redundant) {
  EpReport r;
  std::vector<uint32_t> expert_to_rank;
  uint32_t world = 0;
  placement_of(m, expert_to_rank, world);
  for (uint32_t e : expert_to_rank) world = std::max(world, e + 1);

  // [SECTION] expert_parallel records
  struct Pair {
    std::map<uint32_t, int64_t> compute;  // rank -> ns
  };
  std::map<std::pair<uint64_t, uint32_t>, Pair> pairs;
  std::map<uint32_t, EpRankRow> rows;
  std::map<uint32_t, std::set<uint64_t>> steps;
  std::map<uint32_t, std::map<uint32_t, uint64_t>> rows_by_layer;  // layer -> rank -> rows
  for (const auto& rec : m.ep_steps()) {
    const auto& s = rec.step;
    if (s.timestamp_ns < t0 || s.timestamp_ns > t1) continue;
    r.has_ep_records = true;
    world = std::max(world, rec.rank + 1);
    EpRankRow& row = rows[rec.rank];
    row.rank = rec.rank;
    row.rows_computed += s.rows_computed;
    row.rows_sent += s.rows_sent;
    row.dispatch_ms += static_cast<double>(s.dispatch_ns) * 1e-6;
    row.compute_ms += static_cast<double>(s.compute_ns) * 1e-6;
    row.combine_ms += static_cast<double>(s.combine_ns) * 1e-6;
    steps[rec.rank].insert(s.step);
    rows_by_layer[s.layer][rec.rank] += s.rows_computed;
    pairs[{s.step, s.layer}].compute[rec.rank] = s.compute_ns;
  }
  r.ranks = world;
  for (uint32_t k = 0; k < world; ++k) rows[k].rank = k;
  for (const auto& [key, p] : pairs) {
    if (p.compute.size() < world) continue;  // not every rank in the window
    ++r.joined;
    int64_t slowest = 0;
    uint32_t who = 0;
    for (const auto& [k, ns] : p.compute)
      if (ns > slowest) slowest = ns, who = k;
    for (const auto& [k, ns] : p.compute) rows[k].idle_ms += static_cast<double>(slowest - ns) * 1e-6;
    ++rows[who].straggler;
  }
  uint64_t all_rows = 0;
  for (auto& [k, row] : rows) all_rows += row.rows_computed;
  for (auto& [k, row] : rows) {
    const double n = static_cast<double>(std::max<size_t>(steps[k].size(), 1));
    row.steps = steps[k].size();
    row.dispatch_ms /= n;
    row.compute_ms /= n;
    row.combine_ms /= n;
    row.idle_ms /= n;
    row.rows_share = all_rows ? static_cast<double>(row.rows_computed) / static_cast<double>(all_rows) : 0.0;
    row.rows_utilization = row.rows_share * world;
  }

  // [SECTION] Expert loads under the placement, now and after EPLB
  std::map<uint32_t, std::vector<uint64_t>> layer_load;  // all ranks summed
  const auto& counts = m.expert_counts();
  for (const auto& l : m.expert_loads()) {
    if (l.timestamp_ns < t0 || l.timestamp_ns > t1) continue;
    auto& v = layer_load[l.layer];
    if (v.size() < l.experts) v.resize(l.experts, 0);
    for (uint32_t e = 0; e < l.experts; ++e) v[e] += counts[l.offset + e];
  }
  std::map<uint32_t, std::vector<double>> placement_layer_load;  // layer -> per rank
  if (!expert_to_rank.empty() && world > 0 && !layer_load.empty()) {
    r.has_placement = true;
    r.eplb_redundant = eplb_redundant < 0 ? world : static_cast<uint32_t>(eplb_redundant);
    std::vector<std::vector<uint32_t>> table;
    for (uint32_t k : expert_to_rank) table.push_back({k});
    std::vector<double> now(world, 0.0), eplb(world, 0.0);
    for (const auto& [layer, load] : layer_load) {
      auto current = collector::compute_rank_load(load, table, world);
      auto plan = collector::plan_eplb(load, world, r.eplb_redundant, &table);
      auto after = collector::compute_rank_load(load, plan.expert_to_ranks, world);
      if (current.load.empty()) continue;
      placement_layer_load[layer] = current.load;
      for (uint32_t k = 0; k < world; ++k) {
        now[k] += current.load[k];
        eplb[k] += after.load[k];
      }
    }
    auto ratio = [&](const std::vector<double>& v, double EpRankRow::*field, double& balancedness) {
      double sum = 0, mx = 0;
      for (double x : v) sum += x, mx = std::max(mx, x);
      if (sum <= 0) return;
      const double mean = sum / world;
      for (uint32_t k = 0; k < world; ++k) rows[k].*field = v[k] / mean;
      balancedness = mean / mx;
    };
    ratio(now, &EpRankRow::load_now, r.balancedness_now);
    ratio(eplb, &EpRankRow::load_eplb, r.balancedness_eplb);
  }

  // [SECTION] Hot ranks: rows computed decide, else the placement's load
  for (auto& rank_entry : rows) {
    // Not a structured binding: clang (the fuzz build) cannot capture one in a lambda.
    const auto k = rank_entry.first;
    auto& row = rank_entry.second;
    const double u = r.has_ep_records ? row.rows_utilization : row.load_now;
    if (u < hot_threshold) continue;
    EpHotRank h;
    h.rank = k;
    h.utilization = u;
    auto consider = [&](uint32_t layer, double mine, double total) {
      if (total <= 0) return;
      const double lu = mine / (total / world);
      if (lu < hot_threshold) return;
      h.layers.push_back({layer, lu});
      auto it = layer_load.find(layer);
      if (it == layer_load.end() || expert_to_rank.empty()) return;
      uint64_t layer_total = 0;
      for (uint64_t x : it->second) layer_total += x;
      std::vector<EpHotRank::Expert> on_rank;
      for (uint32_t e = 0; e < it->second.size() && e < expert_to_rank.size(); ++e)
        if (expert_to_rank[e] == k && it->second[e] > 0)
          on_rank.push_back({layer, e, static_cast<double>(it->second[e]) / static_cast<double>(layer_total)});
      std::stable_sort(on_rank.begin(), on_rank.end(), [](auto& a, auto& b) { return a.share > b.share; });
      if (on_rank.size() > 3) on_rank.resize(3);
      h.experts.insert(h.experts.end(), on_rank.begin(), on_rank.end());
    };
    if (r.has_ep_records) {
      for (const auto& [layer, by_rank] : rows_by_layer) {
        double total = 0;
        for (const auto& [kk, n] : by_rank) total += static_cast<double>(n);
        auto it = by_rank.find(k);
        consider(layer, it == by_rank.end() ? 0.0 : static_cast<double>(it->second), total);
      }
    } else {
      for (const auto& [layer, v] : placement_layer_load) {
        double total = 0;
        for (double x : v) total += x;
        consider(layer, v[k], total);
      }
    }
    std::stable_sort(h.experts.begin(), h.experts.end(), [](auto& a, auto& b) { return a.share > b.share; });
    r.hot.push_back(std::move(h));
  }
  std::sort(r.hot.begin(), r.hot.end(), [](auto& a, auto& b) { return a.utilization > b.utilization; });
  for (auto& [k, row] : rows) r.rows.push_back(row);
  return r;
}

}  // namespace inferscope::viewer
