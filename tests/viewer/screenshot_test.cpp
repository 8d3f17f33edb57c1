// The real inferscope-viewer under Xvfb: load a generated skewed trace, render,
// write a PNG, and check the picture (size, not blank, the hot expert's cell in
// the hot colour, the expected number of timeline tracks). The app writes a
// small JSON of layout facts (where it drew the hot cell, how many tracks) next
// to the PNG; the test reads the pixels there from the PNG itself.
#include <gtest/gtest.h>
#include <stb_image.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/viewer/stats.hpp"
#include "inferscope/wire/codec.hpp"
#include "store_util.hpp"
#include "test_util.hpp"

namespace inferscope::viewer {
namespace {

struct RunResult {
  int status = -1;
  std::string output;
};

RunResult run(const std::string& args) {
  std::string cmd = "xvfb-run -a -s '-screen 0 1920x1200x24' " +
                    std::string(INFERSCOPE_VIEWER_BIN) + " " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

struct Image {
  int w = 0, h = 0;
  std::vector<uint8_t> rgb;
  bool load(const std::string& path) {
    int n = 0;
    unsigned char* d = stbi_load(path.c_str(), &w, &h, &n, 3);
    if (!d) return false;
    rgb.assign(d, d + static_cast<size_t>(w) * h * 3);
    stbi_image_free(d);
    return true;
  }
  uint32_t at(int x, int y) const {
    const uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
    return p[0] | (p[1] << 8) | (p[2] << 16);
  }
  size_t distinct_colours() const {
    std::set<uint32_t> s;
    for (int y = 0; y < h; y += 3)
      for (int x = 0; x < w; x += 3) s.insert(at(x, y));
    return s.size();
  }
};

uint32_t parse_hex(const std::string& s) {
  unsigned v = static_cast<unsigned>(std::strtoul(s.c_str() + 1, nullptr, 16));
  return ((v >> 16) & 0xFF) | (v & 0xFF00) | ((v & 0xFF) << 16);  // #rrggbb -> r | g<<8 | b<<16
}

int channel(uint32_t c, int i) {
  return static_cast<int>((c >> (8 * i)) & 0xFF);
}

bool close_colour(uint32_t a, uint32_t b, int tol = 6) {
  for (int i = 0; i < 3; ++i)
    if (std::abs(channel(a, i) - channel(b, i)) > tol) return false;
  return true;
}

// A sample trace with collector alert episodes appended as one more frame
// (source 0, as the collector writes them).
std::vector<uint8_t> with_alerts(std::vector<uint8_t> trace,
                                 const std::vector<wire::AlertEpisode>& alerts) {
  wire::EncoderOptions o;
  o.source_id = wire::kCollectorSource;
  o.compress = false;
  wire::FrameEncoder enc(o);
  for (const auto& a : alerts) enc.add(wire::Record(a));
  std::vector<uint8_t> frame;
  enc.finish(frame);
  trace.insert(trace.end(), frame.begin(), frame.end());
  return trace;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

class ViewerScreenshot : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("command -v xvfb-run >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "xvfb-run not installed";
    SampleOptions o;  // 2 ranks, hot expert 5 on layer 3 of rank 0 from 6 s to 14 s
    std::string err;
    ASSERT_TRUE(write_sample_trace(trace(), o, &summary, &err)) << err;
  }
  std::string trace() const { return dir.file("skewed.trace"); }
  nlohmann::json facts(const std::string& png) {
    std::ifstream in(png + ".json");
    return nlohmann::json::parse(in, nullptr, false);
  }
  test::TempDir dir;
  SampleSummary summary;
};

TEST_F(ViewerScreenshot, AllViewsPictureIsRightSizeAndNotBlank) {
  std::string png = dir.file("all.png");
  RunResult r =
      run(trace() + " --screenshot " + png + " --frames 3 --view all --width 1280 --height 760");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png)) << r.output;
  EXPECT_EQ(img.w, 1280);
  EXPECT_EQ(img.h, 760);
  EXPECT_GT(img.distinct_colours(), 100u);
  nlohmann::json f = facts(png);
  ASSERT_FALSE(f.is_discarded());
  // Two ranks, each: scheduler thread, GPU streams 7 and 8, requests, stages.
  EXPECT_EQ(f["tracks"].get<int>(), 10);
}

TEST_F(ViewerScreenshot, HotExpertCellHasTheHotColour) {
  std::string png = dir.file("experts.png");
  // The hot window only: expert 5 of layer 3 carries ~4x its fair share.
  RunResult r = run(trace() + " --screenshot " + png +
                    " --view experts --window 8s..13s --width 1000 --height 640");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  EXPECT_EQ(img.w, 1000);
  EXPECT_EQ(img.h, 640);
  nlohmann::json f = facts(png);
  ASSERT_FALSE(f.is_discarded());
  auto cell = f["hot_cell"];
  ASSERT_GE(cell[0].get<double>(), 0) << "no hot cell drawn";
  int cx = static_cast<int>((cell[0].get<double>() + cell[2].get<double>()) / 2);
  int cy = static_cast<int>((cell[1].get<double>() + cell[3].get<double>()) / 2);
  ASSERT_LT(cx, img.w);
  ASSERT_LT(cy, img.h);
  uint32_t px = img.at(cx, cy);
  // The hottest cell sits at the top of the colour scale (red), unlike a fair one.
  EXPECT_TRUE(close_colour(px, parse_hex(f["legend_top_colour"].get<std::string>()), 12))
      << std::hex << px << " vs " << f["legend_top_colour"];
  EXPECT_GT(channel(px, 0), 170);
  EXPECT_LT(channel(px, 2), 90);
  // A neighbouring (fair) cell is not hot-coloured.
  int w = static_cast<int>(cell[2].get<double>() - cell[0].get<double>()) + 10;
  uint32_t fair = img.at(cx + 2 * w, cy);
  EXPECT_FALSE(close_colour(fair, px, 30)) << std::hex << fair;
}

TEST(ViewerScreenshotEp, HotRankNamedAndOthersIdleWaitingForIt) {
  if (std::system("command -v xvfb-run >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "xvfb-run not installed";
  test::TempDir dir;
  SampleOptions o;  // hot expert 5 from 6 s to 14 s; 16 experts on 4 EP ranks: rank 1 holds it
  o.ranks = 4;
  o.expert_parallel = true;
  std::string err;
  const std::string trace = dir.file("ep.trace");
  ASSERT_TRUE(write_sample_trace(trace, o, nullptr, &err)) << err;
  const std::string png = dir.file("ep.png");
  RunResult r =
      run(trace + " --screenshot " + png + " --view ep --window 7s..12s --width 1100 --height 720");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  EXPECT_EQ(img.w, 1100);
  EXPECT_GT(img.distinct_colours(), 30u);
  std::ifstream in(png + ".json");
  nlohmann::json f = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(f.is_discarded());
  EXPECT_EQ(f["ep_hot_rank"].get<int>(),
            static_cast<int>((o.hot_expert % o.experts) / (o.experts / o.ranks)));
  // A rank that is not hot waits for the hot one: its idle segment is drawn, in the idle colour.
  auto bar = f["ep_idle_bar"];
  ASSERT_GE(bar[0].get<double>(), 0) << "no idle segment drawn";
  int cx = static_cast<int>((bar[0].get<double>() + bar[2].get<double>()) / 2);
  int cy = static_cast<int>((bar[1].get<double>() + bar[3].get<double>()) / 2);
  ASSERT_LT(cx, img.w);
  ASSERT_LT(cy, img.h);
  EXPECT_TRUE(close_colour(img.at(cx, cy), 0x5050E0, 12)) << std::hex << img.at(cx, cy);
  // Issue 24: the traffic heatmap outlines the hot rank's row (its left edge, mid-height).
  auto row = f["ep_hot_row"];
  ASSERT_GE(row[0].get<double>(), 0) << "no traffic heatmap drawn";
  const int rx = static_cast<int>(row[0].get<double>()),
            ry = static_cast<int>((row[1].get<double>() + row[3].get<double>()) / 2);
  ASSERT_LT(ry, img.h) << "heatmap below the window";
  EXPECT_TRUE(close_colour(img.at(rx, ry), 0x4060F0, 24)) << std::hex << img.at(rx, ry);
}

TEST_F(ViewerScreenshot, TimelineLightThemeShowsEveryTrack) {
  std::string png = dir.file("timeline.png");
  RunResult r = run(trace() + " --screenshot " + png +
                    " --view timeline --window 7.0s..7.3s --theme light --width 900 --height 1000");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  EXPECT_EQ(img.w, 900);
  EXPECT_GT(img.distinct_colours(), 50u);
  // Light theme: the corner is light.
  EXPECT_GT(channel(img.at(img.w - 3, img.h - 3), 1), 200);
  EXPECT_EQ(facts(png)["tracks"].get<int>(), 10);
}

TEST(ViewerScreenshotStore, LargeTraceStoreOpensWithLevelOfDetail) {
  if (std::system("command -v xvfb-run >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "xvfb-run not installed";
  // A collector's trace directory with summaries, past the 2 M records from
  // which the viewer streams summaries instead of decoding everything.
  test::TempDir dir;
  const std::string store = dir.file("store");
  test::write_store(store, 2'500'000, true, 256u << 10);
  const std::string png = dir.file("lod.png");
  RunResult r = run(store + " --screenshot " + png +
                    " --view timeline --window 0s..21s --width 1280 --height 900");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png)) << r.output;
  EXPECT_GT(img.distinct_colours(), 50u);
  nlohmann::json f = nlohmann::json::parse(std::ifstream(png + ".json"), nullptr, false);
  ASSERT_FALSE(f.is_discarded());
  EXPECT_EQ(f["tracks"].get<int>(), 10);
  // The model holds the overview, not the 2.5 M spans.
  EXPECT_GT(f["spans"].get<int>(), 100);
  EXPECT_LT(f["spans"].get<int>(), 250'000);
  // Zoomed into 5 ms, the window's blocks are loaded: more spans than the overview.
  const std::string png2 = dir.file("lod-zoom.png");
  RunResult r2 = run(store + " --screenshot " + png2 +
                     " --view timeline --window 10.000s..10.005s --width 1280 --height 900");
  ASSERT_EQ(r2.status, 0) << r2.output;
  nlohmann::json f2 = nlohmann::json::parse(std::ifstream(png2 + ".json"), nullptr, false);
  ASSERT_FALSE(f2.is_discarded());
  EXPECT_GT(f2["spans"].get<int>(), f["spans"].get<int>());
  EXPECT_EQ(f2["tracks"].get<int>(), 10);
}

TEST_F(ViewerScreenshot, TruncatedTraceShowsWhatWasRecovered) {
  std::ifstream in(trace(), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string cut = dir.file("cut.trace");
  std::ofstream(cut, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size() * 3 / 4));
  std::string png = dir.file("cut.png");
  RunResult r = run(cut + " --screenshot " + png + " --width 800 --height 600");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("damaged"), std::string::npos) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  EXPECT_GT(facts(png)["tracks"].get<int>(), 0);
}

TEST_F(ViewerScreenshot, GarbageFileIsAnErrorNotACrash) {
  std::string junk = dir.file("junk.trace");
  std::ofstream(junk) << "this is not a trace";
  std::string png = dir.file("junk.png");
  RunResult r = run(junk + " --screenshot " + png + " --width 640 --height 400");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Could not open"), std::string::npos) << r.output;
  Image img;
  EXPECT_TRUE(img.load(png));
}

// [SECTION] Where the viewer opens, and what it shows first (issue: the first ten minutes)

// The collector's first window began before the first record, so an episode
// starts before it: the alerts table must not show a negative start (-911.4 ms).
TEST(ViewerScreenshotStart, AlertThatStartedBeforeTheFirstRecordHasNoNegativeStart) {
  if (std::system("command -v xvfb-run >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "xvfb-run not installed";
  test::TempDir dir;
  SampleOptions o;
  wire::AlertEpisode early;
  early.kind = wire::AlertKind::kColdExpert;
  early.layer = 1;
  early.expert = 2;
  early.start_ns = o.t0_ns - 911'400'000;
  early.end_ns = o.t0_ns + 3'000'000'000;
  early.model = "hybrid-moe";
  const std::string trace = dir.file("early.trace");
  write_file(trace, with_alerts(sample_trace_bytes(o), {early}));
  const std::string png = dir.file("alerts.png");
  RunResult r = run(trace + " --screenshot " + png + " --view alerts --width 900 --height 400");
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(png + ".json");
  nlohmann::json f = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(f.is_discarded());
  EXPECT_GE(f["alert_min_start_s"].get<double>(), 0.0);
  // The early episode is the first row: it starts at the very beginning of the trace.
  EXPECT_NEAR(f["alert_min_start_s"].get<double>(), 0.0, 1e-6);
}

// Without --window the timeline opens on a few seconds around the latest alert
// (the drop burst at 8 s of the sample), not on the whole 20 s trace.
TEST_F(ViewerScreenshot, TimelineOpensOnTheLatestAlertNotTheWholeTrace) {
  std::string png = dir.file("start.png");
  RunResult r =
      run(trace() + " --screenshot " + png + " --view timeline --width 1200 --height 800");
  ASSERT_EQ(r.status, 0) << r.output;
  nlohmann::json f = facts(png);
  ASSERT_FALSE(f.is_discarded());
  const double t0 = f["view_s"][0].get<double>(), t1 = f["view_s"][1].get<double>();
  SampleOptions o;
  const double latest_alert_s = o.hot_from_s + 2.0;  // sample_trace.cpp: the drop burst
  EXPECT_LE(t1 - t0, 5.0 + 1e-6);
  EXPECT_LT(t1 - t0, f["trace_s"].get<double>() / 2);
  EXPECT_LE(t0, latest_alert_s);
  EXPECT_GE(t1, latest_alert_s);
  EXPECT_EQ(f["tracks"].get<int>(), 10);
}

// A first, mild hot-expert episode on layer 1 / expert 9 must not win the
// preselection over the reddest cell (the sample's hot expert 5 of layer 3).
TEST(ViewerScreenshotStart, ExpertsViewPreselectsTheReddestCell) {
  if (std::system("command -v xvfb-run >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "xvfb-run not installed";
  test::TempDir dir;
  SampleOptions o;
  wire::AlertEpisode mild;
  mild.kind = wire::AlertKind::kHotExpert;
  mild.layer = 1;
  mild.expert = 9;
  mild.start_ns = o.t0_ns + 1'000'000'000;
  mild.end_ns = o.t0_ns + 3'000'000'000;
  mild.peak_share = 0.12f;
  mild.peak_utilization = 1.9f;
  mild.model = "hybrid-moe";
  const std::string trace = dir.file("mild.trace");
  write_file(trace, with_alerts(sample_trace_bytes(o), {mild}));
  const std::string png = dir.file("experts.png");
  RunResult r = run(trace + " --screenshot " + png + " --view experts --width 1000 --height 640");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  std::ifstream in(png + ".json");
  nlohmann::json f = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(f.is_discarded());
  EXPECT_EQ(f["selected"][0].get<int>(), static_cast<int>(o.hot_layer));
  EXPECT_EQ(f["selected"][1].get<int>(), static_cast<int>(o.hot_expert));
  auto cell = f["selected_cell"];
  ASSERT_GE(cell[0].get<double>(), 0) << "selected cell not drawn";
  int cx = static_cast<int>((cell[0].get<double>() + cell[2].get<double>()) / 2);
  int cy = static_cast<int>((cell[1].get<double>() + cell[3].get<double>()) / 2);
  ASSERT_LT(cx, img.w);
  ASSERT_LT(cy, img.h);
  // The selected cell is the top of the colour scale: the reddest one.
  EXPECT_TRUE(
      close_colour(img.at(cx, cy), parse_hex(f["legend_top_colour"].get<std::string>()), 12))
      << std::hex << img.at(cx, cy) << " vs " << f["legend_top_colour"];
}

// KV cache, SSM state and checkpoints each fill their own lane to used /
// capacity: a 16 GiB KV cache does not flatten a 1 GiB checkpoint pool, and the
// other way round.
TEST_F(ViewerScreenshot, MemoryLanesShowEachKindAgainstItsOwnCapacity) {
  std::string png = dir.file("memory.png");
  RunResult r = run(trace() + " --screenshot " + png +
                    " --view memory --window 15s..19s --width 1000 --height 700");
  ASSERT_EQ(r.status, 0) << r.output;
  Image img;
  ASSERT_TRUE(img.load(png));
  nlohmann::json f = facts(png);
  ASSERT_FALSE(f.is_discarded());
  // The figures the lanes must show, from the data model.
  TraceModel m;
  ASSERT_TRUE(load_path(trace(), m).ok);
  const int64_t t0 = m.min_ns() + 15'000'000'000, t1 = m.min_ns() + 19'000'000'000;
  MemorySeries ms = memory_series(m, t0, t1, 50);
  const wire::MemoryKind kinds[] = {wire::MemoryKind::kKvCache, wire::MemoryKind::kSsmState,
                                    wire::MemoryKind::kSsmCheckpoints};
  ASSERT_EQ(f["memory_lanes"].size(), 3u);
  for (int k = 0; k < 3; ++k) {
    SCOPED_TRACE(wire::to_string(kinds[k]));
    const auto& lane = f["memory_lanes"][k];
    const size_t kind = static_cast<size_t>(kinds[k]);
    const double expected = ms.used[kind].back() / ms.capacity[kind].back();
    const double fill = lane["fill"].get<double>();
    EXPECT_NEAR(fill, expected, 0.01);
    EXPECT_GT(fill, 0.1);  // visible in its own lane, whatever the other kinds' sizes
    const double x1 = lane["rect"][2].get<double>(), y0 = lane["rect"][1].get<double>(),
                 y1 = lane["rect"][3].get<double>();
    const int x = static_cast<int>(x1) - 3;
    ASSERT_LT(x, img.w);
    ASSERT_LT(static_cast<int>(y1), img.h);
    const uint32_t colour = parse_hex(lane["colour"].get<std::string>());
    const int in_fill = static_cast<int>(y1 - fill * (y1 - y0) / 2);
    EXPECT_TRUE(close_colour(img.at(x, in_fill), colour)) << std::hex << img.at(x, in_fill);
    if (fill < 0.85) {
      const int above = static_cast<int>(y0 + (1 - fill) * (y1 - y0) / 2);
      EXPECT_FALSE(close_colour(img.at(x, above), colour)) << std::hex << img.at(x, above);
    }
  }
}

}  // namespace
}  // namespace inferscope::viewer
