// viewer_bench: the cost of the viewer's data model at timeline scale.
//
//   viewer_bench [--spans N] [--trace FILE] [--width PX] [--frames N]
//
// Writes a synthetic trace of N spans (default 10 million; or reads FILE),
// loads it as the viewer does (read + decode + sort into lanes + flow index),
// then times the per-frame work of the timeline: the level-of-detail query of
// every visible lane for a view PX pixels wide, fully zoomed out and at three
// zoom levels in. Prints ms per frame (CPU time of this one thread).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/lod.hpp"
#include "inferscope/viewer/sample_trace.hpp"

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
size_t frame_query(const TraceModel& m, int64_t t0, int64_t t1, int width, std::vector<DrawItem>& items) {
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

}  // namespace

int main(int argc, char** argv) {
  uint64_t spans = 10'000'000;
  std::string trace;
  int width = 1600, frames = 200;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "viewer_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--spans") spans = std::strtoull(next(), nullptr, 10);
    else if (a == "--trace") trace = next();
    else if (a == "--width") width = std::atoi(next());
    else if (a == "--frames") frames = std::atoi(next());
    else {
      std::fprintf(stderr, "usage: viewer_bench [--spans N] [--trace FILE] [--width PX] [--frames N]\n");
      return 2;
    }
  }
  bool generated = false;
  if (trace.empty()) {
    trace = (std::filesystem::temp_directory_path() / ("viewer_bench_" + std::to_string(spans) + ".trace")).string();
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
    std::printf("generated %s: %llu spans, %.1f MB, %.2f s\n", trace.c_str(), (unsigned long long)s.spans,
                double(s.bytes) / 1e6, wall_s() - t);
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
  std::printf("load: %.2f s wall, %.2f s CPU for %llu spans (%llu records, %zu tracks, %zu lanes) = %.1f M spans/s\n", load_s, load_cpu_s,
              (unsigned long long)m.span_count(), (unsigned long long)m.record_count(), m.tracks().size(), lanes,
              double(m.span_count()) / load_s / 1e6);

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
    std::printf("frame query, %-16s (%d px): mean %.3f ms, p50 %.3f ms, max %.3f ms per frame, %zu draw items\n", z.name,
                width, sum / per.size(), per[per.size() / 2], per.back(), drawn);
  }
  if (generated) std::filesystem::remove(trace);
  return 0;
}
