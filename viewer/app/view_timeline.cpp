// Timeline view: tracks per source / thread / GPU stream, nested lanes, LOD,
// flows, zoom / pan / box-zoom, ruler, hover tooltips, selection, find.
//
// [SECTION] Index
//   toolbar()       - fit, follow, find box, range label
//   draw_ruler()    - tick spacing 1-2-5 x 10^k, labels in the unit of the spacing
//   draw_tracks()   - layout, culling, per-lane LOD draw, hover detection
//   draw_flows()    - launch -> kernel arrows for visible kernels
//   interaction     - wheel zoom around the cursor, drag pan, right-drag box zoom, keys
#include <GLFW/glfw3.h>
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "app.hpp"
#include "inferscope/viewer/lod.hpp"

namespace inferscope::viewer {
namespace {

struct Hover {
  SpanRef ref;
  DrawItem item;
  bool merged = false;
  uint32_t track = 0;
};

struct FlowEnd {
  SpanRef ref;
  float x0, x1, y;  // kernel's on-screen extent and lane top
};

// Interaction state that lives across frames (there is one timeline).
bool g_panning = false;
bool g_box = false;
float g_box_x0 = 0;
int g_drag_button = -1;
std::vector<DrawItem> g_items;
int64_t g_history_from = INT64_MAX;  // earliest time already asked of the collector's store

int lanes_shown(const Track& t) {
  int cap = (t.type == TrackType::kRequests || t.type == TrackType::kStages) ? 6 : 64;
  return std::max(1, std::min<int>(cap, static_cast<int>(t.lanes.size())));
}

void toolbar(AppState& s) {
  if (ImGui::Button("Fit (F)")) s.fit_all();
  ImGui::SameLine();
  if (s.live) {
    ImGui::Checkbox("Follow (L)", &s.follow_live);
    ImGui::SameLine();
  }
  static char buf[256] = "";
  if (s.focus_find) {
    ImGui::SetKeyboardFocusHere();
    s.focus_find = false;
  }
  ImGui::SetNextItemWidth(220 * s.scale);
  bool enter = ImGui::InputTextWithHint("##find", "find by name (Ctrl+F)", buf, sizeof(buf),
                                        ImGuiInputTextFlags_EnterReturnsTrue);
  auto go = [&](size_t i) {
    if (s.find_results.empty()) return;
    s.find_index = i % s.find_results.size();
    s.select_span(s.find_results[s.find_index]);
  };
  if (enter) {
    if (s.find_text != buf || s.find_results.empty()) {
      s.find_text = buf;
      s.find_results = s.model.find_spans(s.find_text, 100000);
      go(0);
    } else {
      go(s.find_index + 1);
    }
    ImGui::SetKeyboardFocusHere(-1);
  }
  ImGui::SameLine();
  if (ImGui::ArrowButton("##prev", ImGuiDir_Left)) go(s.find_index + s.find_results.size() - 1);
  ImGui::SameLine();
  if (ImGui::ArrowButton("##next", ImGuiDir_Right)) go(s.find_index + 1);
  ImGui::SameLine();
  if (!s.find_text.empty())
    ImGui::TextDisabled("%zu/%zu", s.find_results.empty() ? 0 : s.find_index + 1,
                        s.find_results.size());
  else
    ImGui::TextDisabled("      ");
  ImGui::SameLine();
  double span = s.view_t1 - s.view_t0;
  ImGui::TextDisabled("view %s .. %s  (%s)   wheel: zoom  drag: pan  right-drag: box zoom  W/S/A/D",
                      format_time(s.view_t0 - s.model.min_ns() + 0.0, span / 100).c_str(),
                      format_time(s.view_t1 - s.model.min_ns(), span / 100).c_str(),
                      format_duration(span).c_str());
  if (s.lod && s.lod->loading()) {
    // The window's blocks are being decoded on the StoreView's worker; what is drawn is the
    // previous window's data or the overview until they are in.
    ImGui::SameLine();
    ImGui::TextColored(ImVec4(1.0f, 0.75f, 0.3f, 1), "loading...");
  }
}

void draw_ruler(AppState& s, ImDrawList* dl, float x0, float x1, float y0, float h) {
  const Palette& p = s.pal;
  dl->AddRectFilled(ImVec2(x0, y0), ImVec2(x1, y0 + h), p.header_bg);
  double span = s.view_t1 - s.view_t0;
  if (span <= 0 || x1 <= x0) return;
  double ns_per_px = span / (x1 - x0);
  double target = 110.0 * s.scale * ns_per_px;
  double step = std::pow(10.0, std::floor(std::log10(target)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (step * m >= target) {
      step *= m;
      break;
    }
  double origin = s.model.empty() ? 0 : double(s.model.min_ns());
  double first = std::ceil((s.view_t0 - origin) / step) * step;
  for (double t = first - step; origin + t <= s.view_t1; t += step / 5) {
    double x = x0 + (origin + t - s.view_t0) / ns_per_px;
    if (x < x0 - 1) continue;
    bool major = std::fabs(std::remainder(t, step)) < step * 1e-3;
    float fx = static_cast<float>(x);
    dl->AddLine(ImVec2(fx, y0 + h * (major ? 0.45f : 0.72f)), ImVec2(fx, y0 + h), p.text_dim);
    if (major) {
      std::string label = format_time(t, step);
      dl->AddText(ImVec2(fx + 3, y0 + 1), p.text, label.c_str());
    }
  }
}

// Live: when the view reaches before what the model holds, ask the collector's
// trace store for that stretch at the view's resolution (one query at a time;
// each stretch once). The reply's records arrive through the live queue.
void fetch_history(AppState& s, const TraceModel& m, double ns_per_px) {
  if (!s.live || !s.live->connected() || m.empty()) return;
  const int64_t have_from = std::min<int64_t>(m.min_ns(), g_history_from);
  if (s.view_t0 >= double(have_from) || s.live->range_state().in_flight) return;
  const auto from = static_cast<int64_t>(s.view_t0 - (s.view_t1 - s.view_t0));  // a screen ahead
  if (s.live->fetch_range(from, have_from, static_cast<int64_t>(ns_per_px)) != 0)
    g_history_from = from;
}

}  // namespace

void draw_timeline(AppState& s) {
  TraceModel& m = s.model;
  ImGuiIO& io = ImGui::GetIO();
  toolbar(s);
  if (m.empty()) {
    ImGui::TextDisabled(s.live ? "waiting for data from the collector..."
                               : "no spans in this trace");
    return;
  }
  if (s.follow_live) {
    double width = s.view_t1 - s.view_t0;
    s.view_t1 = double(m.max_ns());
    s.view_t0 = s.view_t1 - width;
  }

  const float lane_h = std::round(17.0f * s.scale);
  const float header_h = std::round(20.0f * s.scale);
  const float gutter = std::round(150.0f * s.scale);
  const float ruler_h = std::round(22.0f * s.scale);
  const float scrollbar = ImGui::GetStyle().ScrollbarSize;

  ImVec2 origin = ImGui::GetCursorScreenPos();
  ImVec2 avail = ImGui::GetContentRegionAvail();
  float area_x0 = origin.x + gutter;
  float area_x1 = origin.x + avail.x - scrollbar;
  ImDrawList* wdl = ImGui::GetWindowDrawList();
  draw_ruler(s, wdl, area_x0, area_x1, origin.y, ruler_h);
  ImGui::Dummy(ImVec2(avail.x, ruler_h));

  ImGui::PushStyleColor(ImGuiCol_ChildBg, ImGui::ColorConvertU32ToFloat4(s.pal.background));
  ImGui::BeginChild("##tracks", ImVec2(0, 0), false, ImGuiWindowFlags_NoScrollWithMouse);
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const ImVec2 win_pos = ImGui::GetWindowPos();
  const ImVec2 win_size = ImGui::GetWindowSize();
  const float clip_y0 = win_pos.y, clip_y1 = win_pos.y + win_size.y;
  const double span = std::max(1.0, s.view_t1 - s.view_t0);
  const double px_per_ns = (area_x1 - area_x0) / span;
  const double ns_per_px = 1.0 / px_per_ns;
  auto X = [&](double t) { return static_cast<float>(area_x0 + (t - s.view_t0) * px_per_ns); };
  const ImVec2 mouse = io.MousePos;
  const bool canvas_hovered = ImGui::IsWindowHovered() && mouse.x >= area_x0 && mouse.x <= area_x1;

  // [SECTION] Layout: y of every track (sources grouped with a header row).
  const auto& tracks = m.tracks();
  std::vector<float> track_y(tracks.size(), -1.0f);
  float y = ImGui::GetCursorScreenPos().y;
  const float content_y0 = y;
  uint32_t last_source = UINT32_MAX;
  struct Header {
    float y;
    uint32_t source;
  };
  std::vector<Header> headers;
  for (uint32_t ti : m.track_order()) {
    const Track& t = tracks[ti];
    if (t.span_count == 0) continue;
    if (t.source != last_source) {
      headers.push_back({y, t.source});
      y += header_h;
      last_source = t.source;
    }
    track_y[ti] = y;
    y += lanes_shown(t) * lane_h + 4 * s.scale;
  }
  const float content_h = y - content_y0;
  if (s.scroll_to_selected && s.selected.valid() && s.selected.track < tracks.size() &&
      track_y[s.selected.track] >= 0) {
    float ty = track_y[s.selected.track] - content_y0 + s.selected.lane * lane_h;
    if (ty < ImGui::GetScrollY() || ty > ImGui::GetScrollY() + win_size.y - 3 * lane_h)
      ImGui::SetScrollY(std::max(0.0f, ty - win_size.y / 3));
    s.scroll_to_selected = false;
  }

  // [SECTION] Draw tracks with LOD, find the hovered item.
  Hover hover;
  bool have_hover = false;
  std::vector<FlowEnd> kernels;
  s.facts.drawn_tracks = 0;
  const int64_t q0 = static_cast<int64_t>(s.view_t0 - ns_per_px);
  const int64_t q1 = static_cast<int64_t>(s.view_t1 + ns_per_px);
  const int64_t min_ns = std::max<int64_t>(1, static_cast<int64_t>(3.0 * ns_per_px));
  ImFont* font = ImGui::GetFont();
  const float font_size = ImGui::GetFontSize();
  int alt = 0;
  for (uint32_t ti : m.track_order()) {
    const Track& t = tracks[ti];
    if (track_y[ti] < 0) continue;
    ++s.facts.drawn_tracks;
    const float ty = track_y[ti];
    const float th = lanes_shown(t) * lane_h;
    if (ty > clip_y1 || ty + th < clip_y0) continue;
    dl->AddRectFilled(ImVec2(win_pos.x, ty), ImVec2(area_x1, ty + th + 2 * s.scale),
                      (alt++ % 2) ? s.pal.lane_bg_alt : s.pal.lane_bg);
    char label[160];
    if (static_cast<int>(t.lanes.size()) > lanes_shown(t))
      std::snprintf(label, sizeof(label), "%s (+%zu lanes)", t.label.c_str(),
                    t.lanes.size() - lanes_shown(t));
    else
      std::snprintf(label, sizeof(label), "%s", t.label.c_str());
    dl->AddText(font, font_size, ImVec2(win_pos.x + 14 * s.scale, ty + 1), s.pal.text_dim, label,
                nullptr, 0.0f, nullptr);
    dl->PushClipRect(ImVec2(area_x0, std::max(ty, clip_y0)),
                     ImVec2(area_x1, std::min(ty + th, clip_y1)), true);
    const uint32_t merged_name = m.find_name("(merged spans)");
    for (int li = 0; li < lanes_shown(t); ++li) {
      const Lane& lane = t.lanes[static_cast<size_t>(li)];
      const float ly = ty + li * lane_h;
      if (ly > clip_y1 || ly + lane_h < clip_y0) continue;
      g_items.clear();
      query_lane(lane, q0, q1, min_ns, g_items);
      const bool mouse_in_lane = canvas_hovered && mouse.y >= ly && mouse.y < ly + lane_h - 1;
      for (const DrawItem& it : g_items) {
        float x0 = std::max(X(double(it.start_ns)), area_x0 - 2);
        float x1 = std::min(X(double(it.end_ns)), area_x1 + 2);
        if (x1 - x0 < 1.0f) x1 = x0 + 1.0f;
        const SpanRec& first = lane.spans[it.first];
        ImVec2 a(x0, ly + 1), b(x1, ly + lane_h - 1);
        // A "(merged spans)" span (a store summary or a range reply) is drawn as a run too.
        if (it.merged() || (merged_name != 0 && first.name == merged_name)) {
          // A merged run keeps its first span's colour, dimmed, so the
          // zoomed-out picture still shows which kind of work dominates.
          ImU32 c = span_colour(s, first.name, first.category);
          c = (c & 0x00FFFFFF) | (static_cast<ImU32>(s.dark ? 150 : 170) << 24);
          dl->AddRectFilled(a, b, c);
          // Hatching hints "many spans here, zoom in".
          for (float hx = x0; hx < x1 - 3; hx += 6 * s.scale)
            dl->AddLine(ImVec2(hx, b.y), ImVec2(std::min(x1, hx + 5 * s.scale), a.y), s.pal.lane_bg,
                        1.0f);
        } else {
          dl->AddRectFilled(a, b, span_colour(s, first.name, first.category));
          if (x1 - x0 > 40 * s.scale) {
            const std::string& nm = m.name(first.name);
            float tx = std::max(x0, area_x0) + 3;
            ImVec4 clip(tx, a.y, std::min(x1, area_x1) - 2, b.y);
            dl->AddText(font, font_size, ImVec2(tx, a.y + (lane_h - 2 - font_size) * 0.5f),
                        IM_COL32(15, 15, 20, 255), nm.c_str(), nullptr, 0.0f, &clip);
          }
          SpanRef ref{ti, static_cast<uint32_t>(li), it.first};
          if (ref == s.selected)
            dl->AddRect(ImVec2(a.x - 1, a.y - 1), ImVec2(b.x + 1, b.y + 1), s.pal.selection, 0, 0,
                        2.5f);
          if (t.type == TrackType::kGpuStream && first.correlation_id != 0 &&
              kernels.size() < 400 && x1 - x0 >= 3)
            kernels.push_back({ref, x0, x1, a.y});
        }
        if (mouse_in_lane && mouse.x >= x0 - 1 && mouse.x <= x1 + 1) {
          hover = {SpanRef{ti, static_cast<uint32_t>(li), it.first}, it, it.merged(), ti};
          have_hover = true;
        }
      }
    }
    dl->PopClipRect();
  }
  // Source headers on top of everything else in their row.
  for (const Header& h : headers) {
    if (h.y > clip_y1 || h.y + header_h < clip_y0) continue;
    dl->AddRectFilled(ImVec2(win_pos.x, h.y), ImVec2(area_x1, h.y + header_h - 1), s.pal.header_bg);
    const Source* src = m.source(h.source);
    dl->AddText(ImVec2(win_pos.x + 4 * s.scale, h.y + (header_h - font_size) * 0.5f), s.pal.text,
                src ? src->label.c_str() : "?");
  }
  dl->AddLine(ImVec2(area_x0 - 1, clip_y0), ImVec2(area_x0 - 1, clip_y1), s.pal.grid);

  // [SECTION] Flows: launch (CPU) -> kernel (GPU) for visible kernels and the selection.
  auto draw_flow = [&](SpanRef kernel_ref, float kx, float ky, bool strong) {
    SpanRef launch = m.flow_partner(kernel_ref);
    const SpanRec* ls = m.span(launch);
    if (!ls || launch.track >= track_y.size() || track_y[launch.track] < 0) return;
    if (static_cast<int>(launch.lane) >= lanes_shown(tracks[launch.track])) return;
    float lx = X(double(ls->end_ns));
    float ly = track_y[launch.track] + launch.lane * lane_h + lane_h - 1;
    ImU32 col = strong ? s.pal.selection : s.pal.flow;
    float dy = (ky - ly) * 0.5f;
    dl->AddBezierCubic(ImVec2(lx, ly), ImVec2(lx, ly + dy), ImVec2(kx, ky - dy), ImVec2(kx, ky),
                       col, strong ? 2.0f : 1.2f);
    float ah = 5 * s.scale;
    float dir = ky >= ly ? 1.0f : -1.0f;
    dl->AddTriangleFilled(ImVec2(kx, ky), ImVec2(kx - ah * 0.6f, ky - dir * ah),
                          ImVec2(kx + ah * 0.6f, ky - dir * ah), col);
  };
  dl->PushClipRect(ImVec2(area_x0, clip_y0), ImVec2(area_x1, clip_y1), true);
  if (ns_per_px < 50000)  // arrows only where individual launches are distinguishable
    for (const FlowEnd& k : kernels) draw_flow(k.ref, k.x0, k.y, false);
  if (const SpanRec* sel = m.span(s.selected); sel && sel->correlation_id) {
    SpanRef kernel = tracks[s.selected.track].type == TrackType::kGpuStream
                         ? s.selected
                         : m.flow_partner(s.selected);
    if (const SpanRec* k = m.span(kernel); k && track_y[kernel.track] >= 0)
      draw_flow(kernel, X(double(k->start_ns)), track_y[kernel.track] + kernel.lane * lane_h + 1,
                true);
  }
  // Shade the pinned analysis window.
  if (s.window_pinned) {
    float wx0 = std::max(area_x0, X(double(s.window_t0))),
          wx1 = std::min(area_x1, X(double(s.window_t1)));
    if (wx1 > wx0)
      dl->AddRectFilled(ImVec2(wx0, clip_y0), ImVec2(wx1, clip_y1), s.pal.window_shade);
  }
  dl->PopClipRect();
  ImGui::Dummy(ImVec2(1, content_h));

  // [SECTION] Tooltip
  if (have_hover && !g_panning && !g_box) {
    const Track& t = tracks[hover.track];
    const Lane& lane = t.lanes[hover.ref.lane];
    ImGui::BeginTooltip();
    if (hover.merged) {
      ImGui::Text("%u spans merged (zoom in)", hover.item.count());
      ImGui::TextDisabled("%s .. %s", format_time(double(hover.item.start_ns - m.min_ns())).c_str(),
                          format_time(double(hover.item.end_ns - m.min_ns())).c_str());
      ImGui::TextDisabled("first: %s", m.name(lane.spans[hover.item.first].name).c_str());
    } else {
      const SpanRec& r = lane.spans[hover.item.first];
      ImGui::TextUnformatted(m.name(r.name).c_str());
      ImGui::Separator();
      ImGui::Text("%s on %s", wire::to_string(r.category), t.label.c_str());
      ImGui::Text("start    %s", format_time(double(r.start_ns - m.min_ns())).c_str());
      ImGui::Text("duration %s", format_duration(double(r.end_ns - r.start_ns)).c_str());
      for (uint8_t i = 0; i < r.num_args; ++i) {
        const wire::SpanArg& a = m.args()[r.args + i];
        ImGui::Text("%s = %lld", m.name(a.key_id).c_str(), static_cast<long long>(a.value));
      }
      if (r.correlation_id)
        ImGui::Text("correlation %llu", static_cast<unsigned long long>(r.correlation_id));
      if (r.request_id) ImGui::Text("request %llu", static_cast<unsigned long long>(r.request_id));
    }
    ImGui::EndTooltip();
  }

  fetch_history(s, m, ns_per_px);

  // [SECTION] Interaction
  const double t_mouse = s.view_t0 + (mouse.x - area_x0) * ns_per_px;
  if (canvas_hovered && io.MouseWheel != 0) {
    if (io.KeyShift) {
      ImGui::SetScrollY(ImGui::GetScrollY() - io.MouseWheel * lane_h * 3);
    } else {
      double f = std::pow(1.25, -io.MouseWheel);
      double new_span = std::clamp(span * f, 100.0, 1e13);
      double frac = (t_mouse - s.view_t0) / span;
      s.view_t0 = t_mouse - frac * new_span;
      s.view_t1 = s.view_t0 + new_span;
      if (io.MouseWheel > 0) s.follow_live = false;
    }
  }
  if (canvas_hovered && (ImGui::IsMouseClicked(0) || ImGui::IsMouseClicked(1))) {
    g_drag_button = ImGui::IsMouseClicked(0) ? 0 : 1;
    g_box_x0 = mouse.x;
  }
  if (g_drag_button == 0 && ImGui::IsMouseDragging(0, 3.0f)) {
    g_panning = true;
    double dt = -io.MouseDelta.x * ns_per_px;
    s.view_t0 += dt;
    s.view_t1 += dt;
    ImGui::SetScrollY(ImGui::GetScrollY() - io.MouseDelta.y);
    if (io.MouseDelta.x != 0) s.follow_live = false;
  }
  if (g_drag_button == 1 && ImGui::IsMouseDragging(1, 3.0f)) {
    g_box = true;
    float bx0 = std::min(g_box_x0, mouse.x), bx1 = std::max(g_box_x0, mouse.x);
    ImDrawList* fg = ImGui::GetForegroundDrawList();
    fg->AddRectFilled(ImVec2(bx0, clip_y0), ImVec2(bx1, clip_y1), IM_COL32(90, 150, 255, 50));
    fg->AddRect(ImVec2(bx0, clip_y0), ImVec2(bx1, clip_y1), IM_COL32(90, 150, 255, 200));
    double a = s.view_t0 + (bx0 - area_x0) * ns_per_px, b = s.view_t0 + (bx1 - area_x0) * ns_per_px;
    ImGui::SetTooltip("%s%s", format_duration(b - a).c_str(),
                      io.KeyShift ? "  (shift: set analysis window)" : "");
  }
  if (g_drag_button >= 0 && ImGui::IsMouseReleased(g_drag_button)) {
    if (g_drag_button == 1 && g_box) {
      float bx0 = std::min(g_box_x0, mouse.x), bx1 = std::max(g_box_x0, mouse.x);
      double a = s.view_t0 + (bx0 - area_x0) * ns_per_px,
             b = s.view_t0 + (bx1 - area_x0) * ns_per_px;
      if (io.KeyShift) {
        s.window_pinned = true;
        s.window_t0 = static_cast<int64_t>(a);
        s.window_t1 = static_cast<int64_t>(b);
      } else if (bx1 - bx0 > 4) {
        s.view_t0 = a;
        s.view_t1 = b;
        s.follow_live = false;
      }
    } else if (g_drag_button == 0 && !g_panning) {
      if (have_hover && hover.merged) {
        double pad = double(hover.item.end_ns - hover.item.start_ns) * 0.1 + 1;
        s.view_t0 = double(hover.item.start_ns) - pad;
        s.view_t1 = double(hover.item.end_ns) + pad;
      } else if (have_hover) {
        s.selected = hover.ref;
        const SpanRec* r = m.span(hover.ref);
        if (r && r->request_id) {
          s.selected_request = r->request_id;
          s.selected_request_source = tracks[hover.ref.track].source;
        }
      } else if (canvas_hovered) {
        s.selected = {};
      }
    }
    g_panning = g_box = false;
    g_drag_button = -1;
  }

  // Keys act when the timeline has focus and no text field is being edited.
  if (ImGui::IsWindowFocused(ImGuiFocusedFlags_RootAndChildWindows) && !io.WantTextInput) {
    double c = canvas_hovered ? t_mouse : (s.view_t0 + s.view_t1) / 2;
    auto zoom = [&](double f) {
      double frac = (c - s.view_t0) / span;
      double ns = std::clamp(span * f, 100.0, 1e13);
      s.view_t0 = c - frac * ns;
      s.view_t1 = s.view_t0 + ns;
    };
    if (ImGui::IsKeyPressed(GLFW_KEY_W)) zoom(1 / 1.4);
    if (ImGui::IsKeyPressed(GLFW_KEY_S)) zoom(1.4);
    if (ImGui::IsKeyPressed(GLFW_KEY_A) || ImGui::IsKeyPressed(GLFW_KEY_LEFT)) {
      s.view_t0 -= span * 0.15;
      s.view_t1 -= span * 0.15;
      s.follow_live = false;
    }
    if (ImGui::IsKeyPressed(GLFW_KEY_D) || ImGui::IsKeyPressed(GLFW_KEY_RIGHT)) {
      s.view_t0 += span * 0.15;
      s.view_t1 += span * 0.15;
    }
    if (ImGui::IsKeyPressed(GLFW_KEY_F, false) && !io.KeyCtrl) s.fit_all();
    if (ImGui::IsKeyPressed(GLFW_KEY_F, false) && io.KeyCtrl) s.focus_find = true;
    if (ImGui::IsKeyPressed(GLFW_KEY_L, false) && s.live) s.follow_live = !s.follow_live;
    if (ImGui::IsKeyPressed(GLFW_KEY_ESCAPE, false)) {
      s.selected = {};
      s.window_pinned = false;
    }
    if (ImGui::IsKeyPressed(GLFW_KEY_Z, false))
      if (const SpanRec* r = m.span(s.selected)) {
        double pad = double(r->end_ns - r->start_ns) * 0.15 + 50;
        s.view_t0 = double(r->start_ns) - pad;
        s.view_t1 = double(r->end_ns) + pad;
      }
  }
  ImGui::EndChild();
  ImGui::PopStyleColor();
}

}  // namespace inferscope::viewer
