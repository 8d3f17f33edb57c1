// viewer_bench: the cost of the viewer's data model at timeline scale.
//
//   viewer_bench [--spans N] [--trace FILE] [--width PX] [--frames N]
//   viewer_bench --make-store DIR [--spans N]
//   viewer_bench --store DIR --mode full|lod [--width PX] [--frames N]
//   viewer_bench --store DIR --zoom sync|async [--width PX]
//
// Without --store: writes a synthetic trace file of N spans (default 10
// million; or reads FILE), loads it as the viewer does (read + decode + sort
// into lanes + flow index), then times the per-frame work of the timeline: the
// level-of-detail query of every visible lane for a view PX pixels wide, fully
// zoomed out and at three zoom levels in. Prints ms per frame (CPU time of
// this one thread).
//
// --make-store writes the same synthetic trace through the collector's trace
// store (blocks with level-of-detail summaries) into DIR. --store then opens
// DIR the way inferscope-viewer does: --mode full decodes everything
// (load_path), --mode lod streams the summaries and decodes the visible
// window's blocks on demand (StoreView). Both print load time, resident bytes
// per span (RSS of the process over the stored spans) and frame times; in lod
// mode a frame is StoreView::update() plus the lane queries, and the first
// frame at each zoom (which loads that window's blocks) is reported apart.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../common/sample_store.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/lod.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/viewer/store_view.hpp"

using namespace inferscope::viewer;

namespace {

double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

double wall_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Same lanes and threshold (3 px) as view_timeline.cpp.
size_t frame_query(const TraceModel& m, int64_t t0, int64_t t1, int width,
                   std::vector<DrawItem>& items) {
  const int64_t min_ns = std::max<int64_t>(1, (t1 - t0) * 3 / width);
  size_t drawn = 0;
  for (uint32_t ti : m.track_order()) {
    const Track& t = m.tracks()[ti];
    size_t cap = (t.type == TrackType::kRequests || t.type == TrackType::kStages) ? 6 : 64;
    for (size_t li = 0; li < t.lanes.size() && li < cap; ++li) {
      items.clear();
      query_lane(t.lanes[li], t0, t1, min_ns, items);
      drawn += items.size();
    }
  }
  return drawn;
}

double rss_bytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return double(resident) * 4096.0;
}

// The synthetic trace, written through a real trace store (with summaries).
int make_store(const std::string& dir, uint64_t spans) {
  std::filesystem::remove_all(dir);
  inferscope::collector::TraceStoreOptions so;
  so.dir = dir;
  so.max_bytes = 64ull << 30;
  so.segment_bytes = 64u << 20;
  so.background = true;
  so.queue_blocks = 1u << 20;  // a bench: never drop
  SampleOptions o;
  o.target_spans = spans;
  o.ranks = 4;
  o.seconds = 60;
  double t = wall_s();
  inferscope::bench::SampleStore written;
  std::string error;
  if (!inferscope::bench::write_sample_store(so, o, written, error)) {
    std::fprintf(stderr, "viewer_bench: %s\n", error.c_str());
    return 1;
  }
  const auto& sum = written.sample;
  const auto& st = written.store;
  std::ofstream(std::filesystem::path(dir) / "spans.txt") << sum.spans << "\n";
  std::printf(
      "store %s: %llu spans, %.1f MB on disk (%.2f B/span, summaries %.2f B/span), %llu blocks, "
      "%.1f s\n",
      dir.c_str(), (unsigned long long)sum.spans, double(st.bytes) / 1e6,
      double(st.bytes) / double(sum.spans), double(st.summary_bytes_written) / double(sum.spans),
      (unsigned long long)st.blocks_written, wall_s() - t);
  return 0;
}

struct Zoom {
  const char* name;
  int64_t t0, t1;
};

std::vector<Zoom> zooms_of(int64_t a, int64_t b) {
  const int64_t mid = a + (b - a) / 2;
  return {{"fully zoomed out", a, b},
          {"1 s window", mid, mid + 1'000'000'000},
          {"10 ms window", mid, mid + 10'000'000},
          {"100 us window", mid, mid + 100'000}};
}

int bench_store(const std::string& dir, const std::string& mode, int width, int frames) {
  uint64_t spans = 0;
  std::ifstream(std::filesystem::path(dir) / "spans.txt") >> spans;
  const double rss0 = rss_bytes();
  TraceModel m;
  StoreView view;
  double t = wall_s(), c0 = cpu_ms();
  LoadResult r = mode == "full" ? load_path(dir, m) : view.open(dir, m);
  const double load_s = wall_s() - t, load_cpu_s = (cpu_ms() - c0) / 1e3;
  if (!r.ok) {
    std::fprintf(stderr, "viewer_bench: %s\n", r.error.c_str());
    return 1;
  }
  if (spans == 0) spans = m.span_count();
  std::printf(
      "%s load of %s: %.2f s wall, %.2f s CPU; %llu spans stored, %llu spans in the model; "
      "resident %.1f B/span\n",
      mode.c_str(), dir.c_str(), load_s, load_cpu_s, (unsigned long long)spans,
      (unsigned long long)m.span_count(), (rss_bytes() - rss0) / double(spans));
  std::vector<DrawItem> items;
  items.reserve(1 << 16);
  double peak_rss = rss_bytes();
  for (const Zoom& z : zooms_of(m.min_ns(), m.max_ns())) {
    // The first frame at a zoom: in lod mode it loads the window's blocks.
    double c = cpu_ms(), w = wall_s();
    if (mode == "lod") view.update(m, z.t0, z.t1, width);
    size_t drawn = frame_query(m, z.t0, z.t1, width, items);
    const double first_ms = (wall_s() - w) * 1e3, first_cpu = cpu_ms() - c;
    peak_rss = std::max(peak_rss, rss_bytes());
    std::vector<double> per;
    uint64_t rebuilds = view.stats().rebuilds;
    for (int f = 0; f < frames; ++f) {
      // Pan a little each frame so nothing is trivially cached.
      int64_t shift = (z.t1 - z.t0) / 1000 * (f % 7);
      c = cpu_ms();
      if (mode == "lod") view.update(m, z.t0 + shift, z.t1 + shift, width);
      drawn = frame_query(m, z.t0 + shift, z.t1 + shift, width, items);
      per.push_back(cpu_ms() - c);
    }
    std::sort(per.begin(), per.end());
    double sum = 0;
    for (double v : per) sum += v;
    std::printf(
        "%-16s (%d px): first frame %.1f ms wall (%.1f ms CPU); then mean %.3f ms, p50 %.3f ms, "
        "max %.3f ms "
        "per frame, %zu draw items, %llu rebuilds while panning, model %llu spans\n",
        z.name, width, first_ms, first_cpu, sum / double(per.size()), per[per.size() / 2],
        per.back(), drawn, (unsigned long long)(view.stats().rebuilds - rebuilds),
        (unsigned long long)m.span_count());
  }
  std::printf("peak resident %.1f B/span (%.0f MB over %.0f MB at start)\n",
              (peak_rss - rss0) / double(spans), (peak_rss - rss0) / 1e6, rss0 / 1e6);
  return 0;
}

int bench_zoom(const std::string& dir, const std::string& how, int width) {
  if (how != "sync" && how != "async") {
    std::fprintf(stderr, "viewer_bench: --zoom sync|async\n");
    return 2;
  }
  const bool async = how == "async";
  TraceModel m;
  StoreView view;
  double t = wall_s();
  LoadResult r = view.open(dir, m);
  if (!r.ok) {
    std::fprintf(stderr, "viewer_bench: %s\n", r.error.c_str());
    return 1;
  }
  std::printf("lod load of %s: %.2f s wall; zoom sequence, %s, %d px, 60 frames/s\n", dir.c_str(),
              wall_s() - t, how.c_str(), width);
  const int64_t a = m.min_ns(), b = m.max_ns(), mid = a + (b - a) / 2;
  std::vector<DrawItem> items;
  items.reserve(1 << 16);
  std::vector<double> wall_ms, cpu_ms_per;
  int loading_frames = 0, hold = 0;
  double w = double(b - a);
  const double start = wall_s();
  double deadline = start;
  double final_in = -1;
  for (int f = 0; f < 100000; ++f) {
    const bool zooming = w > 100'000;
    const int64_t t0 = mid - int64_t(w / 2), t1 = mid + int64_t(w / 2);
    const double c = cpu_ms(), w0 = wall_s();
    if (async)
      view.update_async(m, t0, t1, width);
    else
      view.update(m, t0, t1, width);
    frame_query(m, t0, t1, width, items);
    wall_ms.push_back((wall_s() - w0) * 1e3);
    cpu_ms_per.push_back(cpu_ms() - c);
    const bool loading = async && view.loading();
    loading_frames += loading ? 1 : 0;
    if (zooming) {
      w /= 1.2;
    } else if (!loading) {
      if (final_in < 0) final_in = wall_s() - start;
      if (++hold >= 30) break;  // 30 frames at the final window, all of it in the model
    }
    deadline += 1.0 / 60;
    const double now = wall_s();
    if (deadline > now)
      std::this_thread::sleep_for(std::chrono::duration<double>(deadline - now));
    else
      deadline = now;  // a frame overran: the next tick starts now
  }
  auto report = [](const char* what, std::vector<double> v) {
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (double x : v) sum += x;
    std::printf(
        "  UI thread %s per frame: p50 %.3f ms, p95 %.3f ms, p99 %.3f ms, max %.1f ms, mean %.3f "
        "ms\n",
        what, v[v.size() / 2], v[v.size() * 95 / 100], v[v.size() * 99 / 100], v.back(),
        sum / double(v.size()));
  };
  std::printf(
      "  %zu frames (%d with \"loading\"), %llu windows swapped in, %llu asked for, %llu "
      "superseded; final window in after %.2f s; model %llu spans\n",
      wall_ms.size(), loading_frames, (unsigned long long)view.stats().rebuilds - 1,
      (unsigned long long)view.stats().requests, (unsigned long long)view.stats().superseded,
      final_in, (unsigned long long)m.span_count());
  report("wall", wall_ms);
  report("CPU", cpu_ms_per);
  int over = 0;
  for (double x : wall_ms) over += x > 16.7 ? 1 : 0;
  std::printf("  frames over 16.7 ms (wall): %d\n", over);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t spans = 10'000'000;
  std::string trace;
  int width = 1600, frames = 200;
  std::string store_dir, make_dir, mode = "lod", zoom;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "viewer_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--spans")
      spans = std::strtoull(next(), nullptr, 10);
    else if (a == "--trace")
      trace = next();
    else if (a == "--width")
      width = std::atoi(next());
    else if (a == "--frames")
      frames = std::atoi(next());
    else if (a == "--store")
      store_dir = next();
    else if (a == "--make-store")
      make_dir = next();
    else if (a == "--mode")
      mode = next();
    else if (a == "--zoom")
      zoom = next();
    else {
      std::fprintf(stderr,
                   "usage: viewer_bench [--spans N] [--trace FILE] [--width PX] [--frames N]\n"
                   "       viewer_bench --make-store DIR [--spans N]\n"
                   "       viewer_bench --store DIR --mode full|lod [--width PX] [--frames N]\n"
                   "       viewer_bench --store DIR --zoom sync|async [--width PX]\n");
      return 2;
    }
  }
  if (!make_dir.empty()) return make_store(make_dir, spans);
  if (!store_dir.empty() && !zoom.empty()) return bench_zoom(store_dir, zoom, width);
  if (!store_dir.empty()) return bench_store(store_dir, mode, width, frames);
  bool generated = false;
  if (trace.empty()) {
    trace = (std::filesystem::temp_directory_path() /
             ("viewer_bench_" + std::to_string(spans) + ".trace"))
                .string();
    SampleOptions o;
    o.target_spans = spans;
    o.ranks = 4;
    o.seconds = 60;
    SampleSummary s;
    std::string err;
    double t = wall_s();
    if (!write_sample_trace(trace, o, &s, &err)) {
      std::fprintf(stderr, "viewer_bench: %s\n", err.c_str());
      return 1;
    }
    generated = true;
    std::printf("generated %s: %llu spans, %.1f MB, %.2f s\n", trace.c_str(),
                (unsigned long long)s.spans, double(s.bytes) / 1e6, wall_s() - t);
  }

  TraceModel m;
  double t = wall_s();
  double c0 = cpu_ms();
  LoadResult r = load_path(trace, m);
  double load_s = wall_s() - t;
  double load_cpu_s = (cpu_ms() - c0) / 1e3;
  if (!r.ok) {
    std::fprintf(stderr, "viewer_bench: %s\n", r.error.c_str());
    return 1;
  }
  size_t lanes = 0;
  for (const Track& tr : m.tracks()) lanes += tr.lanes.size();
  std::printf(
      "load: %.2f s wall, %.2f s CPU for %llu spans (%llu records, %zu tracks, %zu lanes) = %.1f M "
      "spans/s\n",
      load_s, load_cpu_s, (unsigned long long)m.span_count(), (unsigned long long)m.record_count(),
      m.tracks().size(), lanes, double(m.span_count()) / load_s / 1e6);

  std::vector<DrawItem> items;
  items.reserve(1 << 16);
  const int64_t a = m.min_ns(), b = m.max_ns(), mid = a + (b - a) / 2;
  struct Zoom {
    const char* name;
    int64_t t0, t1;
  };
  Zoom zooms[] = {{"fully zoomed out", a, b},
                  {"1 s window", mid, mid + 1'000'000'000},
                  {"10 ms window", mid, mid + 10'000'000},
                  {"100 us window", mid, mid + 100'000}};
  for (const Zoom& z : zooms) {
    size_t drawn = frame_query(m, z.t0, z.t1, width, items);  // warm
    std::vector<double> per;
    for (int f = 0; f < frames; ++f) {
      // Pan a little each frame so nothing is trivially cached.
      int64_t shift = (z.t1 - z.t0) / 1000 * (f % 7);
      double c = cpu_ms();
      drawn = frame_query(m, z.t0 + shift, z.t1 + shift, width, items);
      per.push_back(cpu_ms() - c);
    }
    std::sort(per.begin(), per.end());
    double sum = 0;
    for (double v : per) sum += v;
    std::printf(
        "frame query, %-16s (%d px): mean %.3f ms, p50 %.3f ms, max %.3f ms per frame, %zu draw "
        "items\n",
        z.name, width, sum / per.size(), per[per.size() / 2], per.back(), drawn);
  }
  if (generated) std::filesystem::remove(trace);
  return 0;
}
