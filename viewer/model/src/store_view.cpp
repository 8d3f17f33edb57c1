// StoreView: a summarized overview of a trace store, with the visible window's blocks in detail.
#include "inferscope/viewer/store_view.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

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
  rebuild(model, 0, -1, -1);
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
  stats_.cache_bytes = cache_bytes_;
  return &c.frames;
}

void StoreView::rebuild(TraceModel& model, int64_t from, int64_t to, int64_t detail_ns) {
  // The first build (the overview) takes every record; later ones swap only the
  // spans: the overview already holds every other record exactly, and its own
  // spans are kept decoded, so a rebuild decodes just the window's blocks.
  const bool first = !overview_ready_;
  if (first) {
    model.clear();
    named_.clear();
    overview_spans_.assign(blocks_.size(), {});
  } else {
    model.clear_spans();
  }
  uint64_t records = 0, frames_loaded = 0;
  auto add_span = [&](uint32_t source, const wire::Span& span) {
    // The merged spans' name, defined for a source before its first one.
    if (span.name_id == wire::kMergedSpansStringId && named_.insert(source).second)
      model.add(source, wire::StringDef{wire::kMergedSpansStringId, "(merged spans)"});
    model.add(source, wire::Record{span});
    ++records;
  };
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const bool detail = detail_ns >= 0 && b.data.header.overlaps(from, to);
    if (!first && !detail) {
      for (const auto& [source, span] : overview_spans_[i]) add_span(source, span);
      continue;
    }
    const auto* raw = frames(b.file, version(b, detail ? detail_ns : overview_ns_), nullptr);
    if (!raw) continue;
    std::span<const uint8_t> rest(*raw);
    while (!rest.empty()) {
      size_t n = 0;
      if (!decoder_.frame_size(rest, n).ok()) break;  // CRC-checked block written bad: stop
      const auto frame = rest.first(n);
      rest = rest.subspan(n);
      ++frames_loaded;
      if (!decoder_.open(frame).ok()) continue;
      const uint32_t source = decoder_.header().source_id;
      wire::Record rec;
      while (decoder_.next(rec)) {
        if (const auto* span = std::get_if<wire::Span>(&rec)) {
          add_span(source, *span);
          if (first) overview_spans_[i].emplace_back(source, *span);
        } else if (first) {
          model.add(source, rec);
          ++records;
        }
      }
    }
  }
  overview_ready_ = true;
  model.finalize();
  loaded_versions_ = versions(from, to, detail_ns);
  loaded_from_ = from;
  loaded_to_ = to;
  loaded_ns_ = detail_ns;
  stats_.model_records = first ? records : stats_.model_records;
  stats_.model_frames = frames_loaded;
  stats_.detail_level_ns = detail_ns;
  stats_.cache_bytes = cache_bytes_;
  ++stats_.rebuilds;
}

bool StoreView::update(TraceModel& model, int64_t t0, int64_t t1, int px) {
  if (px <= 0 || t1 <= t0 || blocks_.empty()) return false;
  const int64_t threshold = (t1 - t0) * 3 / px;  // the timeline merges below this (3 px)
  if (threshold >= overview_ns_) {
    if (loaded_ns_ < 0) return false;
    rebuild(model, 0, -1, -1);  // back to the overview: drop the detail
    return true;
  }
  const bool covered = t0 >= loaded_from_ && t1 <= loaded_to_;
  int64_t want = level_at_most(threshold);
  // Loaded detail finer than needed is fine up to 16x (two levels): zooming out
  // a little must not reload, zooming out a lot must free memory.
  if (covered && loaded_ns_ >= 0 && loaded_ns_ <= want &&
      want <= std::max<int64_t>(loaded_ns_, 1) * 16)
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
  if (want >= overview_ns_) {
    if (loaded_ns_ < 0) return false;
    rebuild(model, 0, -1, -1);
    return true;
  }
  // The same block versions as loaded (a block without a finer summary is the
  // same data at every finer level, and may be what the overview holds): the
  // model would not change.
  if (versions(from, to, want) == loaded_versions_) {
    loaded_from_ = from;
    loaded_to_ = to;
    loaded_ns_ = want;
    stats_.detail_level_ns = want;
    return false;
  }
  rebuild(model, from, to, want);
  return true;
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
