// StoreView: a summarized overview of a trace store, with the visible window's blocks in detail.
#include "inferscope/viewer/store_view.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <unordered_set>

#include "inferscope/wire/trace_file.hpp"

namespace inferscope::viewer {
namespace fs = std::filesystem;

namespace {

// Segment files that may hold summaries (format 3 or 4) of a directory, in name order (the store
// numbers them).
std::vector<std::string> summary_segments(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file(ec)) continue;
    std::ifstream in(e.path(), std::ios::binary);
    uint8_t h[wire::kTraceFileHeaderBytes] = {};
    in.read(reinterpret_cast<char*>(h), sizeof h);
    if (in.gcount() != sizeof h || wire::trace_file_format(h) != 2) continue;
    if (wire::trace_format_has_summaries(static_cast<uint16_t>(h[10] | h[11] << 8)))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The largest summary level at most res_ns (0 when res_ns is finer than every level).
int64_t level_at_most(int64_t res_ns) {
  int64_t best = 0;
  for (int k = 1; k <= wire::kMaxSummaryLevel && wire::summary_level_ns(k) <= res_ns; ++k)
    best = wire::summary_level_ns(k);
  return best;
}

}  // namespace

StoreView::StoreView(StoreViewOptions options) : options_(options) {}

StoreView::~StoreView() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;  // a build in progress stops at its next block
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
}

bool StoreView::worth_it(const std::string& path, const StoreViewOptions& options) {
  uint64_t records = 0;
  for (const auto& f : summary_segments(path)) {
    wire::BlockScan scan;
    std::string error;
    if (!wire::scan_blocks(f, scan, error)) continue;
    for (const auto& b : scan.blocks)
      if (b.header.summary_level() == 0) records += b.header.records;
    if (records >= options.min_records) return true;
  }
  return false;
}

LoadResult StoreView::open(const std::string& dir, TraceModel& model) {
  LoadResult r;
  files_ = summary_segments(dir);
  if (files_.empty()) {
    r.error = "no trace segments with level-of-detail summaries in " + dir;
    return r;
  }
  min_ns_ = INT64_MAX;
  max_ns_ = INT64_MIN;
  for (uint32_t f = 0; f < files_.size(); ++f) {
    wire::BlockScan scan;
    std::string error;
    fds_.push_back(::open(files_[f].c_str(), O_RDONLY | O_CLOEXEC));
    if (fds_.back() < 0 || !wire::scan_blocks(files_[f], scan, error)) {
      r.warnings.push_back(error.empty() ? "cannot open " + files_[f] : error);
      continue;
    }
    if (scan.torn_tail) r.warnings.push_back(files_[f] + ": " + scan.tail_problem);
    ++r.files;
    for (const auto& b : scan.blocks) {
      if (b.header.summary_level() != 0) {
        // A summary belongs to the data block just before it in the same file.
        if (!blocks_.empty() && blocks_.back().file == f) blocks_.back().summaries.push_back(b);
        ++stats_.summaries;
        continue;
      }
      blocks_.push_back({f, b, {}});
      ++stats_.blocks;
      stats_.stored_records += b.header.records;
      if (b.header.min_ns <= b.header.max_ns) {
        min_ns_ = std::min(min_ns_, b.header.min_ns);
        max_ns_ = std::max(max_ns_, b.header.max_ns);
      }
    }
  }
  if (r.files == 0) {
    r.error = "no readable trace segment in " + dir;
    return r;
  }
  overview_ns_ =
      min_ns_ <= max_ns_ ? std::max<int64_t>(1, (max_ns_ - min_ns_) / options_.overview_px) : 1;
  build_overview(model);
  r.records = stats_.model_records;
  r.frames = stats_.model_frames;
  r.ok = true;
  return r;
}

const wire::BlockLocation& StoreView::version(const Block& b, int64_t res_ns) const {
  const wire::BlockLocation* v = &b.data;
  if (res_ns <= 0) return *v;
  for (const auto& s : b.summaries)
    if (wire::summary_level_ns(s.header.summary_level()) <= res_ns) v = &s;
  return *v;
}

const std::vector<uint8_t>* StoreView::frames(uint32_t file, const wire::BlockLocation& where,
                                              LoadResult* r) {
  const uint64_t key = uint64_t{file} << 40 | where.offset;
  auto it = cache_.find(key);
  if (it != cache_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return &it->second.frames;
  }
  std::vector<uint8_t> raw;
  std::string error;
  if (fds_[file] < 0 || !wire::read_block(fds_[file], where, raw, error)) {
    if (r && r->warnings.size() < 5) r->warnings.push_back(files_[file] + ": " + error);
    return nullptr;
  }
  // Evict the least recently used first; the block being added always stays.
  while (!lru_.empty() && cache_bytes_ + raw.size() > options_.cache_bytes) {
    auto old = cache_.find(lru_.back());
    cache_bytes_ -= old->second.frames.size();
    cache_.erase(old);
    lru_.pop_back();
  }
  cache_bytes_ += raw.size();
  lru_.push_front(key);
  auto& c = cache_[key];
  c.frames = std::move(raw);
  c.lru = lru_.begin();
  return &c.frames;
}

// [SECTION] Building
namespace {

// Adds spans to a model, defining the merged spans' name for a source before its first one.
class SpanSink {
 public:
  explicit SpanSink(TraceModel& m) : m_(m) {}
  void add(uint32_t source, const wire::Span& span) {
    if (span.name_id == wire::kMergedSpansStringId && named_.insert(source).second) {
      const Source* s = m_.source(source);
      if (!s || !s->name_map.contains(wire::kMergedSpansStringId))
        m_.add(source, wire::StringDef{wire::kMergedSpansStringId, "(merged spans)"});
    }
    m_.add(source, wire::Record{span});
  }

 private:
  TraceModel& m_;
  std::unordered_set<uint32_t> named_;
};

}  // namespace

template <class OnRecord>
uint64_t StoreView::for_each_record(const std::vector<uint8_t>& raw, OnRecord&& on_record) {
  uint64_t frames_read = 0;
  std::span<const uint8_t> rest(raw);
  while (!rest.empty()) {
    size_t n = 0;
    if (!decoder_.frame_size(rest, n).ok()) break;  // CRC-checked block written bad: stop
    const auto frame = rest.first(n);
    rest = rest.subspan(n);
    ++frames_read;
    if (!decoder_.open(frame).ok()) continue;
    const uint32_t source = decoder_.header().source_id;
    wire::Record rec;
    while (decoder_.next(rec)) on_record(source, rec);
  }
  return frames_read;
}

void StoreView::build_overview(TraceModel& model) {
  // Every record of each block's overview summary; its spans are also kept decoded
  // (overview_spans_), so that later builds add them again without decoding.
  std::lock_guard lk(build_mu_);
  model.clear();
  overview_spans_.assign(blocks_.size(), {});
  SpanSink sink(model);
  uint64_t records = 0, frames_loaded = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const auto* raw = frames(b.file, version(b, overview_ns_), nullptr);
    if (!raw) continue;
    frames_loaded += for_each_record(*raw, [&](uint32_t source, const wire::Record& rec) {
      if (const auto* span = std::get_if<wire::Span>(&rec)) {
        sink.add(source, *span);
        overview_spans_[i].emplace_back(source, *span);
      } else {
        model.add(source, rec);
      }
      ++records;
    });
  }
  model.finalize();
  target_ = Target{0, -1, -1, versions(0, -1, -1)};
  stats_.model_records = records;
  stats_.model_frames = frames_loaded;
  stats_.detail_level_ns = -1;
  stats_.cache_bytes = cache_bytes_;
  ++stats_.rebuilds;
}

bool StoreView::build(Built& out) {
  std::lock_guard lk(build_mu_);
  const Target& t = out.target;
  SpanSink sink(out.scratch);
  uint64_t frames_loaded = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (stop_.load(std::memory_order_relaxed)) return false;
    const Block& b = blocks_[i];
    if (t.ns < 0 || !b.data.header.overlaps(t.from, t.to)) {
      for (const auto& [source, span] : overview_spans_[i]) sink.add(source, span);
      continue;
    }
    const auto* raw = frames(b.file, version(b, t.ns), nullptr);
    if (!raw) continue;
    // The overview holds every other record already: only the spans change.
    frames_loaded += for_each_record(*raw, [&](uint32_t source, const wire::Record& rec) {
      if (const auto* span = std::get_if<wire::Span>(&rec)) sink.add(source, *span);
    });
  }
  // Sorting into lanes is the other half of the cost: on the builder's thread too.
  out.scratch.finalize();
  out.frames = frames_loaded;
  out.cache_bytes = cache_bytes_;
  return true;
}

bool StoreView::adopt(TraceModel& model, Built& b) {
  if (!model.adopt_spans(b.scratch)) return false;
  stats_.model_frames = b.frames;
  stats_.cache_bytes = b.cache_bytes;
  stats_.detail_level_ns = b.target.ns;
  ++stats_.rebuilds;
  return true;
}

// [SECTION] Following the window
bool StoreView::plan(int64_t t0, int64_t t1, int px, Target& next) {
  if (px <= 0 || t1 <= t0 || blocks_.empty()) return false;
  auto overview = [&] {
    if (target_.ns < 0) return false;  // showing (or about to show) the overview already
    next = Target{0, -1, -1, versions(0, -1, -1)};
    return true;
  };
  const int64_t threshold = (t1 - t0) * 3 / px;      // the timeline merges below this (3 px)
  if (threshold >= overview_ns_) return overview();  // back to the overview: drop the detail
  const bool covered = t0 >= target_.from && t1 <= target_.to;
  int64_t want = level_at_most(threshold);
  // Loaded detail finer than needed is fine up to 16x (two levels): zooming out
  // a little must not reload, zooming out a lot must free memory.
  if (covered && target_.ns >= 0 && target_.ns <= want &&
      want <= std::max<int64_t>(target_.ns, 1) * 16)
    return false;
  const int64_t w = t1 - t0;
  const int64_t from = t0 - w / 2, to = t1 + w / 2;
  // Bounded memory: a coarser level while the window's blocks hold too many records.
  while (want < overview_ns_) {
    uint64_t n = 0;
    for (const Block& b : blocks_)
      if (b.data.header.overlaps(from, to)) n += version(b, want).header.records;
    if (n <= options_.max_window_records) break;
    want = want == 0 ? wire::summary_level_ns(1) : want * 4;
  }
  if (want >= overview_ns_) return overview();
  // The same block versions as loaded (a block without a finer summary is the
  // same data at every finer level, and may be what the overview holds): the
  // model would not change.
  std::vector<uint64_t> v = versions(from, to, want);
  if (v == target_.versions) {
    target_.from = from;
    target_.to = to;
    target_.ns = want;
    if (!loading()) stats_.detail_level_ns = want;
    return false;
  }
  next = Target{from, to, want, std::move(v)};
  return true;
}

bool StoreView::update(TraceModel& model, int64_t t0, int64_t t1, int px) {
  Target next;
  if (!plan(t0, t1, px, next)) return false;
  Built b{std::move(next), model.span_scratch()};
  build(b);
  target_ = b.target;
  return adopt(model, b);
}

bool StoreView::update_async(TraceModel& model, int64_t t0, int64_t t1, int px) {
  bool changed = false;
  std::optional<Built> done;
  {
    std::lock_guard lk(mu_);
    done.swap(done_);
  }
  if (done) {
    changed = adopt(model, *done);
    // Adopting fails only if something else changed the model: ask again (a target that
    // matches no window, detail or overview).
    if (!changed) target_ = Target{0, -1, 0, {}};
    std::lock_guard lk(mu_);
    trash_.push_back(std::move(done->scratch));  // our old spans: freed by the worker
  }
  Target next;
  if (plan(t0, t1, px, next)) {
    ++stats_.requests;
    if (waiting_) ++stats_.superseded;  // never started: the newer window replaces it
    waiting_ = next;
    target_ = std::move(next);
  }
  if (!worker_.joinable() && (waiting_ || done)) worker_ = std::thread([this] { work(); });
  {
    std::lock_guard lk(mu_);
    // The worker gets the next window once it is idle and its last answer was taken (at most
    // one more window in memory). The scratch is made now, on the model's thread, after the
    // last answer was swapped in, so that its ids match the model's when it comes back.
    if (waiting_ && !job_ && !busy_ && !done_) {
      job_.emplace(Built{std::move(*waiting_), model.span_scratch()});
      waiting_.reset();
    }
  }
  cv_.notify_all();
  return changed;
}

bool StoreView::loading() const {
  std::lock_guard lk(mu_);
  return waiting_ || job_ || busy_ || done_;
}

bool StoreView::answer_ready() const {
  std::lock_guard lk(mu_);
  return done_.has_value();
}

void StoreView::work() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !trash_.empty() || job_; });
    if (stop_) return;
    if (!trash_.empty()) {
      std::vector<TraceModel> old;
      old.swap(trash_);
      lk.unlock();
      old.clear();  // millions of spans and flow entries: not on the UI thread
      lk.lock();
      continue;
    }
    Built b = std::move(*job_);
    job_.reset();
    busy_ = true;
    lk.unlock();
    if (options_.on_build_start) options_.on_build_start();
    const bool complete = build(b);
    lk.lock();
    busy_ = false;
    if (!complete || stop_) return;  // shutting down: b is freed on the way out
    done_.emplace(std::move(b));
  }
}

std::vector<uint64_t> StoreView::versions(int64_t from, int64_t to, int64_t detail_ns) const {
  std::vector<uint64_t> out;
  out.reserve(blocks_.size());
  for (const Block& b : blocks_) {
    const bool detail = detail_ns >= 0 && b.data.header.overlaps(from, to);
    out.push_back(version(b, detail ? detail_ns : overview_ns_).offset);
  }
  return out;
}

}  // namespace inferscope::viewer
