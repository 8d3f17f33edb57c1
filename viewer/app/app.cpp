// The app: window, fonts, theme, layout of the views, live polling, screenshot mode.
//
// [SECTION] Index
//   AppState methods    - view range, analysis window, selection
//   parse_window()      - "10s..20s" relative to the trace start
//   layout              - tiled default layout; imgui.ini in $XDG_CONFIG_HOME/inferscope
//   run_app()           - main loop
#include "app.hpp"

#include <GLFW/glfw3.h>
#include <imgui.h>
#include <imgui_impl_glfw.h>
#include <imgui_impl_opengl3.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "inferscope/viewer/start_view.hpp"

namespace inferscope::viewer {

// [SECTION] AppState
int64_t AppState::analysis_t0() const {
  return window_pinned ? window_t0 : static_cast<int64_t>(view_t0);
}
int64_t AppState::analysis_t1() const {
  return window_pinned ? window_t1 : static_cast<int64_t>(view_t1);
}

void AppState::fit_all() {
  if (model.empty()) return;
  double span = std::max<double>(1000, double(model.max_ns() - model.min_ns()));
  view_t0 = double(model.min_ns()) - span * 0.01;
  view_t1 = double(model.max_ns()) + span * 0.01;
}

void AppState::jump_to(int64_t t0, int64_t t1, bool pin_window) {
  if (t1 <= t0) t1 = t0 + 1000;
  view_t0 = double(t0);
  view_t1 = double(t1);
  follow_live = false;
  if (pin_window) {
    window_pinned = true;
    window_t0 = t0;
    window_t1 = t1;
  }
}

void AppState::select_span(SpanRef ref) {
  const SpanRec* r = model.span(ref);
  if (!r) return;
  selected = ref;
  scroll_to_selected = true;
  double d = double(r->end_ns - r->start_ns);
  double span = view_t1 - view_t0;
  // Keep the zoom if the span fits comfortably, else zoom to it.
  if (d > span * 0.8 || d < span * 0.0005) span = std::max(2000.0, d * 3);
  double mid = double(r->start_ns) + d / 2;
  view_t0 = mid - span / 2;
  view_t1 = mid + span / 2;
  follow_live = false;
  if (r->request_id) {
    selected_request = r->request_id;
    selected_request_source = model.tracks()[ref.track].source;
  }
}

namespace {

bool parse_seconds(const std::string& text, double& out) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str()) return false;
  std::string unit(end);
  if (unit.empty() || unit == "s")
    out = v;
  else if (unit == "ms")
    out = v / 1e3;
  else if (unit == "us")
    out = v / 1e6;
  else
    return false;
  return true;
}

// "10s..20s": a window relative to the start of the trace.
bool parse_window(const std::string& text, double& a, double& b) {
  auto dots = text.find("..");
  if (dots == std::string::npos) return false;
  return parse_seconds(text.substr(0, dots), a) && parse_seconds(text.substr(dots + 2), b) && b > a;
}

std::string config_dir() {
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  const char* home = std::getenv("HOME");
  std::filesystem::path p;
  if (xdg && *xdg)
    p = xdg;
  else if (home && *home)
    p = std::filesystem::path(home) / ".config";
  else
    return {};
  p /= "inferscope";
  std::error_code ec;
  std::filesystem::create_directories(p, ec);
  return ec ? std::string() : p.string();
}

const char* kTitles[] = {"Timeline",          "Expert load", "Alerts",  "Memory & cache",
                         "Stages & requests", "Details",     "EP ranks"};

void window_rect(ViewId id, const ImVec2& pos, const ImVec2& size, bool single, ImVec2& p,
                 ImVec2& sz) {
  if (single) {
    p = pos;
    sz = size;
    return;
  }
  float W = size.x, H = size.y;
  struct R {
    float x, y, w, h;
  };
  static const R rects[] = {{0, 0, 0.68f, 0.56f},         {0, 0.56f, 0.40f, 0.44f},
                            {0.68f, 0.30f, 0.32f, 0.26f}, {0.40f, 0.56f, 0.28f, 0.44f},
                            {0.68f, 0.56f, 0.32f, 0.44f}, {0.68f, 0, 0.32f, 0.30f},
                            {0, 0.56f, 0.40f, 0.44f}};  // EP ranks: over the expert view when shown
  const R& r = rects[static_cast<int>(id)];
  p = ImVec2(pos.x + r.x * W, pos.y + r.y * H);
  sz = ImVec2(r.w * W, r.h * H);
}

void load_fonts(float scale) {
  ImGuiIO& io = ImGui::GetIO();
  const char* candidates[] = {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                              "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"};
  for (const char* f : candidates) {
    if (std::filesystem::exists(f)) {
      io.Fonts->AddFontFromFileTTF(f, std::round(14.0f * scale));
      return;
    }
  }
  ImFontConfig cfg;
  cfg.SizePixels = std::round(13.0f * scale);
  io.Fonts->AddFontDefault(&cfg);
}

void write_facts(const AppState& s, const std::string& png, int fb_w, int fb_h, float fb_scale) {
  std::ofstream out(png + ".json");
  auto hex = [](uint32_t c) {
    char b[16];
    std::snprintf(b, sizeof(b), "#%02x%02x%02x", c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF);
    return std::string(b);
  };
  out << "{\"width\":" << fb_w << ",\"height\":" << fb_h << ",\"tracks\":" << s.facts.drawn_tracks
      << ",\"spans\":" << s.model.span_count() << ",\"hot_cell\":["
      << s.facts.hot_cell[0] * fb_scale << "," << s.facts.hot_cell[1] * fb_scale << ","
      << s.facts.hot_cell[2] * fb_scale << "," << s.facts.hot_cell[3] * fb_scale
      << "],\"hot_cell_colour\":\"" << hex(s.facts.hot_cell_colour) << "\",\"legend_top_colour\":\""
      << hex(s.facts.legend_top_colour) << "\",\"ep_hot_rank\":" << s.ep_hot_rank
      << ",\"ep_idle_bar\":[" << s.facts.ep_idle_bar[0] * fb_scale << ","
      << s.facts.ep_idle_bar[1] * fb_scale << "," << s.facts.ep_idle_bar[2] * fb_scale << ","
      << s.facts.ep_idle_bar[3] * fb_scale << "]"
      << ",\"ep_hot_row\":[" << s.facts.ep_hot_row[0] * fb_scale << ","
      << s.facts.ep_hot_row[1] * fb_scale << "," << s.facts.ep_hot_row[2] * fb_scale << ","
      << s.facts.ep_hot_row[3] * fb_scale << "]";
  auto rect = [&](const float* r) {
    return "[" + std::to_string(r[0] * fb_scale) + "," + std::to_string(r[1] * fb_scale) + "," +
           std::to_string(r[2] * fb_scale) + "," + std::to_string(r[3] * fb_scale) + "]";
  };
  // Where the views opened and what they selected, for the start-view tests.
  out << ",\"view_s\":[" << s.rel_s(static_cast<int64_t>(s.view_t0)) << ","
      << s.rel_s(static_cast<int64_t>(s.view_t1))
      << "],\"trace_s\":" << (s.model.empty() ? 0.0 : s.rel_s(s.model.max_ns()))
      << ",\"selected\":[" << s.selected_layer << "," << s.selected_expert
      << "],\"selected_cell\":" << rect(s.facts.selected_cell)
      << ",\"alert_min_start_s\":" << s.facts.alert_min_start_s << ",\"memory_lanes\":[";
  for (int k = 0; k < 3; ++k)
    out << (k ? "," : "") << "{\"rect\":" << rect(s.facts.memory_lanes[k])
        << ",\"fill\":" << s.facts.memory_lane_fill[k] << ",\"colour\":\""
        << hex(s.facts.memory_lane_colour[k]) << "\"}";
  out << "]}\n";
}

}  // namespace

void load_trace(AppState& s) {
  s.lod.reset();
  if (StoreView::worth_it(s.options.trace)) {
    s.lod = std::make_unique<StoreView>();
    s.load = s.lod->open(s.options.trace, s.model);
    if (s.load.ok) return;
    s.lod.reset();  // fall back to reading it whole
    s.model.clear();
  }
  s.load = load_path(s.options.trace, s.model);
}

int run_app(AppOptions o) {
  AppState s;
  s.options = o;
  s.screenshot_mode = !o.screenshot.empty();
  static const char* views[] = {"timeline", "experts", "alerts", "memory",
                                "stages",   "details", "ep"};
  int single = -1;
  if (o.view == "expert-load") o.view = "experts";
  for (int i = 0; i < static_cast<int>(ViewId::kCount); ++i)
    if (o.view == views[i]) single = i;
  if (single < 0 && o.view != "all") {
    std::fprintf(stderr,
                 "inferscope-viewer: unknown --view '%s' "
                 "(timeline|experts|alerts|memory|stages|details|ep|all)\n",
                 o.view.c_str());
    return 2;
  }
  double win_a = 0, win_b = 0;
  bool have_window = !o.window.empty();
  if (have_window && !parse_window(o.window, win_a, win_b)) {
    std::fprintf(stderr, "inferscope-viewer: bad --window '%s' (expected e.g. 10s..20s)\n",
                 o.window.c_str());
    return 2;
  }

  // [SECTION] Data first: a bad file is reported even if no display is available.
  if (!o.trace.empty()) {
    auto t = std::chrono::steady_clock::now();
    load_trace(s);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    if (!s.load.ok) {
      s.banner = "Could not open " + o.trace + ": " + s.load.error;
      std::fprintf(stderr, "inferscope-viewer: %s\n", s.banner.c_str());
    } else {
      std::fprintf(stderr, "inferscope-viewer: %s (%.2f s)\n", s.load.summary().c_str(), secs);
      if (!s.load.warnings.empty())
        s.banner = "Trace damaged, showing what was recovered: " + s.load.warnings.front();
    }
  }
  if (!o.connect.empty()) {
    LiveOptions lo;
    std::string err;
    if (!parse_host_port(o.connect, lo.host, lo.port, err)) {
      std::fprintf(stderr, "inferscope-viewer: --connect: %s\n", err.c_str());
      return 2;
    }
    if (!o.auth_token_file.empty()) {
      std::ifstream in(o.auth_token_file);
      if (!in) {
        std::fprintf(stderr, "inferscope-viewer: cannot read --auth-token-file %s\n",
                     o.auth_token_file.c_str());
        return 1;  // a runtime failure, not a usage error (docs/cli.md)
      }
      std::getline(in, lo.auth_token);
    }
    s.live = std::make_unique<LiveClient>(lo);
    s.live->start();
    s.follow_live = true;
  }
  if (!o.capture_endpoint.empty()) {
    std::string host, err;
    uint16_t port = 0;
    if (!parse_host_port(o.capture_endpoint, host, port, err)) {
      std::fprintf(stderr, "inferscope-viewer: --capture-endpoint: %s\n", err.c_str());
      return 2;
    }
    s.capture = std::make_unique<CaptureClient>(host, port);
  }
  s.fit_all();
  // Start on the problem (start_view.hpp): the timeline on a few seconds around
  // the latest alert (else the last seconds) unless --window says otherwise, and
  // the worst expert of that window selected, so the heatmap outlines it and
  // plots its share over time.
  if (have_window && !s.model.empty()) {
    s.jump_to(s.model.min_ns() + static_cast<int64_t>(win_a * 1e9),
              s.model.min_ns() + static_cast<int64_t>(win_b * 1e9), true);
  } else if (!s.model.empty()) {
    TimeRange r = start_range(s.model);
    s.jump_to(r.t0, r.t1);
  }
  if (auto w =
          worst_expert(expert_heatmap(s.model, s.analysis_t0(), s.analysis_t1(), s.rank_filter))) {
    s.selected_layer = static_cast<int>(w->layer);
    s.selected_expert = static_cast<int>(w->expert);
  }

  // [SECTION] Window and ImGui
  glfwSetErrorCallback([](int code, const char* msg) {
    std::fprintf(stderr, "inferscope-viewer: GLFW error %d: %s\n", code, msg);
  });
  if (!glfwInit()) {
    std::fprintf(stderr,
                 "inferscope-viewer: cannot initialise GLFW (no display? run under xvfb-run)\n");
    return 1;
  }
  glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
  glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 0);
  if (s.screenshot_mode) glfwWindowHint(GLFW_RESIZABLE, GLFW_FALSE);
  std::string title = "inferscope viewer" + (o.trace.empty() ? std::string() : " - " + o.trace);
  GLFWwindow* window = glfwCreateWindow(o.width, o.height, title.c_str(), nullptr, nullptr);
  if (!window) {
    std::fprintf(stderr, "inferscope-viewer: cannot create a %dx%d OpenGL 3.0 window\n", o.width,
                 o.height);
    glfwTerminate();
    return 1;
  }
  glfwMakeContextCurrent(window);
  glfwSwapInterval(s.screenshot_mode ? 0 : 1);

  float scale = o.scale;
  if (scale <= 0) {
    float xs = 1, ys = 1;
    glfwGetWindowContentScale(window, &xs, &ys);
    scale = std::clamp(std::max(xs, ys), 1.0f, 4.0f);
  }
  s.scale = scale;

  IMGUI_CHECKVERSION();
  ImGui::CreateContext();
  ImGuiIO& io = ImGui::GetIO();
  static std::string ini;
  if (s.screenshot_mode) {
    io.IniFilename = nullptr;  // screenshots must not depend on a user's saved layout
  } else {
    std::string dir = config_dir();
    ini = dir.empty() ? std::string() : dir + "/imgui.ini";
    io.IniFilename = ini.empty() ? nullptr : ini.c_str();
  }
  apply_theme(s, o.theme != "light");
  ImGui::GetStyle().ScaleAllSizes(scale);
  load_fonts(scale);
  ImGui_ImplGlfw_InitForOpenGL(window, true);
  ImGui_ImplOpenGL3_Init("#version 130");

  int frame = 0;
  int exit_code = 0;
  bool reset_layout = s.screenshot_mode;
  auto last_finalize = std::chrono::steady_clock::now();
  std::vector<std::pair<uint32_t, wire::Record>> incoming;

  while (!glfwWindowShouldClose(window)) {
    // While the level-of-detail worker builds a window, wake up often to swap it in (the
    // worker cannot post a GLFW event: the model library knows no GLFW).
    const bool lod_loading = s.lod && s.lod->loading();
    if (s.screenshot_mode && !lod_loading)
      glfwPollEvents();
    else
      glfwWaitEventsTimeout(lod_loading ? 0.01 : s.live ? 0.05 : 0.25);

    // [SECTION] Live data: drain the queue, fold into lanes a few times a second.
    if (s.live) {
      incoming.clear();
      s.live->drain(incoming, 500000);
      bool was_empty = s.model.empty();
      for (auto& [src, rec] : incoming) s.model.add(src, rec);
      auto now = std::chrono::steady_clock::now();
      if (now - last_finalize > std::chrono::milliseconds(200)) {
        s.model.finalize();
        last_finalize = now;
        if (was_empty && !s.model.empty()) {
          double w = std::min<double>(5e9, double(s.model.max_ns() - s.model.min_ns()) + 1e6);
          s.view_t1 = double(s.model.max_ns());
          s.view_t0 = s.view_t1 - w;
        }
      }
    }

    // [SECTION] Level of detail: the visible window's blocks of a large trace store, built on
    // the StoreView's worker; until they are in, the timeline draws what the model has (the
    // previous window or the overview) and shows "loading".
    if (s.lod && s.lod->update_async(s.model, static_cast<int64_t>(s.view_t0),
                                     static_cast<int64_t>(s.view_t1),
                                     std::max(1, static_cast<int>(io.DisplaySize.x)))) {
      s.selected = {};  // SpanRefs do not survive a rebuild
      s.find_results.clear();
    }

    ImGui_ImplOpenGL3_NewFrame();
    ImGui_ImplGlfw_NewFrame();
    // Screenshots show no hover state wherever the (virtual) pointer happens to be.
    if (s.screenshot_mode) io.MousePos = ImVec2(-FLT_MAX, -FLT_MAX);
    ImGui::NewFrame();

    // [SECTION] Menu bar
    float menu_h = 0;
    if (ImGui::BeginMainMenuBar()) {
      if (ImGui::BeginMenu("File")) {
        if (!o.trace.empty() && ImGui::MenuItem("Reload trace")) {
          s.model.clear();
          load_trace(s);
          s.banner = s.load.ok ? std::string() : s.load.error;
          s.selected = {};
          s.fit_all();
        }
        if (ImGui::MenuItem("Quit", "Ctrl+Q")) glfwSetWindowShouldClose(window, 1);
        ImGui::EndMenu();
      }
      if (ImGui::BeginMenu("View")) {
        for (int i = 0; i < static_cast<int>(ViewId::kCount); ++i)
          ImGui::MenuItem(kTitles[i], nullptr, &s.show[i]);
        ImGui::Separator();
        if (ImGui::MenuItem("Dark theme", nullptr, s.dark)) apply_theme(s, true);
        if (ImGui::MenuItem("Light theme", nullptr, !s.dark)) apply_theme(s, false);
        if (ImGui::MenuItem("Reset layout")) reset_layout = true;
        ImGui::EndMenu();
      }
      if (ImGui::BeginMenu("Help")) {
        ImGui::TextUnformatted(
            "Timeline: wheel zooms at the cursor, shift+wheel scrolls tracks,\n"
            "drag pans, right-drag box-zooms, shift+right-drag pins the analysis window.\n"
            "W/S zoom, A/D pan, F fit, Z zoom to selection, Ctrl+F find, L follow live, Esc "
            "clear.\n"
            "Alerts and request rows jump the timeline; heatmap cells plot the expert's share.");
        ImGui::EndMenu();
      }
      if (!s.banner.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, ImVec4(1.0f, 0.45f, 0.35f, 1.0f));
        ImGui::TextUnformatted(s.banner.c_str());
        ImGui::PopStyleColor();
      } else {
        ImGui::TextDisabled(
            "  %s  |  %llu spans  %zu tracks  %.1f s",
            s.live ? s.live->endpoint().c_str() : o.trace.c_str(),
            static_cast<unsigned long long>(s.model.span_count()), s.model.tracks().size(),
            s.model.empty() ? 0.0 : double(s.model.max_ns() - s.model.min_ns()) * 1e-9);
      }
      menu_h = ImGui::GetWindowSize().y;
      ImGui::EndMainMenuBar();
    }
    if (io.KeyCtrl && ImGui::IsKeyPressed(GLFW_KEY_Q, false)) glfwSetWindowShouldClose(window, 1);

    // [SECTION] Views
    const ImGuiViewport* vp = ImGui::GetMainViewport();
    ImVec2 area_pos(vp->Pos.x, vp->Pos.y + menu_h), area_size(vp->Size.x, vp->Size.y - menu_h);
    using DrawFn = void (*)(AppState&);
    DrawFn fns[] = {draw_timeline, draw_experts, draw_alerts, draw_memory,
                    draw_stages,   draw_details, draw_ep};
    for (int i = 0; i < static_cast<int>(ViewId::kCount); ++i) {
      if (single >= 0 && i != single) continue;
      if (single < 0 && !s.show[i]) continue;
      ImVec2 p, sz;
      window_rect(static_cast<ViewId>(i), area_pos, area_size, single >= 0, p, sz);
      ImGuiCond cond = (reset_layout || single >= 0) ? ImGuiCond_Always : ImGuiCond_FirstUseEver;
      ImGui::SetNextWindowPos(p, cond);
      ImGui::SetNextWindowSize(sz, cond);
      bool* open = single >= 0 ? nullptr : &s.show[i];
      ImGuiWindowFlags flags = single >= 0 ? ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoResize |
                                                 ImGuiWindowFlags_NoCollapse
                                           : 0;
      if (ImGui::Begin(kTitles[i], open, flags)) fns[i](s);
      ImGui::End();
    }
    if (!s.screenshot_mode) reset_layout = false;

    ImGui::Render();
    int fb_w = 0, fb_h = 0;
    glfwGetFramebufferSize(window, &fb_w, &fb_h);
    glViewport(0, 0, fb_w, fb_h);
    ImVec4 bg = ImGui::ColorConvertU32ToFloat4(s.pal.background);
    glClearColor(bg.x, bg.y, bg.z, 1.0f);
    glClear(GL_COLOR_BUFFER_BIT);
    ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());

    // [SECTION] Screenshot mode: after N frames (layout settles), save and exit. Frames drawn
    // while a level-of-detail window is still being built do not count: the picture shows it.
    if (s.screenshot_mode && !(s.lod && s.lod->loading()) && ++frame >= std::max(1, o.frames)) {
      glFinish();
      std::string err;
      if (!write_screenshot_png(o.screenshot, fb_w, fb_h, err)) {
        std::fprintf(stderr, "inferscope-viewer: %s\n", err.c_str());
        exit_code = 1;
      } else {
        int win_w = 0, win_h = 0;
        glfwGetWindowSize(window, &win_w, &win_h);
        write_facts(s, o.screenshot, fb_w, fb_h, win_w > 0 ? float(fb_w) / float(win_w) : 1.0f);
        std::fprintf(stderr, "inferscope-viewer: wrote %s (%dx%d)\n", o.screenshot.c_str(), fb_w,
                     fb_h);
      }
      glfwSetWindowShouldClose(window, 1);
    }
    glfwSwapBuffers(window);
  }

  if (s.live) s.live->stop();
  ImGui_ImplOpenGL3_Shutdown();
  ImGui_ImplGlfw_Shutdown();
  ImGui::DestroyContext();
  glfwDestroyWindow(window);
  glfwTerminate();
  if (!s.load.ok && !o.trace.empty() && s.screenshot_mode) return exit_code ? exit_code : 0;
  return exit_code;
}

}  // namespace inferscope::viewer
