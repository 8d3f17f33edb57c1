// Memory and cache view: KV cache vs SSM state vs SSM checkpoints, stacked over
// time with their capacity; prefix-cache hit rate split by attention and SSM layers.
#include <imgui.h>

#include <algorithm>
#include <cmath>

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
const ImU32 kColours[] = {IM_COL32(80, 150, 240, 220), IM_COL32(240, 150, 60, 220), IM_COL32(170, 110, 220, 220)};
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
  if (g_cache.generation != m.generation() || g_cache.t0 != t0 || g_cache.t1 != t1 || g_cache.rank != s.rank_filter ||
      g_cache.points != points) {
    g_cache = {m.generation(), t0, t1, s.rank_filter, points,
               memory_series(m, t0, t1, points, s.rank_filter), prefix_hit_rate(m, t0, t1, std::max(8, points / 6), s.rank_filter)};
  }
  const MemorySeries& ms = g_cache.mem;
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const float lh = ImGui::GetTextLineHeightWithSpacing();

  // [SECTION] Stacked memory with capacity line
  ImGui::Text("memory%s", s.rank_filter == kAllRanks ? " (all ranks)" : "");
  for (int k = 0; k < 3; ++k) {
    ImGui::SameLine();
    ImVec2 c = ImGui::GetCursorScreenPos();
    dl->AddRectFilled(ImVec2(c.x, c.y + 3), ImVec2(c.x + lh * 0.6f, c.y + lh * 0.6f + 3), kColours[k]);
    ImGui::Dummy(ImVec2(lh * 0.7f, lh * 0.6f));
    ImGui::SameLine();
    ImGui::TextUnformatted(kNames[k]);
  }
  ImVec2 q = ImGui::GetCursorScreenPos();
  ImVec2 sz(avail.x - 70 * s.scale, std::max(50.0f, (ImGui::GetContentRegionAvail().y - 3 * lh) * 0.55f));
  frame(s, dl, q, sz);
  const size_t n = ms.t.size();
  double ymax = 1;
  for (size_t i = 0; i < n; ++i) {
    double used = 0, cap = 0;
    for (auto k : kStack) {
      used += ms.used[static_cast<size_t>(k)][i];
      cap += ms.capacity[static_cast<size_t>(k)][i];
    }
    ymax = std::max({ymax, used, cap});
  }
  ymax *= 1.08;
  auto PX = [&](size_t i) { return q.x + sz.x * float(i) / float(std::max<size_t>(1, n - 1)); };
  auto PY = [&](double v) { return q.y + sz.y - static_cast<float>(v / ymax) * sz.y; };
  for (size_t i = 0; i + 1 < n; ++i) {
    double base0 = 0, base1 = 0;
    for (int k = 0; k < 3; ++k) {
      double a = ms.used[static_cast<size_t>(kStack[k])][i], b = ms.used[static_cast<size_t>(kStack[k])][i + 1];
      ImVec2 p0(PX(i), PY(base0)), p1(PX(i + 1), PY(base1)), p2(PX(i + 1), PY(base1 + b)), p3(PX(i), PY(base0 + a));
      dl->AddQuadFilled(p0, p1, p2, p3, kColours[k]);
      base0 += a;
      base1 += b;
    }
  }
  for (size_t i = 0; i + 1 < n; ++i) {  // total capacity of the three pools
    double c0 = 0, c1 = 0;
    for (auto k : kStack) {
      c0 += ms.capacity[static_cast<size_t>(k)][i];
      c1 += ms.capacity[static_cast<size_t>(k)][i + 1];
    }
    dl->AddLine(ImVec2(PX(i), PY(c0)), ImVec2(PX(i + 1), PY(c1)), s.pal.text, 1.5f);
  }
  dl->AddText(ImVec2(q.x + sz.x + 4, PY(ymax / 1.08) - 2), s.pal.text_dim, format_bytes(ymax / 1.08).c_str());
  dl->AddText(ImVec2(q.x + sz.x + 4, q.y + sz.y - lh), s.pal.text_dim, "0");
  if (n > 0) {
    double cap = 0;
    for (auto k : kStack) cap += ms.capacity[static_cast<size_t>(k)][n - 1];
    dl->AddText(ImVec2(q.x + 6, PY(cap) - lh), s.pal.text, ("capacity " + format_bytes(cap)).c_str());
  }
  ImGui::Dummy(sz);
  if (ImGui::IsItemHovered() && n > 1) {
    size_t i = std::min(n - 1, static_cast<size_t>((ImGui::GetIO().MousePos.x - q.x) / sz.x * (n - 1) + 0.5f));
    ImGui::BeginTooltip();
    ImGui::Text("t = %.3f s", ms.t[i]);
    for (int k = 0; k < 3; ++k)
      ImGui::Text("%-22s %s / %s", kNames[k], format_bytes(ms.used[static_cast<size_t>(kStack[k])][i]).c_str(),
                  format_bytes(ms.capacity[static_cast<size_t>(kStack[k])][i]).c_str());
    ImGui::EndTooltip();
  }

  // [SECTION] Prefix-cache hit rate, attention vs SSM
  const HitRateSeries& h = g_cache.hit;
  auto pct = [](uint64_t hit, uint64_t queried) { return queried ? 100.0 * double(hit) / double(queried) : 0.0; };
  ImGui::Text("prefix-cache hit rate: attention %.1f%%  ssm %.1f%%  (window totals)", pct(h.attention_hit, h.attention_queried),
              pct(h.ssm_hit, h.ssm_queried));
  q = ImGui::GetCursorScreenPos();
  sz = ImVec2(avail.x - 70 * s.scale, std::max(40.0f, ImGui::GetContentRegionAvail().y - lh * 0.5f));
  frame(s, dl, q, sz);
  const size_t hn = h.t.size();
  auto HX = [&](size_t i) { return q.x + sz.x * (float(i) + 0.5f) / float(std::max<size_t>(1, hn)); };
  auto HY = [&](double v) { return q.y + sz.y - static_cast<float>(v) * (sz.y - 2); };
  auto line = [&](const std::vector<double>& v, ImU32 c) {
    for (size_t i = 1; i < v.size(); ++i)
      if (!std::isnan(v[i - 1]) && !std::isnan(v[i])) dl->AddLine(ImVec2(HX(i - 1), HY(v[i - 1])), ImVec2(HX(i), HY(v[i])), c, 2.0f);
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
