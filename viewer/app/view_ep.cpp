// EP ranks view: for the analysis window, per expert-parallel rank, its share
// of the rows computed, a stacked bar of dispatch / expert compute / combine /
// idle milliseconds per step, the hot ranks with their layers and the experts
// responsible, and each rank's load now vs after an EPLB-style re-placement.
#include <imgui.h>

#include <algorithm>
#include <cstdio>

#include "app.hpp"
#include "inferscope/viewer/ep_stats.hpp"

namespace inferscope::viewer {

namespace {

// The same layer's off-rank traffic over the window: one row per sender rank, one
// column per time slice, the hot rank's row outlined as in the matrix above.
void draw_traffic_over_time(AppState& s, int64_t t0, int64_t t1, uint32_t layer) {
  constexpr uint32_t kSlices = 60;
  // Recomputed only when the data, the window or the layer changed (it scans every EP record).
  static struct {
    uint64_t generation = UINT64_MAX;
    int64_t t0 = 0, t1 = 0;
    uint32_t layer = 0;
    EpTrafficOverTime strip;
  } cache;
  if (cache.generation != s.model.generation() || cache.t0 != t0 || cache.t1 != t1 ||
      cache.layer != layer) {
    cache.generation = s.model.generation();
    cache.t0 = t0;
    cache.t1 = t1;
    cache.layer = layer;
    cache.strip = ep_traffic_over_time(s.model, t0, t1, layer, kSlices);
  }
  const EpTrafficOverTime& t = cache.strip;
  if (t.ranks == 0 || t.max_cell == 0) return;
  ImGui::Text("Off-rank rows sent over time, layer %u (%u slices of %s)", layer, t.buckets,
              format_duration(double(t1 - t0) / t.buckets).c_str());
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const float w = std::max(120.0f, ImGui::GetContentRegionAvail().x - 50 * s.scale);
  const float cw = w / float(t.buckets);
  const float ch = std::clamp(160.0f * s.scale / float(t.ranks), 2.0f, 14.0f * s.scale);
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  const ImVec2 o(p0.x + 40 * s.scale, p0.y);
  for (uint32_t r = 0; r < t.ranks; ++r) {
    for (uint32_t b = 0; b < t.buckets; ++b) {
      const uint64_t v = t.sent[size_t(r) * t.buckets + b];
      const float f = float(double(v) / double(t.max_cell));
      const uint32_t red = uint32_t(40 + 215 * f), green = uint32_t(40 + 120 * f);
      const ImVec2 a(o.x + b * cw, o.y + r * ch), c(a.x + cw - 0.5f, a.y + ch - 1);
      dl->AddRectFilled(a, c, 0xFF000000u | (30u << 16) | (green << 8) | red);
      if (ImGui::IsMouseHoveringRect(a, c))
        ImGui::SetTooltip(
            "rank %u, %s .. %s: %llu rows to other ranks", r,
            format_time(double(t0 + int64_t(b * (t1 - t0) / t.buckets) - s.model.min_ns())).c_str(),
            format_time(double(t0 + int64_t((b + 1) * (t1 - t0) / t.buckets) - s.model.min_ns()))
                .c_str(),
            (unsigned long long)v);
    }
    if (t.ranks <= 32) {
      char lbl[16];
      std::snprintf(lbl, sizeof lbl, "%u", r);
      dl->AddText(ImVec2(p0.x, o.y + r * ch - 2), s.pal.text_dim, lbl);
    }
  }
  if (s.ep_hot_rank >= 0 && uint32_t(s.ep_hot_rank) < t.ranks)
    dl->AddRect(ImVec2(o.x - 1, o.y + s.ep_hot_rank * ch - 1),
                ImVec2(o.x + t.buckets * cw, o.y + (s.ep_hot_rank + 1) * ch), 0xFF4060F0, 0, 0,
                2.0f);
  ImGui::Dummy(ImVec2(40 * s.scale + w, t.ranks * ch + 2));
  ImGui::TextDisabled("row: sender rank · left to right: the window · brighter: more rows sent");
}

}  // namespace
namespace {

struct Cache {
  uint64_t generation = ~0ull;
  int64_t t0 = 0, t1 = 0;
  EpReport report;
};
Cache g_cache;

// Phase colours (ABGR): dispatch, compute, combine, idle.
constexpr uint32_t kPhase[4] = {0xFFE0A040, 0xFF50B050, 0xFF40A0E0, 0xFF5050E0};
const char* kPhaseName[4] = {"dispatch", "expert compute", "combine",
                             "idle (waiting for the slowest)"};

void legend(AppState& s) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  for (int i = 0; i < 4; ++i) {
    ImVec2 p = ImGui::GetCursorScreenPos();
    float h = ImGui::GetTextLineHeight();
    dl->AddRectFilled(ImVec2(p.x, p.y + h * 0.2f), ImVec2(p.x + h * 0.8f, p.y + h), kPhase[i]);
    ImGui::Dummy(ImVec2(h, h));
    ImGui::SameLine();
    ImGui::TextUnformatted(kPhaseName[i]);
    if (i < 3) ImGui::SameLine(0, 14 * s.scale);
  }
}

}  // namespace

void draw_ep(AppState& s) {
  const TraceModel& m = s.model;
  const int64_t t0 = s.analysis_t0(), t1 = s.analysis_t1();
  if (g_cache.generation != m.generation() || g_cache.t0 != t0 || g_cache.t1 != t1) {
    g_cache.generation = m.generation();
    g_cache.t0 = t0;
    g_cache.t1 = t1;
    g_cache.report = ep_report(m, t0, t1);
  }
  const EpReport& r = g_cache.report;
  s.ep_hot_rank = r.hot.empty() ? -1 : static_cast<int>(r.hot[0].rank);
  for (float& v : s.facts.ep_idle_bar) v = -1;
  for (float& v : s.facts.ep_hot_row) v = -1;
  ImGui::TextDisabled("window %s .. %s", format_time(double(t0 - m.min_ns())).c_str(),
                      format_time(double(t1 - m.min_ns())).c_str());
  if (r.ranks == 0 || (!r.has_ep_records && !r.has_placement)) {
    ImGui::TextDisabled(
        "No expert-parallel data in this window (expert_parallel records or a placement).");
    return;
  }
  ImGui::SameLine();
  ImGui::TextDisabled("· %u ranks · %llu joined (step, layer) pairs", r.ranks,
                      (unsigned long long)r.joined);

  // [SECTION] Per rank: rows share and time per step, stacked.
  double max_ms = 0;
  for (const auto& row : r.rows)
    max_ms = std::max(max_ms, row.dispatch_ms + row.compute_ms + row.combine_ms + row.idle_ms);
  if (r.has_ep_records) {
    legend(s);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const float label_w = 190 * s.scale, bar_h = ImGui::GetTextLineHeight() * 1.2f;
    const float bar_w =
        std::max(100.0f, ImGui::GetContentRegionAvail().x - label_w - 150 * s.scale);
    for (const auto& row : r.rows) {
      bool hot = std::any_of(r.hot.begin(), r.hot.end(),
                             [&](const EpHotRank& h) { return h.rank == row.rank; });
      ImGui::TextColored(
          hot ? ImVec4(1.0f, 0.45f, 0.3f, 1) : ImGui::GetStyle().Colors[ImGuiCol_Text],
          "rank %u  rows %5.1f%% (%.2fx)", row.rank, row.rows_share * 100, row.rows_utilization);
      ImGui::SameLine(label_w);
      ImVec2 p = ImGui::GetCursorScreenPos();
      dl->AddRectFilled(p, ImVec2(p.x + bar_w, p.y + bar_h), s.pal.lane_bg);
      const double parts[4] = {row.dispatch_ms, row.compute_ms, row.combine_ms - row.idle_ms,
                               row.idle_ms};
      // Idle is spent inside combine: draw combine without it, then idle.
      float x = p.x;
      for (int i = 0; i < 4; ++i) {
        float w = max_ms > 0 ? float(std::max(0.0, parts[i]) / max_ms) * bar_w : 0;
        dl->AddRectFilled(ImVec2(x, p.y), ImVec2(x + w, p.y + bar_h), kPhase[i]);
        if (i == 3 && !hot && w > 4 && s.facts.ep_idle_bar[0] < 0) {
          s.facts.ep_idle_bar[0] = x;
          s.facts.ep_idle_bar[1] = p.y;
          s.facts.ep_idle_bar[2] = x + w;
          s.facts.ep_idle_bar[3] = p.y + bar_h;
        }
        x += w;
      }
      ImGui::Dummy(ImVec2(bar_w, bar_h));
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip(
            "rank %u, per step (all MoE layers):\ndispatch %.3f ms\nexpert compute %.3f "
            "ms\ncombine %.3f ms, "
            "of which idle %.3f ms\nslowest in %llu (step, layer) pairs\nrows computed %llu, sent "
            "%llu",
            row.rank, row.dispatch_ms, row.compute_ms, row.combine_ms, row.idle_ms,
            (unsigned long long)row.straggler, (unsigned long long)row.rows_computed,
            (unsigned long long)row.rows_sent);
      ImGui::SameLine();
      ImGui::Text("%.2f ms/step, idle %.2f", row.dispatch_ms + row.compute_ms + row.combine_ms,
                  row.idle_ms);
    }
  }

  // [SECTION] Hot ranks and who is responsible.
  ImGui::Separator();
  if (r.hot.empty()) {
    ImGui::TextDisabled("No hot rank in this window (threshold 1.25x the mean rank).");
  } else {
    for (const auto& h : r.hot) {
      ImGui::TextColored(ImVec4(1.0f, 0.45f, 0.3f, 1), "Hot rank %u: %.2fx the mean rank's %s",
                         h.rank, h.utilization, r.has_ep_records ? "rows" : "placement load");
      std::string layers;
      for (const auto& l : h.layers) {
        char b[48];
        std::snprintf(b, sizeof b, "%s%u (%.2fx)", layers.empty() ? "" : ", ", l.layer,
                      l.utilization);
        layers += b;
      }
      ImGui::Text("  layers: %s", layers.empty() ? "-" : layers.c_str());
      std::string experts;
      for (size_t i = 0; i < h.experts.size() && i < 6; ++i) {
        char b[64];
        std::snprintf(b, sizeof b, "%sL%u/E%u %.1f%%", experts.empty() ? "" : ", ",
                      h.experts[i].layer, h.experts[i].expert, h.experts[i].share * 100);
        experts += b;
      }
      ImGui::Text("  experts responsible: %s",
                  experts.empty() ? "- (no placement)" : experts.c_str());
    }
  }

  // [SECTION] Dispatch traffic: rank x rank heatmap of one MoE layer.
  if (!r.traffic.empty()) {
    ImGui::Separator();
    static int layer_idx = 0;
    layer_idx = std::clamp(layer_idx, 0, int(r.traffic.size()) - 1);
    const EpTrafficLayer& t = r.traffic[size_t(layer_idx)];
    ImGui::Text(
        "Dispatch traffic, layer %u (rows src -> dst in the window; combine is the transpose)",
        t.layer);
    if (r.traffic.size() > 1) {
      ImGui::SameLine();
      ImGui::SetNextItemWidth(160 * s.scale);
      ImGui::SliderInt("##ep_traffic_layer", &layer_idx, 0, int(r.traffic.size()) - 1,
                       "MoE layer #%d");
    }
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const uint32_t n = r.ranks;
    const float cell =
        std::clamp((ImGui::GetContentRegionAvail().x - 60 * s.scale) / float(std::max(n, 1u)), 3.0f,
                   28.0f * s.scale);
    const ImVec2 p0 = ImGui::GetCursorScreenPos();
    const ImVec2 o(p0.x + 40 * s.scale, p0.y);
    for (uint32_t src = 0; src < n; ++src) {
      for (uint32_t dst = 0; dst < n; ++dst) {
        const uint64_t v = t.matrix[size_t(src) * n + dst];
        const ImVec2 a(o.x + dst * cell, o.y + src * cell), b(a.x + cell - 1, a.y + cell - 1);
        uint32_t col = 0xFF404040;  // the diagonal: kept local, not traffic
        if (src != dst) {
          const float f = t.max_pair ? float(double(v) / double(t.max_pair)) : 0.0f;
          const uint32_t red = uint32_t(40 + 215 * f), green = uint32_t(40 + 120 * f);
          col = 0xFF000000u | (30u << 16) | (green << 8) | red;
        }
        dl->AddRectFilled(a, b, col);
        if (ImGui::IsMouseHoveringRect(a, b))
          ImGui::SetTooltip("rank %u -> rank %u: %llu rows%s", src, dst, (unsigned long long)v,
                            src == dst ? " (kept local)" : "");
      }
      if (n <= 64) {
        char lbl[16];
        std::snprintf(lbl, sizeof lbl, "%u", src);
        dl->AddText(ImVec2(p0.x, o.y + src * cell), s.pal.text_dim, lbl);
      }
    }
    // The hot rank's row (what it sends) is outlined.
    if (s.ep_hot_rank >= 0 && uint32_t(s.ep_hot_rank) < n) {
      const ImVec2 a(o.x - 1, o.y + s.ep_hot_rank * cell - 1),
          b(o.x + n * cell, o.y + (s.ep_hot_rank + 1) * cell);
      dl->AddRect(a, b, 0xFF4060F0, 0, 0, 2.0f);
      s.facts.ep_hot_row[0] = a.x;
      s.facts.ep_hot_row[1] = a.y;
      s.facts.ep_hot_row[2] = b.x;
      s.facts.ep_hot_row[3] = b.y;
    }
    ImGui::Dummy(ImVec2(40 * s.scale + n * cell, n * cell + 2));
    ImGui::TextDisabled(
        "row: sender · column: receiver · brighter: more rows · grey: kept local · outlined: hot "
        "rank");
    draw_traffic_over_time(s, t0, t1, t.layer);
  }

  // [SECTION] EPLB advisor: what a re-placement would save per step.
  if (r.has_advice) {
    ImGui::Separator();
    ImGui::Text(
        "EPLB advisor: a re-placement saves ~%.3f ms per step (straggler expert compute vs "
        "predicted)",
        r.advice.saving_ns_per_step * 1e-6);
    for (const auto& l : r.advice.layers)
      if (l.saving_ns > 0)
        ImGui::Text("  layer %u: straggler %.3f ms, mean %.3f, after %.3f; idle %.3f -> %.3f ms",
                    l.layer, l.straggler_ns * 1e-6, l.mean_ns * 1e-6, l.after_ns * 1e-6,
                    l.idle_now_ns * 1e-6, l.idle_after_ns * 1e-6);
    ImGui::TextDisabled(
        "%u expert replicas would move; cost and break-even: the collector's gauges "
        "(--eplb-expert-bytes)",
        r.advice.experts_moved);
  }

  // [SECTION] Load per rank: now vs after an EPLB re-placement.
  if (!r.has_placement) return;
  ImGui::Separator();
  ImGui::Text(
      "Rank load (expert loads under the placement): now balancedness %.2f, after EPLB (+%u "
      "redundant) %.2f",
      r.balancedness_now, r.eplb_redundant, r.balancedness_eplb);
  ImDrawList* dl = ImGui::GetWindowDrawList();
  double vmax = 1.0;
  for (const auto& row : r.rows) vmax = std::max({vmax, row.load_now, row.load_eplb});
  const float h_bar = ImGui::GetTextLineHeight() * 0.8f;
  const float w_max = std::max(80.0f, ImGui::GetContentRegionAvail().x - 260 * s.scale);
  for (const auto& row : r.rows) {
    ImGui::Text("rank %u", row.rank);
    ImGui::SameLine(70 * s.scale);
    ImVec2 p = ImGui::GetCursorScreenPos();
    float a = float(row.load_now / vmax) * w_max, b = float(row.load_eplb / vmax) * w_max;
    dl->AddRectFilled(p, ImVec2(p.x + a, p.y + h_bar),
                      row.load_now >= 1.25 ? 0xFF4060F0 : 0xFF909090);
    dl->AddRectFilled(ImVec2(p.x, p.y + h_bar + 1), ImVec2(p.x + b, p.y + 2 * h_bar + 1),
                      0xFF50B050);
    float fair = float(1.0 / vmax) * w_max;
    dl->AddLine(ImVec2(p.x + fair, p.y - 2), ImVec2(p.x + fair, p.y + 2 * h_bar + 3),
                s.pal.text_dim);
    ImGui::Dummy(ImVec2(w_max, 2 * h_bar + 2));
    ImGui::SameLine();
    ImGui::Text("now %.2fx  EPLB %.2fx", row.load_now, row.load_eplb);
  }
  ImGui::TextDisabled("grey/red: now · green: after EPLB · line: fair share");
}

}  // namespace inferscope::viewer
