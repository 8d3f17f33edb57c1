// Colours, themes and number formatting shared by the views.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "app.hpp"

namespace inferscope::viewer {

void apply_theme(AppState& s, bool dark) {
  s.dark = dark;
  ImGuiStyle& st = ImGui::GetStyle();
  if (dark) {
    ImGui::StyleColorsDark();
    st.Colors[ImGuiCol_WindowBg] = ImVec4(0.10f, 0.105f, 0.12f, 1.0f);
    st.Colors[ImGuiCol_ChildBg] = ImVec4(0.085f, 0.09f, 0.10f, 1.0f);
    st.Colors[ImGuiCol_TitleBgActive] = ImVec4(0.16f, 0.20f, 0.28f, 1.0f);
    s.pal = {
        IM_COL32(22, 23, 27, 255),    IM_COL32(28, 30, 35, 255),    IM_COL32(33, 35, 41, 255),
        IM_COL32(230, 232, 236, 255), IM_COL32(150, 155, 165, 255), IM_COL32(70, 74, 84, 255),
        IM_COL32(45, 50, 62, 255),    IM_COL32(255, 210, 80, 255),  IM_COL32(120, 128, 150, 255),
        IM_COL32(255, 120, 70, 230),  IM_COL32(255, 255, 255, 255), IM_COL32(80, 230, 255, 255),
        IM_COL32(120, 170, 255, 40)};
  } else {
    ImGui::StyleColorsLight();
    st.Colors[ImGuiCol_WindowBg] = ImVec4(0.97f, 0.97f, 0.98f, 1.0f);
    s.pal = {
        IM_COL32(250, 250, 252, 255), IM_COL32(240, 241, 245, 255), IM_COL32(231, 233, 238, 255),
        IM_COL32(25, 27, 32, 255),    IM_COL32(95, 100, 110, 255),  IM_COL32(190, 194, 204, 255),
        IM_COL32(214, 220, 232, 255), IM_COL32(200, 120, 0, 255),   IM_COL32(140, 148, 168, 255),
        IM_COL32(220, 70, 30, 230),   IM_COL32(0, 0, 0, 255),       IM_COL32(0, 140, 200, 255),
        IM_COL32(40, 90, 200, 35)};
  }
  st.WindowRounding = 4.0f;
  st.FrameRounding = 3.0f;
  st.GrabRounding = 3.0f;
  st.WindowBorderSize = 1.0f;
  st.ItemSpacing = ImVec2(8, 5);
}

uint32_t span_colour(const AppState& s, uint32_t name_id, wire::SpanCategory cat) {
  // Hue by category family, lightness jittered by name so neighbours differ.
  uint32_t h = name_id * 2654435761u;
  float jitter = float((h >> 24) & 0xFF) / 255.0f;
  float hue;
  switch (cat) {
    case wire::SpanCategory::kKernel:
      hue = 0.33f + 0.12f * jitter;
      break;  // greens
    case wire::SpanCategory::kMemcpy:
    case wire::SpanCategory::kMemset:
      hue = 0.12f;
      break;  // amber
    case wire::SpanCategory::kRuntime:
      hue = 0.78f + 0.05f * jitter;
      break;  // violet
    case wire::SpanCategory::kRequest:
      hue = 0.02f + 0.04f * jitter;
      break;  // red-orange
    case wire::SpanCategory::kStage:
      hue = 0.50f + 0.10f * jitter;
      break;  // cyan
    default:
      hue = 0.56f + 0.12f * jitter;
      break;  // blues
  }
  float r, g, b;
  ImGui::ColorConvertHSVtoRGB(hue, s.dark ? 0.55f : 0.45f, s.dark ? 0.78f : 0.92f, r, g, b);
  return ImGui::ColorConvertFloat4ToU32(ImVec4(r, g, b, 1.0f));
}

uint32_t heat_colour(double x) {
  // Perceptual-ish ramp (dark blue -> teal -> yellow -> orange -> red), so the
  // fair share sits in the middle and hot experts stand out in red.
  static const float stops[][3] = {{0.07f, 0.10f, 0.30f}, {0.10f, 0.42f, 0.56f},
                                   {0.36f, 0.72f, 0.42f}, {0.96f, 0.84f, 0.25f},
                                   {0.96f, 0.45f, 0.13f}, {0.86f, 0.10f, 0.12f}};
  constexpr int n = 6;
  if (!(x >= 0)) x = 0;
  if (x > 1) x = 1;
  double f = x * (n - 1);
  int i = static_cast<int>(f);
  if (i >= n - 1) i = n - 2;
  float t = static_cast<float>(f - i);
  float c[3];
  for (int k = 0; k < 3; ++k) c[k] = stops[i][k] + (stops[i + 1][k] - stops[i][k]) * t;
  return ImGui::ColorConvertFloat4ToU32(ImVec4(c[0], c[1], c[2], 1.0f));
}

std::string format_duration(double ns) {
  char buf[64];
  double a = std::fabs(ns);
  if (a < 1e3)
    std::snprintf(buf, sizeof(buf), "%.0f ns", ns);
  else if (a < 1e6)
    std::snprintf(buf, sizeof(buf), "%.3g us", ns / 1e3);
  else if (a < 1e9)
    std::snprintf(buf, sizeof(buf), "%.4g ms", ns / 1e6);
  else
    std::snprintf(buf, sizeof(buf), "%.4g s", ns / 1e9);
  return buf;
}

std::string format_time(double ns, double step_ns) {
  // A tick label uses the unit its spacing needs, with just enough decimals
  // that neighbouring labels differ ("12.345 s", "12345.67 ms").
  char buf[64];
  if (step_ns <= 0) step_ns = std::max(1.0, std::fabs(ns) / 1000);
  auto decimals = [](double step, double unit) {
    int d = static_cast<int>(std::ceil(-std::log10(step / unit) - 1e-9));
    return d < 0 ? 0 : (d > 6 ? 6 : d);
  };
  if (step_ns >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.*f s", decimals(step_ns, 1e9), ns / 1e9);
  else if (step_ns >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.*f ms", decimals(step_ns, 1e6), ns / 1e6);
  else
    std::snprintf(buf, sizeof(buf), "%.*f us", decimals(step_ns, 1e3), ns / 1e3);
  return buf;
}

std::string format_bytes(double b) {
  char buf[64];
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(b) >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

}  // namespace inferscope::viewer
