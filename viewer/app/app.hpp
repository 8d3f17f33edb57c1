// inferscope viewer app: state shared by the views, and the entry point.
//
// [SECTION] Index
//   AppOptions  - command line (main.cpp fills it)
//   AppState    - the model, the view range, selection, per-view settings
//   run_app()   - window, main loop, layout, screenshot mode
//   draw_*()    - one function per view, each in its own view_*.cpp
//
// The views only draw: every number they show comes from the data model
// (inferscope/viewer/*.hpp), which has its own unit tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inferscope/viewer/capture_client.hpp"
#include "inferscope/viewer/captures.hpp"
#include "inferscope/viewer/live_client.hpp"
#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/stats.hpp"
#include "inferscope/viewer/store_view.hpp"
#include "inferscope/viewer/trace_model.hpp"

struct ImDrawList;

namespace inferscope::viewer {

struct AppOptions {
  std::string trace;    // file, directory or Chrome JSON
  std::string connect;  // host:port of a collector's viewer API
  std::string auth_token_file;
  std::string capture_endpoint;  // host:port of a collector's --capture-http
  std::string screenshot;        // write a PNG after `frames` frames and exit
  int frames = 4;
  std::string view = "all";  // timeline|experts|alerts|memory|stages|details|ep|all
  std::string window;        // "10s..20s" relative to the trace start
  int width = 1600, height = 900;
  std::string theme = "dark";
  float scale = 0;  // 0: the monitor's content scale
};

enum class ViewId { kTimeline, kExperts, kAlerts, kMemory, kStages, kDetails, kEp, kCount };

struct Palette {
  uint32_t background, lane_bg, lane_bg_alt, text, text_dim, grid, header_bg, selection, merged,
      flow, hover_outline, hot_outline, window_shade;
};

struct AppState {
  AppOptions options;
  TraceModel model;
  LoadResult load;
  std::unique_ptr<LiveClient> live;
  // A large trace store shown with level of detail (store_view.hpp): the model
  // then holds an overview plus the visible window's blocks, and is rebuilt as
  // the window moves (the selection is dropped then).
  std::unique_ptr<StoreView> lod;
  std::unique_ptr<CaptureClient> capture;  // with --capture-endpoint
  std::string banner;                      // an error the user must see (bad file, ...)

  // [SECTION] Timeline range and selection (absolute monotonic ns, as double)
  double view_t0 = 0, view_t1 = 1;
  bool follow_live = false;
  SpanRef selected;
  bool scroll_to_selected = false;
  std::string find_text;
  std::vector<SpanRef> find_results;
  size_t find_index = 0;
  bool focus_find = false;
  // The analysis window of the experts / memory / stages views: the pinned
  // selection if any, else the visible timeline range.
  bool window_pinned = false;
  int64_t window_t0 = 0, window_t1 = 0;

  // [SECTION] Per-view settings
  uint32_t rank_filter = kAllRanks;
  bool show_utilization = true;  // heatmap: utilization (share x experts) or share
  int selected_layer = -1, selected_expert = -1;
  uint64_t selected_request = 0;
  uint32_t selected_request_source = 0;
  bool show[static_cast<int>(ViewId::kCount)] = {true, true, true, true,
                                                 true, true, false};  // EP: on with EP data

  bool dark = true;
  float scale = 1.0f;
  Palette pal{};
  bool screenshot_mode = false;
  int ep_hot_rank = -1;  // EP view: the hottest rank named (its rows are outlined)

  // What the last frame drew where: read only by the screenshot tests (write_facts puts it
  // next to a --screenshot PNG as JSON); the views fill it while drawing and nothing else
  // reads it, so it is kept apart from the state the views work from.
  struct FrameFacts {
    int drawn_tracks = 0;
    float hot_cell[4] = {-1, -1, -1, -1};  // x0 y0 x1 y1 of a hot heatmap cell
    uint32_t hot_cell_colour = 0;
    uint32_t legend_top_colour = 0;
    float ep_idle_bar[4] = {-1, -1, -1, -1};    // a non-hot rank's idle segment
    float ep_hot_row[4] = {-1, -1, -1, -1};     // the traffic heatmap's hot-rank outline
    float selected_cell[4] = {-1, -1, -1, -1};  // the selected heatmap cell
    double alert_min_start_s = 0;               // alerts view: earliest start shown
    float memory_lanes[3][4] = {};              // memory view: KV, SSM state, checkpoints
    float memory_lane_fill[3] = {};             // used / capacity at the window's end
    uint32_t memory_lane_colour[3] = {};
  } facts;

  int64_t analysis_t0() const;
  int64_t analysis_t1() const;
  void fit_all();
  void jump_to(int64_t t0, int64_t t1, bool pin_window = false);
  void select_span(SpanRef ref);
  double rel_s(int64_t t) const { return double(t - model.min_ns()) * 1e-9; }
};

void apply_theme(AppState& s, bool dark);
uint32_t span_colour(const AppState& s, uint32_t name_id, wire::SpanCategory cat);
// Heat colour ramp for x in [0, 1].
uint32_t heat_colour(double x);
std::string format_duration(double ns);
std::string format_time(double ns_from_start, double step_ns = 0);
std::string format_bytes(double bytes);

// Opens s.options.trace into s.model: with level of detail (s.lod) when it is a
// large trace store with summaries, else whole (load_path).
void load_trace(AppState& s);

void draw_timeline(AppState& s);
void draw_experts(AppState& s);
void draw_alerts(AppState& s);
void draw_memory(AppState& s);
void draw_stages(AppState& s);
void draw_details(AppState& s);
void draw_ep(AppState& s);

bool write_screenshot_png(const std::string& path, int width, int height, std::string& error);
int run_app(AppOptions options);

}  // namespace inferscope::viewer
