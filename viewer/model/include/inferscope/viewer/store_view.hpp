// inferscope viewer: a trace store directory shown with level of detail.
//
// load_path() decodes every stored record into the model: 10 M spans take
// seconds and ~130 bytes each. A store written with level-of-detail summaries
// (file format 3, wire/trace_block.hpp) need not be read whole. StoreView
// walks the segments' block headers (no decompression), then fills the model
// from each block's summary merged at about one pixel of the whole trace (the
// overview: every non-span record exactly, spans merged into runs the way a
// range query merges them). As the visible window narrows, update() swaps in
// the blocks under it (plus half a window either side, for panning) at the
// coarsest summary that is still finer than the timeline's merge threshold,
// or the block itself when no summary is fine enough; zoomed far in, those
// are the stored spans exactly.
//
// Memory: the model holds the overview and one window's blocks; decompressed
// blocks are kept in an LRU cache bounded by cache_bytes. update() rebuilds the
// model only when the window leaves what is loaded or the detail level changes,
// and then swaps only spans (TraceModel::clear_spans): the overview's other
// records stay, its spans are kept decoded, only the window's blocks are
// decoded again. SpanRefs into the model do not survive a rebuild.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/trace_model.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::viewer {

struct StoreViewOptions {
  uint64_t min_records = 2'000'000;   // smaller stores are loaded whole (worth_it)
  uint64_t cache_bytes = 256u << 20;  // decompressed blocks kept
  int overview_px = 4000;             // the overview's resolution: the trace over this many px
  uint64_t max_window_records = 8'000'000;  // a coarser level past this (bounded memory)
};

struct StoreViewStats {
  uint64_t blocks = 0, summaries = 0;  // in the index
  uint64_t stored_records = 0;         // in the data blocks (their headers)
  uint64_t model_records = 0;          // put in the model by open()
  uint64_t model_frames = 0;           // decoded by the last (re)build
  uint64_t rebuilds = 0;
  uint64_t cache_bytes = 0;
  int64_t detail_level_ns = -1;  // -1: overview only; 0: stored spans
};

class StoreView {
 public:
  explicit StoreView(StoreViewOptions options = {});

  // A directory of trace segments that hold summaries and at least
  // min_records records: worth showing this way rather than loading whole.
  static bool worth_it(const std::string& path, const StoreViewOptions& options = {});

  // Indexes the directory and fills the model with the overview.
  LoadResult open(const std::string& dir, TraceModel& model);
  // Shows [t0, t1] at px pixels: true when the model was rebuilt.
  bool update(TraceModel& model, int64_t t0, int64_t t1, int px);

  const StoreViewStats& stats() const { return stats_; }
  // The overview's merge resolution (ns).
  int64_t overview_ns() const { return overview_ns_; }

 private:
  struct Block {
    uint32_t file = 0;
    wire::BlockLocation data;
    std::vector<wire::BlockLocation> summaries;  // rising level
  };
  // The coarsest version of block b with a level at most res_ns (0: the data).
  const wire::BlockLocation& version(const Block& b, int64_t res_ns) const;
  // The frames of one block version, from the cache or the file.
  const std::vector<uint8_t>* frames(uint32_t file, const wire::BlockLocation& where,
                                     LoadResult* r);
  void rebuild(TraceModel& model, int64_t from, int64_t to, int64_t detail_ns);
  // Per block, the offset of the version a rebuild with these arguments would use.
  std::vector<uint64_t> versions(int64_t from, int64_t to, int64_t detail_ns) const;

  StoreViewOptions options_;
  std::vector<std::string> files_;
  std::vector<int> fds_;
  std::vector<Block> blocks_;
  int64_t min_ns_ = 0, max_ns_ = 0;
  int64_t overview_ns_ = 0;
  // Loaded detail: [from, to] at detail_ns (-1: none).
  int64_t loaded_from_ = 0, loaded_to_ = -1, loaded_ns_ = -1;
  std::vector<uint64_t> loaded_versions_;  // per block, the offset of the version in the model
  // The overview's spans per block, decoded once (its other records stay in the model).
  std::vector<std::vector<std::pair<uint32_t, wire::Span>>> overview_spans_;
  bool overview_ready_ = false;
  std::unordered_set<uint32_t> named_;  // sources the merged spans' name is defined for
  struct Cached {
    std::vector<uint8_t> frames;
    std::list<uint64_t>::iterator lru;
  };
  std::map<uint64_t, Cached> cache_;  // key: file << 40 | offset
  std::list<uint64_t> lru_;           // most recent first
  uint64_t cache_bytes_ = 0;
  StoreViewStats stats_;
  wire::FrameDecoder decoder_{wire::DecoderOptions{wire::kMaxBlockRawBytes}};

 public:
  ~StoreView();
  StoreView(const StoreView&) = delete;
  StoreView& operator=(const StoreView&) = delete;
};

}  // namespace inferscope::viewer
