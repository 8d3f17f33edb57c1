// StoreView: a real trace store (the collector's, with level-of-detail
// summaries) of a generated trace, shown with level of detail, against the
// same directory loaded whole by load_path(): the overview keeps every
// non-span record and accounts for every stored span; a narrow window shows
// exactly the stored spans; zooming out drops the detail again; the block
// cache stays within its bound.
#include "inferscope/viewer/store_view.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
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

}  // namespace
