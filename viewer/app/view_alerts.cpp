// Alerts view: the collector's episodes (hot / cold / dead expert, drop bursts),
// one row each; clicking a row moves the timeline there and pins the window.
#include <imgui.h>

#include <algorithm>

#include "app.hpp"

namespace inferscope::viewer {

void draw_alerts(AppState& s) {
  const TraceModel& m = s.model;
  const auto& alerts = m.alerts();
  if (alerts.empty()) {
    ImGui::TextDisabled("no alert episodes in this trace");
    return;
  }
  ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV |
                          ImGuiTableFlags_ScrollY | ImGuiTableFlags_Resizable |
                          ImGuiTableFlags_SizingStretchProp;
  if (!ImGui::BeginTable("alerts", 7, flags)) return;
  ImGui::TableSetupScrollFreeze(0, 1);
  for (const char* c : {"kind", "rank", "layer", "expert", "start", "duration", "peak"})
    ImGui::TableSetupColumn(c);
  ImGui::TableHeadersRow();
  for (size_t i = 0; i < alerts.size(); ++i) {
    const wire::AlertEpisode& a = alerts[i].alert;
    s.alert_min_start_s =
        i == 0 ? s.rel_s(a.start_ns) : std::min(s.alert_min_start_s, s.rel_s(a.start_ns));
    ImGui::TableNextRow();
    ImGui::TableNextColumn();
    ImVec4 col = a.kind == wire::AlertKind::kHotExpert   ? ImVec4(1.0f, 0.42f, 0.25f, 1)
                 : a.kind == wire::AlertKind::kDropBurst ? ImVec4(1.0f, 0.8f, 0.2f, 1)
                                                         : ImVec4(0.45f, 0.7f, 1.0f, 1);
    ImGui::PushID(static_cast<int>(i));
    ImGui::PushStyleColor(ImGuiCol_Text, col);
    bool clicked =
        ImGui::Selectable(wire::to_string(a.kind), false, ImGuiSelectableFlags_SpanAllColumns);
    ImGui::PopStyleColor();
    ImGui::PopID();
    ImGui::TableNextColumn();
    ImGui::Text("%u", a.rank);
    ImGui::TableNextColumn();
    ImGui::Text("%u", a.layer);
    ImGui::TableNextColumn();
    if (a.kind == wire::AlertKind::kDropBurst)
      ImGui::TextDisabled("-");
    else
      ImGui::Text("%u", a.expert);
    ImGui::TableNextColumn();
    ImGui::TextUnformatted(format_time(double(a.start_ns - m.min_ns())).c_str());
    ImGui::TableNextColumn();
    if (a.end_ns == 0)
      ImGui::TextUnformatted("open");
    else
      ImGui::TextUnformatted(format_duration(double(a.end_ns - a.start_ns)).c_str());
    ImGui::TableNextColumn();
    if (a.kind == wire::AlertKind::kDropBurst)
      ImGui::TextDisabled("-");
    else
      ImGui::Text("%.1f%% (%.1fx)", a.peak_share * 100, a.peak_utilization);
    if (clicked) {
      int64_t end = a.end_ns ? a.end_ns : m.max_ns();
      int64_t pad = (end - a.start_ns) / 10;
      s.jump_to(a.start_ns - pad, end + pad);
      s.window_pinned = true;
      s.window_t0 = a.start_ns;
      s.window_t1 = end;
      if (a.kind != wire::AlertKind::kDropBurst) {
        s.selected_layer = static_cast<int>(a.layer);
        s.selected_expert = static_cast<int>(a.expert);
        s.rank_filter = a.rank;
      }
    }
  }
  ImGui::EndTable();
}

}  // namespace inferscope::viewer
