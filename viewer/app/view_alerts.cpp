// Alerts view: the collector's episodes (hot / cold / dead expert, drop bursts),
// one row each; clicking a row moves the timeline there and pins the window.
// The "GPU capture" column jumps to the kernels traced because of the episode
// (TraceModel::capture_window, kept by the model as spans arrive), or, with --capture-endpoint,
// asks the collector for a capture now.
#include <imgui.h>

#include <algorithm>
#include <cstdio>

#include "app.hpp"

namespace inferscope::viewer {

namespace {

// The last capture request's outcome, one line above the table.
void draw_capture_status(const AppState& s) {
  if (!s.capture) return;
  const CaptureReply r = s.capture->reply();
  switch (r.state) {
    case CaptureReply::State::kIdle:
      break;
    case CaptureReply::State::kPending:
      ImGui::TextDisabled("GPU capture of %s: asking the collector...", r.model.c_str());
      break;
    case CaptureReply::State::kDone:
      if (r.http_status == 200)
        ImGui::Text("GPU capture of %s: %s", r.model.c_str(), r.body.c_str());
      else
        ImGui::TextColored(ImVec4(1.0f, 0.6f, 0.3f, 1), "GPU capture of %s refused (%d): %s",
                           r.model.c_str(), r.http_status, r.body.c_str());
      break;
    case CaptureReply::State::kFailed:
      ImGui::TextColored(ImVec4(1.0f, 0.45f, 0.35f, 1), "GPU capture of %s failed: %s",
                         r.model.c_str(), r.error.c_str());
      break;
  }
}

// Steps a capture asked from the viewer covers (the collector's default for episodes, 8).
constexpr uint32_t kCaptureSteps = 8;

void draw_capture_cell(AppState& s, const wire::AlertEpisode& a, int row) {
  ImGui::PushID(row);
  if (const CaptureWindow* w = capture_for_episode(s.model, a)) {
    char label[64];
    std::snprintf(label, sizeof label, "jump (%llu kernels)",
                  static_cast<unsigned long long>(w->spans));
    if (ImGui::SmallButton(label)) {
      const int64_t pad = std::max<int64_t>((w->end_ns - w->start_ns) / 10, 1000);
      s.jump_to(w->start_ns - pad, w->end_ns + pad, /*pin_window=*/true);
    }
  } else if (s.capture && !a.model.empty()) {
    const bool pending = s.capture->reply().state == CaptureReply::State::kPending;
    ImGui::BeginDisabled(pending);
    if (ImGui::SmallButton("capture now")) s.capture->request(a.model, kCaptureSteps);
    ImGui::EndDisabled();
  } else {
    ImGui::TextDisabled("-");
  }
  ImGui::PopID();
}

}  // namespace

void draw_alerts(AppState& s) {
  const TraceModel& m = s.model;
  const auto& alerts = m.alerts();
  if (alerts.empty()) {
    ImGui::TextDisabled("no alert episodes in this trace");
    return;
  }
  draw_capture_status(s);
  ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV |
                          ImGuiTableFlags_ScrollY | ImGuiTableFlags_Resizable |
                          ImGuiTableFlags_SizingStretchProp;
  if (!ImGui::BeginTable("alerts", 8, flags)) return;
  ImGui::TableSetupScrollFreeze(0, 1);
  for (const char* c :
       {"kind", "rank", "layer", "expert", "start", "duration", "peak", "GPU capture"})
    ImGui::TableSetupColumn(c);
  ImGui::TableHeadersRow();
  for (size_t i = 0; i < alerts.size(); ++i) {
    const wire::AlertEpisode& a = alerts[i].alert;
    s.facts.alert_min_start_s =
        i == 0 ? s.rel_s(a.start_ns) : std::min(s.facts.alert_min_start_s, s.rel_s(a.start_ns));
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
    ImGui::TableNextColumn();
    draw_capture_cell(s, a, static_cast<int>(i));
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
