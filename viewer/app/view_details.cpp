// Details view: the selected span (all fields, args, its launch/kernel partner),
// the load report (damage, dropped data) and the live connection state.
#include <imgui.h>

#include "app.hpp"

namespace inferscope::viewer {

void draw_details(AppState& s) {
  const TraceModel& m = s.model;
  if (const SpanRec* r = m.span(s.selected)) {
    const Track& t = m.tracks()[s.selected.track];
    ImGui::TextWrapped("%s", m.name(r->name).c_str());
    ImGui::Separator();
    const Source* src = m.source(t.source);
    ImGui::Text("source    %s", src ? src->label.c_str() : "?");
    ImGui::Text("track     %s (depth %u)", t.label.c_str(), r->depth);
    ImGui::Text("category  %s", wire::to_string(r->category));
    ImGui::Text("start     %s", format_time(double(r->start_ns - m.min_ns())).c_str());
    ImGui::Text("duration  %s", format_duration(double(r->end_ns - r->start_ns)).c_str());
    for (uint8_t i = 0; i < r->num_args; ++i) {
      const wire::SpanArg& a = m.args()[r->args + i];
      ImGui::Text("%-9s %lld", m.name(a.key_id).c_str(), static_cast<long long>(a.value));
    }
    if (r->request_id)
      ImGui::Text("request   %llu", static_cast<unsigned long long>(r->request_id));
    if (r->correlation_id) {
      ImGui::Text("correlation %llu", static_cast<unsigned long long>(r->correlation_id));
      SpanRef partner = m.flow_partner(s.selected);
      if (const SpanRec* p = m.span(partner)) {
        bool kernel = m.tracks()[partner.track].type == TrackType::kGpuStream;
        ImGui::Text("%s: %s", kernel ? "kernel" : "launched by", m.name(p->name).c_str());
        ImGui::Text("launch -> kernel start: %s",
                    format_duration(kernel ? double(p->start_ns - r->start_ns)
                                           : double(r->start_ns - p->start_ns))
                        .c_str());
        if (ImGui::SmallButton(kernel ? "go to kernel" : "go to launch")) s.select_span(partner);
      }
    }
    if (ImGui::SmallButton("zoom to span (Z)")) {
      double pad = double(r->end_ns - r->start_ns) * 0.15 + 50;
      s.jump_to(static_cast<int64_t>(r->start_ns - pad), static_cast<int64_t>(r->end_ns + pad));
    }
  } else {
    ImGui::TextDisabled("click a span on the timeline to see it here");
  }
  ImGui::Separator();
  ImGui::TextDisabled("%llu spans, %llu records, %zu tracks, %zu sources",
                      static_cast<unsigned long long>(m.span_count()),
                      static_cast<unsigned long long>(m.record_count()), m.tracks().size(),
                      m.sources().size());
  if (m.dropped_spans() || m.dropped_samples())
    ImGui::TextColored(ImVec4(1, 0.6f, 0.2f, 1),
                       "memory cap reached: %llu spans, %llu samples not kept",
                       static_cast<unsigned long long>(m.dropped_spans()),
                       static_cast<unsigned long long>(m.dropped_samples()));
  for (const auto& w : s.load.warnings)
    ImGui::TextColored(ImVec4(1, 0.6f, 0.2f, 1), "%s", w.c_str());
  if (s.live) {
    ImGui::Text("live %s: %s", s.live->endpoint().c_str(),
                s.live->connected() ? "connected" : "connecting...");
    ImGui::TextDisabled("%llu frames, %llu records, %llu dropped (UI queue full), %llu reconnects",
                        static_cast<unsigned long long>(s.live->frames()),
                        static_cast<unsigned long long>(s.live->records()),
                        static_cast<unsigned long long>(s.live->dropped()),
                        static_cast<unsigned long long>(s.live->reconnects()));
    std::string e = s.live->last_error();
    if (!e.empty()) {
      if (s.live->connected())
        ImGui::TextDisabled("last error: %s", e.c_str());
      else
        ImGui::TextColored(ImVec4(1, 0.5f, 0.3f, 1), "%s", e.c_str());
    }
  }
}

}  // namespace inferscope::viewer
