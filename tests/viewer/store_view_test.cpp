// StoreView: a real trace store (the collector's, with level-of-detail
// summaries) of a generated trace, shown with level of detail, against the
// same directory loaded whole by load_path(): the overview keeps every
// non-span record and accounts for every stored span; a narrow window shows
// exactly the stored spans; zooming out drops the detail again; the block
// cache stays within its bound. Asynchronously (update_async): the answer is the model the
// synchronous path builds, the model is unchanged until it comes, requests that wait are
// replaced by newer ones (counted, never built), and a StoreView destroyed mid-build is clean.
#include "inferscope/viewer/store_view.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/viewer/lod.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "store_util.hpp"
#include "test_util.hpp"

using namespace inferscope::viewer;
namespace wire = inferscope::wire;
namespace collector = inferscope::collector;

namespace {

using test::write_store;

// Spans stored on CPU / GPU tracks (request and stage tracks are made from
// other records), with merged spans counted as the spans they stand for.
uint64_t stored_spans(const TraceModel& m) {
  const uint32_t merged = m.find_name("(merged spans)");
  uint64_t n = 0;
  for (const Track& t : m.tracks()) {
    if (t.type != TrackType::kCpuThread && t.type != TrackType::kGpuStream) continue;
    for (const Lane& l : t.lanes)
      for (const SpanRec& s : l.spans)
        n += merged != 0 && s.name == merged && s.num_args > 0 ? uint64_t(m.args()[s.args].value)
                                                               : 1;
  }
  return n;
}

using Drawn = std::tuple<std::string, int64_t, int64_t, std::string, uint64_t>;
// Every span of CPU / GPU tracks that intersects [t0, t1], by track label and name.
std::vector<Drawn> spans_in(const TraceModel& m, int64_t t0, int64_t t1) {
  std::vector<Drawn> out;
  for (const Track& t : m.tracks()) {
    if (t.type != TrackType::kCpuThread && t.type != TrackType::kGpuStream) continue;
    const std::string track = t.label + "@" + std::to_string(t.source);
    for (const Lane& l : t.lanes)
      for (const SpanRec& s : l.spans)
        if (s.end_ns >= t0 && s.start_ns <= t1)
          out.emplace_back(track, s.start_ns, s.end_ns, m.name(s.name), s.correlation_id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

class StoreViewTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    write_store(dir_->path.string(), 400'000, true);
    full_ = new TraceModel();
    LoadResult r = load_path(dir_->path.string(), *full_);
    ASSERT_TRUE(r.ok) << r.error;
    ASSERT_TRUE(r.warnings.empty()) << r.warnings.front();
  }
  static void TearDownTestSuite() {
    delete full_;
    delete dir_;
  }
  static test::TempDir* dir_;
  static TraceModel* full_;
};
test::TempDir* StoreViewTest::dir_ = nullptr;
TraceModel* StoreViewTest::full_ = nullptr;

TEST_F(StoreViewTest, WorthItOnlyForLargeStoresWithSummaries) {
  StoreViewOptions o;
  o.min_records = 1000;
  EXPECT_TRUE(StoreView::worth_it(dir_->path.string(), o));
  o.min_records = 1'000'000'000;
  EXPECT_FALSE(StoreView::worth_it(dir_->path.string(), o));
  test::TempDir old;
  write_store(old.path.string(), 20'000, false);  // format 2: no summaries
  o.min_records = 1;
  EXPECT_FALSE(StoreView::worth_it(old.path.string(), o));
  EXPECT_FALSE(StoreView::worth_it(dir_->file("nothing-here"), o));
  StoreView v;
  TraceModel m;
  LoadResult r = v.open(old.path.string(), m);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("summaries"), std::string::npos) << r.error;
}

TEST_F(StoreViewTest, OverviewKeepsEveryRecordAndAccountsForEverySpan) {
  StoreView v;
  TraceModel m;
  LoadResult r = v.open(dir_->path.string(), m);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_GT(v.stats().summaries, 0u);
  EXPECT_EQ(m.min_ns(), full_->min_ns());
  EXPECT_EQ(m.max_ns(), full_->max_ns());
  // Far fewer spans held, each stored span accounted for by exactly one of them.
  EXPECT_LT(m.span_count() * 4, full_->span_count());
  EXPECT_EQ(stored_spans(m), stored_spans(*full_));
  // Every other record exactly: the other views see all of them.
  EXPECT_EQ(m.expert_loads().size(), full_->expert_loads().size());
  // Summaries keep each source's records in order, not the interleaving of sources.
  auto sorted = [](std::vector<uint32_t> counts) {
    std::sort(counts.begin(), counts.end());
    return counts;
  };
  EXPECT_EQ(sorted(m.expert_counts()), sorted(full_->expert_counts()));
  EXPECT_EQ(m.memory().size(), full_->memory().size());
  EXPECT_EQ(m.requests().size(), full_->requests().size());
  EXPECT_EQ(m.stages().size(), full_->stages().size());
  EXPECT_EQ(m.alerts().size(), full_->alerts().size());
  EXPECT_EQ(m.counters().size(), full_->counters().size());
  EXPECT_EQ(m.sources().size(), full_->sources().size());
  for (const auto& [id, src] : full_->sources()) {
    ASSERT_NE(m.source(id), nullptr) << id;
    EXPECT_EQ(m.source(id)->label, src.label);
  }
}

TEST_F(StoreViewTest, NarrowWindowShowsExactlyTheStoredSpans) {
  StoreView v;
  TraceModel m;
  ASSERT_TRUE(v.open(dir_->path.string(), m).ok);
  const uint64_t overview_spans = m.span_count();
  const size_t overview_args = m.args().size();
  const int64_t mid = full_->min_ns() + (full_->max_ns() - full_->min_ns()) / 2;
  // 5 ms over 4000 px: a 3.75 us merge threshold, finer than every summary level.
  const int64_t t0 = mid, t1 = mid + 5'000'000;
  ASSERT_TRUE(v.update(m, t0, t1, 4000));
  EXPECT_EQ(v.stats().detail_level_ns, 0);
  const auto want = spans_in(*full_, t0, t1);
  ASSERT_GT(want.size(), 50u);
  EXPECT_TRUE(spans_in(m, t0, t1) == want);
  // Panning within the loaded margin does not reload.
  EXPECT_FALSE(v.update(m, t0 + 200'000, t1 + 200'000, 4000));
  EXPECT_TRUE(spans_in(m, t0 + 200'000, t1 + 200'000) ==
              spans_in(*full_, t0 + 200'000, t1 + 200'000));
  // A wider window at a summary level: still every stored span accounted for.
  ASSERT_TRUE(v.update(m, mid, mid + 1'000'000'000, 1600));
  EXPECT_GT(v.stats().detail_level_ns, 0);
  EXPECT_EQ(stored_spans(m), stored_spans(*full_));
  // Rebuilds swap spans only: every other record, and the request and stage
  // tracks made from them, stay as they were.
  EXPECT_EQ(m.expert_loads().size(), full_->expert_loads().size());
  EXPECT_EQ(m.requests().size(), full_->requests().size());
  auto synthetic = [](const TraceModel& model) {
    uint64_t n = 0;
    for (const Track& t : model.tracks())
      if (t.type == TrackType::kRequests || t.type == TrackType::kStages) n += t.span_count;
    return n;
  };
  EXPECT_EQ(synthetic(m), synthetic(*full_));
  // Back out to the whole trace: the overview alone again, arguments included
  // (a rebuild drops the arguments of the spans it drops).
  ASSERT_TRUE(v.update(m, full_->min_ns(), full_->max_ns(), 1600));
  EXPECT_EQ(v.stats().detail_level_ns, -1);
  EXPECT_EQ(m.span_count(), overview_spans);
  EXPECT_EQ(m.args().size(), overview_args);
  EXPECT_EQ(stored_spans(m), stored_spans(*full_));
}

TEST_F(StoreViewTest, BlockCacheStaysWithinItsBound) {
  StoreViewOptions o;
  o.cache_bytes = 256u << 10;
  StoreView v(o);
  TraceModel m;
  ASSERT_TRUE(v.open(dir_->path.string(), m).ok);
  const int64_t a = full_->min_ns(), b = full_->max_ns();
  for (int i = 0; i < 10; ++i) {
    const int64_t t0 = a + (b - a) / 10 * i;
    v.update(m, t0, t0 + 2'000'000, 4000);
    // One block over the bound at most: the one just added always stays.
    EXPECT_LE(v.stats().cache_bytes, o.cache_bytes + (64u << 10)) << i;
    EXPECT_TRUE(spans_in(m, t0, t0 + 2'000'000) == spans_in(*full_, t0, t0 + 2'000'000)) << i;
  }
  EXPECT_EQ(stored_spans(m), stored_spans(*full_));
}

// update_async() as the app calls it, once a frame, until the answer is in. Polls; the
// timeout is only there so a broken worker fails the test instead of hanging it.
bool settle(StoreView& v, TraceModel& m, int64_t t0, int64_t t1, int px) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (v.update_async(m, t0, t1, px), v.loading()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Holds the worker at the start of each build until released (StoreViewOptions::on_build_start).
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int entered = 0;
  void enter() {
    std::unique_lock lk(mu);
    ++entered;
    cv.notify_all();
    cv.wait(lk, [&] { return open; });
  }
  bool wait_entered(int n) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(120), [&] { return entered >= n; });
  }
  void release() {
    std::lock_guard lk(mu);
    open = true;
    cv.notify_all();
  }
};

TEST_F(StoreViewTest, AsyncAnswerIsWhatTheSynchronousPathBuilds) {
  StoreView sync_view, async_view;
  TraceModel sync_m, async_m;
  ASSERT_TRUE(sync_view.open(dir_->path.string(), sync_m).ok);
  ASSERT_TRUE(async_view.open(dir_->path.string(), async_m).ok);
  const int64_t a = full_->min_ns(), b = full_->max_ns(), mid = a + (b - a) / 2;
  struct W {
    int64_t t0, t1;
    int px;
  };
  // Stored spans, a summary level, a jump elsewhere, back to the overview.
  const W windows[] = {{mid, mid + 5'000'000, 4000},
                       {mid, mid + 1'000'000'000, 1600},
                       {a + (b - a) / 5, a + (b - a) / 5 + 2'000'000, 4000},
                       {a, b, 1600}};
  for (const W& w : windows) {
    const uint64_t before = async_m.span_count();
    const auto shown = spans_in(async_m, a, b);
    ASSERT_TRUE(sync_view.update(sync_m, w.t0, w.t1, w.px));
    // Asking returns at once and changes nothing: the model shows what it had until the
    // answer is swapped in by a later call.
    EXPECT_FALSE(async_view.update_async(async_m, w.t0, w.t1, w.px));
    EXPECT_TRUE(async_view.loading());
    EXPECT_EQ(async_m.span_count(), before);
    EXPECT_TRUE(spans_in(async_m, a, b) == shown);
    ASSERT_TRUE(settle(async_view, async_m, w.t0, w.t1, w.px));
    EXPECT_EQ(async_view.stats().detail_level_ns, sync_view.stats().detail_level_ns);
    EXPECT_EQ(async_m.span_count(), sync_m.span_count());
    EXPECT_EQ(async_m.args().size(), sync_m.args().size());
    EXPECT_EQ(async_m.tracks().size(), sync_m.tracks().size());
    EXPECT_TRUE(spans_in(async_m, a, b) == spans_in(sync_m, a, b));
    EXPECT_EQ(stored_spans(async_m), stored_spans(*full_));
    // The other records are untouched by either path.
    EXPECT_EQ(async_m.expert_loads().size(), full_->expert_loads().size());
    EXPECT_EQ(async_m.requests().size(), full_->requests().size());
  }
  // A narrow window at the stored level is exactly the stored spans, as the full load has.
  ASSERT_TRUE(settle(async_view, async_m, mid, mid + 5'000'000, 4000));
  EXPECT_TRUE(spans_in(async_m, mid, mid + 5'000'000) == spans_in(*full_, mid, mid + 5'000'000));
  EXPECT_EQ(async_view.stats().superseded, 0u);
}

TEST_F(StoreViewTest, AsyncNewerRequestsReplaceWaitingOnes) {
  Gate gate;
  StoreViewOptions o;
  std::atomic<int> builds{0};
  o.on_build_start = [&] {
    ++builds;
    gate.enter();
  };
  StoreView v(o);
  TraceModel m;
  ASSERT_TRUE(v.open(dir_->path.string(), m).ok);
  const int64_t a = full_->min_ns(), b = full_->max_ns();
  const int64_t step = (b - a) / 8;
  // The user zooms into one place, then keeps jumping while the first window is built.
  EXPECT_FALSE(v.update_async(m, a + step, a + step + 2'000'000, 4000));
  ASSERT_TRUE(gate.wait_entered(1));  // the worker holds the first request
  for (int i = 2; i <= 5; ++i)
    EXPECT_FALSE(v.update_async(m, a + i * step, a + i * step + 2'000'000, 4000));
  EXPECT_EQ(v.stats().requests, 5u);
  EXPECT_EQ(v.stats().superseded, 3u);  // the 2nd, 3rd and 4th never started
  EXPECT_TRUE(v.loading());
  gate.release();
  const int64_t t0 = a + 5 * step, t1 = t0 + 2'000'000;
  ASSERT_TRUE(settle(v, m, t0, t1, 4000));
  EXPECT_EQ(builds.load(), 2);        // the first and the last window, nothing in between
  EXPECT_EQ(v.stats().rebuilds, 3u);  // the overview, then the two answers
  EXPECT_TRUE(spans_in(m, t0, t1) == spans_in(*full_, t0, t1));
  EXPECT_EQ(stored_spans(m), stored_spans(*full_));
}

TEST_F(StoreViewTest, AsyncDestroyedWhileBuildingIsClean) {
  // Destroyed mid-build, with a request waiting behind it, and with an answer not taken: the
  // worker stops, nothing leaks (the ASan build runs this), the model keeps what it showed.
  const int64_t a = full_->min_ns(), b = full_->max_ns(), mid = a + (b - a) / 2;
  ASSERT_LT(a, b);
  TraceModel m;
  {
    std::atomic<int> started{0};
    StoreViewOptions o;
    o.on_build_start = [&] { ++started; };
    auto v = std::make_unique<StoreView>(o);
    ASSERT_TRUE(v->open(dir_->path.string(), m).ok);
    const uint64_t overview = m.span_count();
    v->update_async(m, mid - 200'000'000, mid, 4000);  // a 200 ms window in detail
    v->update_async(m, a, a + 200'000'000, 4000);      // waits behind it
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (started.load() == 0 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(started.load(), 1);
    v.reset();  // joins the worker
    EXPECT_EQ(m.span_count(), overview);
  }
  {
    Gate gate;
    StoreViewOptions o;
    o.on_build_start = [&] { gate.enter(); };
    StoreView v(o);
    TraceModel m2;
    ASSERT_TRUE(v.open(dir_->path.string(), m2).ok);
    v.update_async(m2, mid, mid + 5'000'000, 4000);
    ASSERT_TRUE(gate.wait_entered(1));
    gate.release();
    // Wait for the answer without taking it, then destroy: the built window is freed unused.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!v.answer_ready() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_TRUE(v.answer_ready());
  }
}

}  // namespace
