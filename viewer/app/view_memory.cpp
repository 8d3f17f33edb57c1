// Memory and cache view: KV cache, SSM state and SSM checkpoints each in its own
// lane against its own capacity (a 32 MiB checkpoint pool that is always full
// would otherwise flatten a few MiB of KV cache to a line), and the prefix-cache
// hit rate split by attention and SSM layers.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "app.hpp"

namespace inferscope::viewer {
namespace {

struct Cache {
  uint64_t generation = ~0ull;
  int64_t t0 = 0, t1 = 0;
  uint32_t rank = 0;
  int points = 0;
  MemorySeries mem;
  HitRateSeries hit;
};
Cache g_cache;

const wire::MemoryKind kStack[] = {wire::MemoryKind::kKvCache, wire::MemoryKind::kSsmState,
                                   wire::MemoryKind::kSsmCheckpoints};
// Opaque, so a lane's fill is exactly its kind's colour (the screenshot test reads it).
const ImU32 kColours[] = {IM_COL32(80, 150, 240, 255), IM_COL32(240, 150, 60, 255),
                          IM_COL32(170, 110, 220, 255)};
const char* kNames[] = {"KV cache", "SSM state", "SSM checkpoints"};

void frame(AppState& s, ImDrawList* dl, ImVec2 q, ImVec2 sz) {
  dl->AddRectFilled(q, ImVec2(q.x + sz.x, q.y + sz.y), s.pal.lane_bg);
  for (int i = 1; i < 4; ++i) {
    float y = q.y + sz.y * i / 4;
    dl->AddLine(ImVec2(q.x, y), ImVec2(q.x + sz.x, y), s.pal.grid);
  }
}

}  // namespace

void draw_memory(AppState& s) {
  const TraceModel& m = s.model;
  if (m.memory().empty() && m.prefix_cache().empty()) {
    ImGui::TextDisabled("no memory or prefix-cache samples in this trace");
    return;
  }
  int64_t t0 = s.analysis_t0(), t1 = s.analysis_t1();
  ImVec2 avail = ImGui::GetContentRegionAvail();
  int points = std::clamp(static_cast<int>(avail.x / 3), 16, 600);
  if (g_cache.generation != m.generation() || g_cache.t0 != t0 || g_cache.t1 != t1 ||
      g_cache.rank != s.rank_filter || g_cache.points != points) {
    g_cache = {m.generation(),
               t0,
               t1,
               s.rank_filter,
               points,
               memory_series(m, t0, t1, points, s.rank_filter),
               prefix_hit_rate(m, t0, t1, std::max(8, points / 6), s.rank_filter)};
  }
  const MemorySeries& ms = g_cache.mem;
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const float lh = ImGui::GetTextLineHeightWithSpacing();

  // [SECTION] One lane per kind: used / capacity (0..100%), with the figures.
  ImGui::Text("memory, each kind against its own capacity%s",
              s.rank_filter == kAllRanks ? " (all ranks)" : "");
  const size_t n = ms.t.size();
  const float lanes_h = std::max(60.0f, (ImGui::GetContentRegionAvail().y - 3 * lh) * 0.55f);
  const float gap = 4 * s.scale;
  const float lane_h = (lanes_h - 2 * gap) / 3;
  const float lane_w = avail.x - 70 * s.scale;
  ImVec2 top = ImGui::GetCursorScreenPos();
  auto PX = [&](size_t i) { return top.x + lane_w * float(i) / float(std::max<size_t>(1, n - 1)); };
  int hover_lane = -1;
  for (int k = 0; k < 3; ++k) {
    const size_t kind = static_cast<size_t>(kStack[k]);
    const auto& used = ms.used[kind];
    const auto& cap = ms.capacity[kind];
    ImVec2 q(top.x, top.y + k * (lane_h + gap));
    ImVec2 sz(lane_w, lane_h);
    frame(s, dl, q, sz);
    auto frac = [&](size_t i) { return cap[i] > 0 ? std::clamp(used[i] / cap[i], 0.0, 1.0) : 0.0; };
    auto PY = [&](double f) { return q.y + sz.y - static_cast<float>(f) * sz.y; };
    for (size_t i = 0; i + 1 < n; ++i)
      dl->AddQuadFilled(ImVec2(PX(i), PY(0)), ImVec2(PX(i + 1), PY(0)),
                        ImVec2(PX(i + 1), PY(frac(i + 1))), ImVec2(PX(i), PY(frac(i))),
                        kColours[k]);
    std::string label = kNames[k];
    double last_frac = 0;
    if (n > 0 && ms.has_kind[kind]) {
      last_frac = frac(n - 1);
      label += "  " + format_bytes(used[n - 1]) + " / " + format_bytes(cap[n - 1]);
      char pct[16];
      std::snprintf(pct, sizeof(pct), " (%.0f%%)", 100 * last_frac);
      label += pct;
    } else {
      label += "  no samples";
    }
    dl->AddText(ImVec2(q.x + 6, q.y + 2), s.pal.text, label.c_str());
    dl->AddText(ImVec2(q.x + sz.x + 4, q.y), s.pal.text_dim, "100%");
    dl->AddText(ImVec2(q.x + sz.x + 4, q.y + sz.y - lh), s.pal.text_dim, "0%");
    float* rect = s.facts.memory_lanes[k];
    rect[0] = q.x;
    rect[1] = q.y;
    rect[2] = q.x + sz.x;
    rect[3] = q.y + sz.y;
    s.facts.memory_lane_fill[k] = static_cast<float>(last_frac);
    s.facts.memory_lane_colour[k] = kColours[k];
    if (ImGui::IsMouseHoveringRect(q, ImVec2(q.x + sz.x, q.y + sz.y)) && ImGui::IsWindowHovered())
      hover_lane = k;
  }
  ImGui::Dummy(ImVec2(lane_w, lanes_h));
  if (hover_lane >= 0 && n > 1) {
    size_t i = std::min(
        n - 1, static_cast<size_t>((ImGui::GetIO().MousePos.x - top.x) / lane_w * (n - 1) + 0.5f));
    ImGui::BeginTooltip();
    ImGui::Text("t = %.3f s", ms.t[i]);
    for (int k = 0; k < 3; ++k)
      ImGui::Text("%-22s %s / %s", kNames[k],
                  format_bytes(ms.used[static_cast<size_t>(kStack[k])][i]).c_str(),
                  format_bytes(ms.capacity[static_cast<size_t>(kStack[k])][i]).c_str());
    ImGui::EndTooltip();
  }

  // [SECTION] Prefix-cache hit rate, attention vs SSM
  const HitRateSeries& h = g_cache.hit;
  auto pct = [](uint64_t hit, uint64_t queried) {
    return queried ? 100.0 * double(hit) / double(queried) : 0.0;
  };
  ImGui::Text("prefix-cache hit rate: attention %.1f%%  ssm %.1f%%  (window totals)",
              pct(h.attention_hit, h.attention_queried), pct(h.ssm_hit, h.ssm_queried));
  ImVec2 q = ImGui::GetCursorScreenPos();
  ImVec2 sz(avail.x - 70 * s.scale, std::max(40.0f, ImGui::GetContentRegionAvail().y - lh * 0.5f));
  frame(s, dl, q, sz);
  const size_t hn = h.t.size();
  auto HX = [&](size_t i) {
    return q.x + sz.x * (float(i) + 0.5f) / float(std::max<size_t>(1, hn));
  };
  auto HY = [&](double v) { return q.y + sz.y - static_cast<float>(v) * (sz.y - 2); };
  auto line = [&](const std::vector<double>& v, ImU32 c) {
    for (size_t i = 1; i < v.size(); ++i)
      if (!std::isnan(v[i - 1]) && !std::isnan(v[i]))
        dl->AddLine(ImVec2(HX(i - 1), HY(v[i - 1])), ImVec2(HX(i), HY(v[i])), c, 2.0f);
  };
  line(h.attention, kColours[0]);
  line(h.ssm, kColours[1]);
  dl->AddText(ImVec2(q.x + sz.x + 4, q.y), s.pal.text_dim, "100%");
  dl->AddText(ImVec2(q.x + sz.x + 4, q.y + sz.y - lh), s.pal.text_dim, "0%");
  dl->AddText(ImVec2(q.x + 6, q.y + 2), kColours[0], "attention");
  dl->AddText(ImVec2(q.x + 6 + 80 * s.scale, q.y + 2), kColours[1], "ssm");
  ImGui::Dummy(sz);
}

}  // namespace inferscope::viewer
