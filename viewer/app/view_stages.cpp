// Stages and requests view: encoder / connector / backbone time per request
// (stacked bars) with p50 / p95 / p99, and a request table (TTFT, time per
// output token, tokens, images) whose rows jump to the request on the timeline.
#include <imgui.h>

#include <algorithm>
#include <cmath>

#include "app.hpp"

namespace inferscope::viewer {
namespace {

struct Cache {
  uint64_t generation = ~0ull;
  int64_t t0 = 0, t1 = 0;
  std::vector<RequestRow> rows;
  StageStats stats;
};
Cache g_cache;

const ImU32 kStageColours[] = {IM_COL32(235, 110, 90, 230), IM_COL32(240, 190, 70, 230),
                               IM_COL32(90, 170, 235, 230), IM_COL32(110, 200, 140, 230)};
const char* kStageNames[] = {"encoder", "connector", "prefill", "decode"};

}  // namespace

void draw_stages(AppState& s) {
  const TraceModel& m = s.model;
  int64_t t0 = s.analysis_t0(), t1 = s.analysis_t1();
  if (g_cache.generation != m.generation() || g_cache.t0 != t0 || g_cache.t1 != t1) {
    g_cache.generation = m.generation();
    g_cache.t0 = t0;
    g_cache.t1 = t1;
    g_cache.rows = request_rows(m, t0, t1);
    g_cache.stats = stage_stats(g_cache.rows);
  }
  auto& rows = g_cache.rows;
  const StageStats& st = g_cache.stats;
  if (rows.empty()) {
    ImGui::TextDisabled(m.requests().empty() ? "no requests in this trace"
                                             : "no requests in this window");
    return;
  }

  // [SECTION] Percentiles
  if (ImGui::BeginTable("pct", 5,
                        ImGuiTableFlags_BordersInnerV | ImGuiTableFlags_RowBg |
                            ImGuiTableFlags_SizingStretchSame)) {
    for (const char* c : {"per request (ms)", "p50", "p95", "p99", "n"}) ImGui::TableSetupColumn(c);
    ImGui::TableHeadersRow();
    auto row = [](const char* name, const Percentiles& p, ImU32 c) {
      ImGui::TableNextRow();
      ImGui::TableNextColumn();
      if (c) ImGui::PushStyleColor(ImGuiCol_Text, c);
      ImGui::TextUnformatted(name);
      if (c) ImGui::PopStyleColor();
      ImGui::TableNextColumn();
      ImGui::Text("%.2f", p.p50 * 1e3);
      ImGui::TableNextColumn();
      ImGui::Text("%.2f", p.p95 * 1e3);
      ImGui::TableNextColumn();
      ImGui::Text("%.2f", p.p99 * 1e3);
      ImGui::TableNextColumn();
      ImGui::Text("%zu", p.count);
    };
    for (int i = 0; i < wire::kStageCount; ++i)
      row(kStageNames[i], st.per_stage[static_cast<size_t>(i)], kStageColours[i]);
    row("TTFT", st.ttft, 0);
    row("time per output token", st.tpot, 0);
    row("end to end", st.e2e, 0);
    ImGui::EndTable();
  }

  // [SECTION] Stacked stage bars, one per request in arrival order.
  ImDrawList* dl = ImGui::GetWindowDrawList();
  ImVec2 avail = ImGui::GetContentRegionAvail();
  ImVec2 q = ImGui::GetCursorScreenPos();
  ImVec2 sz(avail.x, std::max(50.0f, avail.y * 0.32f));
  dl->AddRectFilled(q, ImVec2(q.x + sz.x, q.y + sz.y), s.pal.lane_bg);
  size_t n = std::min<size_t>(rows.size(), static_cast<size_t>(sz.x / 3));
  size_t first = rows.size() - n;  // the newest that fit
  double ymax = 1e-6;
  for (size_t i = first; i < rows.size(); ++i) {
    double sum = 0;
    for (double v : rows[i].stage_s) sum += v;
    ymax = std::max(ymax, sum);
  }
  float bw = sz.x / std::max<size_t>(1, n);
  int hovered = -1;
  for (size_t i = 0; i < n; ++i) {
    const RequestRow& r = rows[first + i];
    float x0 = q.x + i * bw, x1 = x0 + std::max(1.0f, bw - 1), y = q.y + sz.y;
    for (int k = 0; k < wire::kStageCount; ++k) {
      float hpx = static_cast<float>(r.stage_s[static_cast<size_t>(k)] / ymax) * (sz.y - 4);
      if (hpx <= 0) continue;
      dl->AddRectFilled(ImVec2(x0, y - hpx), ImVec2(x1, y), kStageColours[k]);
      y -= hpx;
    }
    if (r.request_id == s.selected_request && r.source == s.selected_request_source)
      dl->AddRect(ImVec2(x0 - 1, q.y), ImVec2(x1 + 1, q.y + sz.y), s.pal.selection, 0, 0, 2);
    ImVec2 mp = ImGui::GetIO().MousePos;
    if (mp.x >= x0 && mp.x < x0 + bw && mp.y >= q.y && mp.y < q.y + sz.y)
      hovered = static_cast<int>(first + i);
  }
  char yl[32];
  std::snprintf(yl, sizeof(yl), "%.0f ms", ymax * 1e3);
  dl->AddText(ImVec2(q.x + 4, q.y + 2), s.pal.text_dim, yl);
  ImGui::InvisibleButton("##bars", sz);
  if (hovered >= 0 && ImGui::IsItemHovered()) {
    const RequestRow& r = rows[static_cast<size_t>(hovered)];
    ImGui::BeginTooltip();
    ImGui::Text("request %llu (rank %u)", static_cast<unsigned long long>(r.request_id), r.rank);
    for (int k = 0; k < wire::kStageCount; ++k)
      ImGui::Text("%-10s %.2f ms", kStageNames[k], r.stage_s[static_cast<size_t>(k)] * 1e3);
    ImGui::EndTooltip();
    if (ImGui::IsItemClicked()) {
      s.selected_request = r.request_id;
      s.selected_request_source = r.source;
      SpanRef ref = m.find_request_span(r.source, r.request_id);
      if (ref.valid()) s.select_span(ref);
    }
  }

  // [SECTION] Request table
  ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_ScrollY |
                          ImGuiTableFlags_BordersInnerV | ImGuiTableFlags_Resizable |
                          ImGuiTableFlags_Sortable | ImGuiTableFlags_SizingStretchProp;
  if (!ImGui::BeginTable("requests", 9, flags)) return;
  ImGui::TableSetupScrollFreeze(0, 1);
  const char* cols[] = {"request", "rank",   "arrival s", "TTFT ms", "TPOT ms",
                        "e2e ms",  "prompt", "output",    "images"};
  for (int i = 0; i < 9; ++i)
    ImGui::TableSetupColumn(cols[i], i == 0 ? ImGuiTableColumnFlags_DefaultSort : 0);
  ImGui::TableHeadersRow();
  if (ImGuiTableSortSpecs* ss = ImGui::TableGetSortSpecs();
      ss && ss->SpecsDirty && ss->SpecsCount > 0) {
    int c = ss->Specs[0].ColumnIndex;
    bool asc = ss->Specs[0].SortDirection == ImGuiSortDirection_Ascending;
    auto key = [c](const RequestRow& r) -> double {
      switch (c) {
        case 0:
          return double(r.request_id);
        case 1:
          return r.rank;
        case 2:
          return double(r.arrival_ns);
        case 3:
          return std::isnan(r.ttft_s) ? -1 : r.ttft_s;
        case 4:
          return std::isnan(r.tpot_s) ? -1 : r.tpot_s;
        case 5:
          return r.e2e_s;
        case 6:
          return r.prompt;
        case 7:
          return r.output;
        default:
          return r.images;
      }
    };
    std::stable_sort(rows.begin(), rows.end(), [&](const RequestRow& a, const RequestRow& b) {
      return asc ? key(a) < key(b) : key(a) > key(b);
    });
    ss->SpecsDirty = false;
  }
  ImGuiListClipper clipper;
  clipper.Begin(static_cast<int>(rows.size()));
  while (clipper.Step()) {
    for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
      const RequestRow& r = rows[static_cast<size_t>(i)];
      ImGui::TableNextRow();
      ImGui::TableNextColumn();
      char id[32];
      std::snprintf(id, sizeof(id), "%llu", static_cast<unsigned long long>(r.request_id));
      bool sel = r.request_id == s.selected_request && r.source == s.selected_request_source;
      ImGui::PushID(i);
      if (ImGui::Selectable(id, sel, ImGuiSelectableFlags_SpanAllColumns)) {
        s.selected_request = r.request_id;
        s.selected_request_source = r.source;
        SpanRef ref = m.find_request_span(r.source, r.request_id);
        if (ref.valid()) s.select_span(ref);
      }
      ImGui::PopID();
      ImGui::TableNextColumn();
      ImGui::Text("%u", r.rank);
      ImGui::TableNextColumn();
      ImGui::Text("%.3f", s.rel_s(r.arrival_ns));
      ImGui::TableNextColumn();
      if (std::isnan(r.ttft_s))
        ImGui::TextDisabled("-");
      else
        ImGui::Text("%.1f", r.ttft_s * 1e3);
      ImGui::TableNextColumn();
      if (std::isnan(r.tpot_s))
        ImGui::TextDisabled("-");
      else
        ImGui::Text("%.2f", r.tpot_s * 1e3);
      ImGui::TableNextColumn();
      ImGui::Text("%.1f", r.e2e_s * 1e3);
      ImGui::TableNextColumn();
      ImGui::Text("%u (%u cached)", r.prompt, r.cached);
      ImGui::TableNextColumn();
      ImGui::Text("%u", r.output);
      ImGui::TableNextColumn();
      ImGui::Text("%u", r.images);
    }
  }
  ImGui::EndTable();
}

}  // namespace inferscope::viewer
