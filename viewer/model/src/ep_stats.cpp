#include "inferscope/viewer/ep_stats.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "inferscope/analysis/classify.hpp"
#include "inferscope/analysis/ep_join.hpp"
#include "inferscope/analysis/eplb.hpp"
#include "inferscope/analysis/hot_rank.hpp"
#include "inferscope/analysis/layer_stats.hpp"

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

EpReport ep_report(const TraceModel& m, int64_t t0, int64_t t1, double hot_threshold,
                   int eplb_redundant) {
  analysis::AnalysisOptions options;
  options.hot_rank_threshold = hot_threshold;
  EpReport r;
  std::vector<uint32_t> expert_to_rank;
  uint32_t world = 0;
  placement_of(m, expert_to_rank, world);
  for (uint32_t e : expert_to_rank) world = std::max(world, e + 1);
  std::vector<std::vector<uint32_t>> table;  // expert -> its one rank, from the hello
  for (uint32_t k : expert_to_rank) table.push_back({k});

  // [SECTION] expert_parallel records
  struct Pair {
    std::map<uint32_t, int64_t> compute;  // rank -> ns
  };
  std::map<std::pair<uint64_t, uint32_t>, Pair> pairs;
  std::map<uint32_t, EpRankRow> rows;
  std::map<uint32_t, std::set<uint64_t>> steps;
  std::map<uint32_t, std::map<uint32_t, uint64_t>> rows_by_layer;  // layer -> rank -> rows
  std::map<uint32_t, std::map<std::pair<uint32_t, uint32_t>, uint64_t>> traffic;  // layer -> pairs
  std::map<uint32_t, std::map<uint32_t, std::pair<int64_t, uint64_t>>> compute;   // ns, passes
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
    auto& cp = compute[s.layer][rec.rank];
    cp.first += s.compute_ns;
    ++cp.second;
    for (uint32_t d = 0; d < s.rows_to_rank.size(); ++d)
      if (s.rows_to_rank[d] > 0) traffic[s.layer][{rec.rank, d}] += s.rows_to_rank[d];
  }
  r.ranks = world;
  constexpr uint32_t kMaxMatrixRanks = 256;  // 64 K cells per layer at most
  if (world <= kMaxMatrixRanks)
    for (const auto& [layer, cells] : traffic) {
      EpTrafficLayer t;
      t.layer = layer;
      t.matrix.assign(static_cast<size_t>(world) * world, 0);
      for (const auto& [sd, n] : cells) {
        if (sd.first >= world || sd.second >= world) continue;
        t.matrix[static_cast<size_t>(sd.first) * world + sd.second] = n;
        if (sd.first != sd.second) t.max_pair = std::max(t.max_pair, n);
      }
      r.traffic.push_back(std::move(t));
    }
  for (uint32_t k = 0; k < world; ++k) rows[k].rank = k;
  for (const auto& [key, p] : pairs) {
    if (p.compute.size() < world) continue;  // not every rank in the window
    ++r.joined;
    // Every rank 0..world-1 reported (ranks seen are < world): index = rank.
    std::vector<int64_t> compute_ns;
    for (const auto& [k, ns] : p.compute) compute_ns.push_back(ns);
    const analysis::RankIdle idle = analysis::rank_idle(compute_ns);
    for (uint32_t k = 0; k < idle.idle_ns.size(); ++k)
      rows[k].idle_ms += static_cast<double>(idle.idle_ns[k]) * 1e-6;
    ++rows[idle.slowest].straggler;
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
    row.rows_share =
        all_rows ? static_cast<double>(row.rows_computed) / static_cast<double>(all_rows) : 0.0;
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
    std::vector<double> now(world, 0.0), eplb(world, 0.0);
    std::map<uint32_t, analysis::EplbPlan> plans;  // for the advisor below
    std::map<uint32_t, std::vector<int64_t>> layer_compute;
    std::vector<analysis::AdvisorLayerInput> advisor_in;
    for (const auto& [layer, load] : layer_load) {
      auto current = analysis::compute_rank_load(load, table, world);
      const auto& plan = plans[layer] = analysis::plan_eplb(load, world, r.eplb_redundant, &table);
      auto cit = compute.find(layer);
      if (cit != compute.end() && cit->second.size() == world) {
        auto& v = layer_compute[layer];
        uint64_t passes = ~0ull;
        for (const auto& [k, cp] : cit->second) {
          v.push_back(cp.first);
          passes = std::min(passes, cp.second);
        }
        advisor_in.push_back({layer, load, &table, &plan.expert_to_ranks, v, passes});
      }
      auto after = analysis::compute_rank_load(load, plan.expert_to_ranks, world);
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
    if (!advisor_in.empty()) {
      analysis::AdvisorOptions o;
      uint64_t passes = 0;
      for (const auto& in : advisor_in) passes = std::max(passes, in.passes);
      if (t1 > t0) o.steps_per_second = static_cast<double>(passes) / (double(t1 - t0) * 1e-9);
      r.advice = analysis::advise_eplb(advisor_in, world, o);
      r.has_advice = !r.advice.layers.empty();
    }
  }

  // [SECTION] Hot ranks: rows computed decide, else the placement's load
  // The per-layer loads per rank the attribution reads (analysis/hot_rank.hpp).
  std::map<uint32_t, std::vector<double>> layer_rank_load;
  if (r.has_ep_records) {
    for (const auto& [layer, by_rank] : rows_by_layer) {
      auto& v = layer_rank_load[layer];
      v.assign(world, 0.0);
      for (const auto& [k, n] : by_rank) v[k] = static_cast<double>(n);
    }
  } else {
    layer_rank_load = placement_layer_load;
  }
  std::vector<analysis::RankLayerInput> inputs;
  for (const auto& [layer, v] : layer_rank_load) {
    analysis::RankLayerInput in;
    in.layer = layer;
    in.rank_load = v;
    auto it = layer_load.find(layer);
    if (it != layer_load.end() && !table.empty()) {
      in.expert_load = it->second;
      in.placement = &table;
    }
    inputs.push_back(in);
  }
  for (const auto& [k, row] : rows) {
    const double u = r.has_ep_records ? row.rows_utilization : row.load_now;
    if (!analysis::is_hot_rank(u, options)) continue;
    analysis::HotRankCause cause = analysis::hot_rank_cause(k, inputs, options);
    EpHotRank h;
    h.rank = k;
    h.utilization = u;
    h.layers = std::move(cause.layers);
    h.experts = std::move(cause.experts);
    r.hot.push_back(std::move(h));
  }
  std::sort(r.hot.begin(), r.hot.end(),
            [](auto& a, auto& b) { return a.utilization > b.utilization; });
  for (auto& [k, row] : rows) r.rows.push_back(row);
  return r;
}

EpTrafficOverTime ep_traffic_over_time(const TraceModel& m, int64_t t0, int64_t t1, uint32_t layer,
                                       uint32_t buckets) {
  EpTrafficOverTime out;
  buckets = std::clamp<uint32_t>(buckets, 1, 1024);
  if (t1 <= t0) return out;
  constexpr uint32_t kMaxRanks = 256;  // as the matrix: 256 x 1024 cells at most
  uint32_t world = 0;
  for (const auto& rec : m.ep_steps())
    if (rec.step.layer == layer && !rec.step.rows_to_rank.empty() && rec.step.timestamp_ns >= t0 &&
        rec.step.timestamp_ns <= t1)
      world = std::max(world, rec.rank + 1);
  if (world == 0 || world > kMaxRanks) return out;
  out.layer = layer;
  out.ranks = world;
  out.buckets = buckets;
  out.t0 = t0;
  out.t1 = t1;
  out.sent.assign(static_cast<size_t>(world) * buckets, 0);
  const double span = static_cast<double>(t1 - t0);
  for (const auto& rec : m.ep_steps()) {
    const auto& s = rec.step;
    if (s.layer != layer || s.timestamp_ns < t0 || s.timestamp_ns > t1) continue;
    uint64_t off_rank = 0;
    for (uint32_t d = 0; d < s.rows_to_rank.size(); ++d)
      if (d != rec.rank) off_rank += s.rows_to_rank[d];
    const auto b = std::min<uint32_t>(
        buckets - 1,
        static_cast<uint32_t>(static_cast<double>(s.timestamp_ns - t0) / span * buckets));
    uint64_t& cell = out.sent[static_cast<size_t>(rec.rank) * buckets + b];
    cell += off_rank;
    out.max_cell = std::max(out.max_cell, cell);
  }
  return out;
}

}  // namespace inferscope::viewer
