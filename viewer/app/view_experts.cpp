// Expert load view: layer x expert heatmap for the analysis window, colour
// legend, hot experts outlined, per-layer imbalance beside, the selected
// expert's share over time, and the load per EP rank under the placement.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "app.hpp"

namespace inferscope::viewer {
namespace {

struct Cache {
  uint64_t generation = ~0ull;
  int64_t t0 = 0, t1 = 0;
  uint32_t rank = 0;
  Heatmap heat;
  std::vector<analysis::RankLoad> ranks;  // per heat.layers entry
};
Cache g_cache;

void rank_combo(AppState& s) {
  std::vector<uint32_t> ranks;
  for (const auto& [id, src] : s.model.sources())
    if (src.has_hello) ranks.push_back(src.hello.rank);
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  std::string cur =
      s.rank_filter == kAllRanks ? "all ranks" : "rank " + std::to_string(s.rank_filter);
  ImGui::SetNextItemWidth(110 * s.scale);
  if (ImGui::BeginCombo("##rank", cur.c_str())) {
    if (ImGui::Selectable("all ranks", s.rank_filter == kAllRanks)) s.rank_filter = kAllRanks;
    for (uint32_t r : ranks)
      if (ImGui::Selectable(("rank " + std::to_string(r)).c_str(), s.rank_filter == r))
        s.rank_filter = r;
    ImGui::EndCombo();
  }
}

}  // namespace

void draw_experts(AppState& s) {
  const TraceModel& m = s.model;
  int64_t t0 = s.analysis_t0(), t1 = s.analysis_t1();
  if (g_cache.generation != m.generation() || g_cache.t0 != t0 || g_cache.t1 != t1 ||
      g_cache.rank != s.rank_filter) {
    g_cache.generation = m.generation();
    g_cache.t0 = t0;
    g_cache.t1 = t1;
    g_cache.rank = s.rank_filter;
    g_cache.heat = expert_heatmap(m, t0, t1, s.rank_filter);
    const wire::ModelDescription* md = m.model_description();
    g_cache.ranks =
        md ? rank_loads(g_cache.heat, md->expert_to_rank) : std::vector<analysis::RankLoad>{};
  }
  const Heatmap& h = g_cache.heat;

  rank_combo(s);
  ImGui::SameLine();
  ImGui::Checkbox("utilization (share x experts)", &s.show_utilization);
  ImGui::SameLine();
  ImGui::TextDisabled("window %s .. %s%s", format_time(double(t0 - m.min_ns())).c_str(),
                      format_time(double(t1 - m.min_ns())).c_str(),
                      s.window_pinned ? " (pinned; Esc in timeline clears)"
                                      : " (= timeline view; shift+right-drag pins)");
  if (h.layers.empty()) {
    ImGui::TextDisabled("no expert-load records in this window");
    return;
  }

  // [SECTION] Geometry: cells fill the width left after labels, imbalance bars and legend.
  ImDrawList* dl = ImGui::GetWindowDrawList();
  ImVec2 p = ImGui::GetCursorScreenPos();
  ImVec2 avail = ImGui::GetContentRegionAvail();
  const float label_w = 64 * s.scale, imb_w = 120 * s.scale, legend_w = 70 * s.scale;
  const float top = 18 * s.scale;
  const int rows = static_cast<int>(h.layers.size());
  const int cols = static_cast<int>(h.experts);
  const bool has_series = s.selected_layer >= 0;
  float grid_h_avail = avail.y * (has_series ? 0.62f : 0.92f) - top;
  float cell_w = std::clamp((avail.x - label_w - imb_w - legend_w - 20 * s.scale) / cols, 4.0f,
                            48.0f * s.scale);
  float cell_h = std::clamp(grid_h_avail / rows, 6.0f, 34.0f * s.scale);
  const float gx = p.x + label_w, gy = p.y + top;
  const float gw = cell_w * cols, gh = cell_h * rows;

  // Colour scale: utilization 0 .. max (at least 2x fair) or share 0 .. max share.
  double vmax = 0;
  for (const HeatmapLayer& l : h.layers)
    for (size_t e = 0; e < l.assignments.size(); ++e)
      vmax = std::max(vmax, s.show_utilization ? l.utilization(e) : l.share(e));
  if (s.show_utilization) vmax = std::max(vmax, 2.0);
  if (vmax <= 0) vmax = 1;

  // Column labels every few experts.
  int every = std::max(1, static_cast<int>(std::ceil(24 * s.scale / cell_w)));
  for (int e = 0; e < cols; e += every) {
    char b[16];
    std::snprintf(b, sizeof(b), "%d", e);
    dl->AddText(ImVec2(gx + e * cell_w + 2, p.y), s.pal.text_dim, b);
  }
  ImGuiIO& io = ImGui::GetIO();
  int hover_l = -1, hover_e = -1;
  s.facts.hot_cell[0] = -1;
  s.facts.selected_cell[0] = -1;
  const wire::ModelDescription* md = m.model_description();
  for (int r = 0; r < rows; ++r) {
    const HeatmapLayer& l = h.layers[static_cast<size_t>(r)];
    float y0 = gy + r * cell_h;
    char b[48];
    const char* mixer =
        md && l.layer < md->layers.size() && md->layers[l.layer].mixer == wire::LayerKind::kSsm
            ? "ssm"
            : "attn";
    std::snprintf(b, sizeof(b), "L%u %s", l.layer, mixer);
    dl->AddText(ImVec2(p.x, y0 + (cell_h - ImGui::GetFontSize()) * 0.5f), s.pal.text, b);
    for (int e = 0; e < static_cast<int>(l.assignments.size()); ++e) {
      double v = s.show_utilization ? l.utilization(static_cast<size_t>(e))
                                    : l.share(static_cast<size_t>(e));
      ImU32 c = heat_colour(v / vmax);
      ImVec2 a(gx + e * cell_w, y0), bb(gx + (e + 1) * cell_w - 1, y0 + cell_h - 1);
      dl->AddRectFilled(a, bb, c);
      if (io.MousePos.x >= a.x && io.MousePos.x < bb.x + 1 && io.MousePos.y >= a.y &&
          io.MousePos.y < bb.y + 1 && ImGui::IsWindowHovered()) {
        hover_l = r;
        hover_e = e;
      }
    }
    // Outlines after fills so neighbours do not cover them.
    for (int e = 0; e < static_cast<int>(l.assignments.size()); ++e) {
      ImVec2 a(gx + e * cell_w, y0), bb(gx + (e + 1) * cell_w - 1, y0 + cell_h - 1);
      if (l.hot[static_cast<size_t>(e)]) {
        dl->AddRect(ImVec2(a.x - 1, a.y - 1), ImVec2(bb.x + 1, bb.y + 1), s.pal.hot_outline, 0, 0,
                    2.5f * s.scale);
        if (s.facts.hot_cell[0] < 0) {
          s.facts.hot_cell[0] = a.x + 4 * s.scale;
          s.facts.hot_cell[1] = a.y + 4 * s.scale;
          s.facts.hot_cell[2] = bb.x - 4 * s.scale;
          s.facts.hot_cell[3] = bb.y - 4 * s.scale;
          double v = s.show_utilization ? l.utilization(static_cast<size_t>(e))
                                        : l.share(static_cast<size_t>(e));
          s.facts.hot_cell_colour = heat_colour(v / vmax);
        }
      }
      if (static_cast<int>(l.layer) == s.selected_layer && e == s.selected_expert) {
        dl->AddRect(ImVec2(a.x - 2, a.y - 2), ImVec2(bb.x + 2, bb.y + 2), s.pal.selection, 0, 0,
                    2.0f);
        const float inset = 4 * s.scale;  // inside the outlines
        s.facts.selected_cell[0] = a.x + inset;
        s.facts.selected_cell[1] = a.y + inset;
        s.facts.selected_cell[2] = bb.x - inset;
        s.facts.selected_cell[3] = bb.y - inset;
      }
    }
    // Imbalance (max / mean) beside the row; 1.0 is perfectly balanced.
    float bx = gx + gw + 10 * s.scale;
    float frac = static_cast<float>(std::min(1.0, (l.imbalance - 1.0) / 4.0));
    dl->AddRectFilled(ImVec2(bx, y0 + cell_h * 0.2f),
                      ImVec2(bx + imb_w * 0.45f, y0 + cell_h * 0.8f), s.pal.lane_bg_alt);
    dl->AddRectFilled(ImVec2(bx, y0 + cell_h * 0.2f),
                      ImVec2(bx + imb_w * 0.45f * std::max(0.02f, frac), y0 + cell_h * 0.8f),
                      heat_colour(0.35 + 0.65 * frac));
    std::snprintf(b, sizeof(b), "%.2fx", l.imbalance);
    dl->AddText(ImVec2(bx + imb_w * 0.5f, y0 + (cell_h - ImGui::GetFontSize()) * 0.5f), s.pal.text,
                b);
  }
  dl->AddText(ImVec2(gx + gw + 10 * s.scale, p.y), s.pal.text_dim, "imbalance");

  // [SECTION] Legend
  float lx = gx + gw + imb_w + 16 * s.scale, ly0 = gy, ly1 = gy + std::max(gh, 80.0f * s.scale);
  const int steps = 48;
  for (int i = 0; i < steps; ++i) {
    float a = ly1 - (ly1 - ly0) * (i + 1) / steps, b = ly1 - (ly1 - ly0) * i / steps;
    dl->AddRectFilled(ImVec2(lx, a), ImVec2(lx + 14 * s.scale, b + 1),
                      heat_colour((i + 0.5) / steps));
  }
  s.facts.legend_top_colour = heat_colour(1.0);
  char lb[32];
  std::snprintf(lb, sizeof(lb), s.show_utilization ? "%.1fx" : "%.0f%%",
                s.show_utilization ? vmax : vmax * 100);
  dl->AddText(ImVec2(lx + 18 * s.scale, ly0 - 2), s.pal.text, lb);
  if (s.show_utilization) {
    float fy = ly1 - (ly1 - ly0) * static_cast<float>(1.0 / vmax);
    dl->AddLine(ImVec2(lx - 3, fy), ImVec2(lx + 17 * s.scale, fy), s.pal.text, 1.5f);
    dl->AddText(ImVec2(lx + 18 * s.scale, fy - ImGui::GetFontSize() * 0.5f), s.pal.text_dim,
                "1x fair");
  }
  dl->AddText(ImVec2(lx + 18 * s.scale, ly1 - ImGui::GetFontSize()), s.pal.text,
              s.show_utilization ? "0x" : "0%");

  ImGui::Dummy(ImVec2(avail.x, top + std::max(gh, ly1 - gy) + 6 * s.scale));
  if (hover_l >= 0) {
    const HeatmapLayer& l = h.layers[static_cast<size_t>(hover_l)];
    ImGui::BeginTooltip();
    ImGui::Text("layer %u expert %d%s", l.layer, hover_e,
                l.hot[static_cast<size_t>(hover_e)] ? "  HOT" : "");
    ImGui::Text("share %.2f%% of %llu assignments", l.share(static_cast<size_t>(hover_e)) * 100,
                static_cast<unsigned long long>(l.total));
    ImGui::Text("utilization %.2fx fair share", l.utilization(static_cast<size_t>(hover_e)));
    if (md && static_cast<size_t>(hover_e) < md->expert_to_rank.size())
      ImGui::Text("placed on EP rank %u", md->expert_to_rank[static_cast<size_t>(hover_e)]);
    ImGui::TextDisabled("click: plot share over time");
    ImGui::EndTooltip();
    if (ImGui::IsMouseClicked(0)) {
      s.selected_layer = static_cast<int>(l.layer);
      s.selected_expert = hover_e;
    }
  }

  // [SECTION] Selected expert's share over the whole trace.
  if (s.selected_layer >= 0 && s.selected_expert >= 0) {
    Series series = expert_share_series(m, static_cast<uint32_t>(s.selected_layer),
                                        static_cast<uint32_t>(s.selected_expert), m.min_ns(),
                                        m.max_ns(), 200, s.rank_filter);
    ImGui::Text("layer %d expert %d: share of the layer's assignments over time", s.selected_layer,
                s.selected_expert);
    ImGui::SameLine();
    if (ImGui::SmallButton("close")) s.selected_layer = s.selected_expert = -1;
    ImVec2 q = ImGui::GetCursorScreenPos();
    ImVec2 sz(ImGui::GetContentRegionAvail().x - 4,
              std::max(60.0f * s.scale, ImGui::GetContentRegionAvail().y - 10 * s.scale));
    if (!g_cache.ranks.empty()) sz.x *= 0.62f;
    dl->AddRectFilled(q, ImVec2(q.x + sz.x, q.y + sz.y), s.pal.lane_bg);
    double smax = 0;
    for (double v : series.v)
      if (!std::isnan(v)) smax = std::max(smax, v);
    smax = std::max(smax * 1.15, 2.0 / std::max<uint32_t>(1, h.experts));
    double total_s = double(m.max_ns() - m.min_ns()) * 1e-9;
    auto PX = [&](double ts) {
      return q.x + static_cast<float>(ts / std::max(1e-9, total_s)) * sz.x;
    };
    auto PY = [&](double v) { return q.y + sz.y - static_cast<float>(v / smax) * (sz.y - 4); };
    float wx0 = PX(s.rel_s(t0)), wx1 = PX(s.rel_s(t1));
    dl->AddRectFilled(ImVec2(wx0, q.y), ImVec2(std::max(wx0 + 1, wx1), q.y + sz.y),
                      s.pal.window_shade);
    double fair = 1.0 / std::max<uint32_t>(1, h.experts);
    dl->AddLine(ImVec2(q.x, PY(fair)), ImVec2(q.x + sz.x, PY(fair)), s.pal.text_dim, 1.0f);
    dl->AddText(ImVec2(q.x + 4, PY(fair) - ImGui::GetFontSize()), s.pal.text_dim, "fair share");
    for (size_t i = 1; i < series.v.size(); ++i) {
      if (std::isnan(series.v[i - 1]) || std::isnan(series.v[i])) continue;
      dl->AddLine(ImVec2(PX(series.t[i - 1]), PY(series.v[i - 1])),
                  ImVec2(PX(series.t[i]), PY(series.v[i])), heat_colour(0.85), 2.0f);
    }
    char yl[32];
    std::snprintf(yl, sizeof(yl), "%.0f%%", smax * 100);
    dl->AddText(ImVec2(q.x + 4, q.y + 2), s.pal.text_dim, yl);
    ImGui::Dummy(sz);
    if (!g_cache.ranks.empty()) ImGui::SameLine();
  } else if (!g_cache.ranks.empty()) {
    ImGui::TextDisabled("click a cell to plot that expert's share over time");
  }

  // [SECTION] Load per EP rank under the placement (share of each layer's assignments).
  if (!g_cache.ranks.empty()) {
    const std::vector<analysis::RankLoad>& rl = g_cache.ranks;
    const auto ranks = static_cast<uint32_t>(rl.front().load.size());
    ImGui::BeginGroup();
    ImGui::TextUnformatted("per EP rank (placement)");
    ImVec2 q = ImGui::GetCursorScreenPos();
    float cw = std::clamp((ImGui::GetContentRegionAvail().x - 50 * s.scale) / ranks, 10.0f,
                          60.0f * s.scale);
    float ch = std::clamp((ImGui::GetContentRegionAvail().y - 10) / float(rl.size()), 6.0f,
                          26.0f * s.scale);
    for (size_t r = 0; r < rl.size(); ++r) {
      char b[16];
      std::snprintf(b, sizeof(b), "L%u", g_cache.heat.layers[r].layer);
      size_t label_every = static_cast<size_t>(std::ceil(ImGui::GetFontSize() / ch));
      if (r % label_every == 0) dl->AddText(ImVec2(q.x, q.y + r * ch), s.pal.text_dim, b);
      for (uint32_t k = 0; k < ranks; ++k) {
        double u = rl[r].utilization[k];  // 1.0 = this rank carries its fair part
        ImVec2 a(q.x + 40 * s.scale + k * cw, q.y + r * ch), bb(a.x + cw - 1, a.y + ch - 1);
        dl->AddRectFilled(a, bb, heat_colour(std::min(1.0, u / std::max(2.0, vmax))));
      }
    }
    ImGui::Dummy(ImVec2(40 * s.scale + cw * ranks, ch * rl.size()));
    ImGui::EndGroup();
  }
}

}  // namespace inferscope::viewer
