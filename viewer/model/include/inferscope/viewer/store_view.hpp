// inferscope viewer: a trace store directory shown with level of detail.
//
// load_path() decodes every stored record into the model: 10 M spans take
// seconds and ~130 bytes each. A store written with level-of-detail summaries
// (file format 3, wire/trace_block.hpp) need not be read whole. StoreView
// walks the segments' block headers (no decompression), then fills the model
// from each block's summary merged at about one pixel of the whole trace (the
// overview: every non-span record exactly, spans merged into runs the way a
// range query merges them). As the visible window narrows, the blocks under it
// (plus half a window either side, for panning) are swapped in at the coarsest
// summary that is still finer than the timeline's merge threshold, or the block
// itself when no summary is fine enough; zoomed far in, those are the stored
// spans exactly.
//
// Two ways to follow the window, not to be mixed on one StoreView:
//   update()       rebuilds on the calling thread (tests, tools; the app's old path);
//   update_async() asks a worker thread for the window and returns at once. Until the
//                  answer is in, the model keeps what it shows (the previous window, or
//                  the overview) and loading() is true; a later call swaps the answer in.
//                  One request is worked on at a time; a newer one replaces a request
//                  still waiting (counted as superseded), so a user who keeps zooming
//                  gets the latest window next, not every step on the way.
// Both build a window the same way (TraceModel::span_scratch, then adopt_spans): the
// model that results is the same.
//
// Memory: the model holds the overview and one window's blocks; at most one
// more window is being built or waiting to be swapped in (the worker does not
// start the next before the last answer was taken); decompressed blocks are
// kept in an LRU cache bounded by cache_bytes. The model changes only when the
// window leaves what is loaded or the detail level changes, and then only its
// spans change: the overview's other records stay, its spans are kept decoded,
// only the window's blocks are decoded again. SpanRefs into the model do not
// survive a change. The old spans are freed on the worker, not the UI thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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
  // Called on the worker thread as it starts building a window (tests hold the worker here).
  std::function<void()> on_build_start;
};

struct StoreViewStats {
  uint64_t blocks = 0, summaries = 0;  // in the index
  uint64_t stored_records = 0;         // in the data blocks (their headers)
  uint64_t model_records = 0;          // put in the model by open()
  uint64_t model_frames = 0;           // decoded by the last (re)build
  uint64_t rebuilds = 0;               // the model's spans swapped (either path)
  uint64_t cache_bytes = 0;
  int64_t detail_level_ns = -1;  // -1: overview only; 0: stored spans (what the model shows)
  // update_async(): windows asked for, and those replaced by a newer request before the
  // worker took them up (never built).
  uint64_t requests = 0, superseded = 0;
};

class StoreView {
 public:
  explicit StoreView(StoreViewOptions options = {});

  // A directory of trace segments that hold summaries and at least
  // min_records records: worth showing this way rather than loading whole.
  static bool worth_it(const std::string& path, const StoreViewOptions& options = {});

  // Indexes the directory and fills the model with the overview.
  LoadResult open(const std::string& dir, TraceModel& model);
  // Shows [t0, t1] at px pixels, rebuilding on this thread: true when the model changed.
  bool update(TraceModel& model, int64_t t0, int64_t t1, int px);
  // Asks for [t0, t1] at px pixels without waiting; swaps in an answer that came in since
  // the last call: true when the model changed. Call from the thread that owns the model
  // (the UI), every frame; nothing else may add to the model meanwhile.
  bool update_async(TraceModel& model, int64_t t0, int64_t t1, int px);
  // A window was asked for and is not in the model yet (the view shows "loading").
  bool loading() const;
  // An answer waits to be swapped in by the next update_async() (the app need not wait for
  // input to draw the next frame).
  bool answer_ready() const;

  // The caller's thread's view of the counters (the worker's work counts once swapped in).
  const StoreViewStats& stats() const { return stats_; }
  // The overview's merge resolution (ns).
  int64_t overview_ns() const { return overview_ns_; }

 private:
  struct Block {
    uint32_t file = 0;
    wire::BlockLocation data;
    std::vector<wire::BlockLocation> summaries;  // rising level
  };
  // What the model shows for the detail, or will once the last request is answered:
  // [from, to] at ns (-1: the overview only), and per block the version that means.
  struct Target {
    int64_t from = 0, to = -1, ns = -1;
    std::vector<uint64_t> versions;
  };
  // A window's spans built into a span_scratch() of the model.
  struct Built {
    Target target;
    TraceModel scratch;
    uint64_t frames = 0, cache_bytes = 0;
  };

  // The coarsest version of block b with a level at most res_ns (0: the data).
  const wire::BlockLocation& version(const Block& b, int64_t res_ns) const;
  // The frames of one block version, from the cache or the file (under build_mu_).
  // Decodes a block's frames, calling on_record(source id, record) for each record; returns
  // the frames read. Stops at a frame it cannot size (a CRC-checked block written bad).
  template <class OnRecord>
  uint64_t for_each_record(const std::vector<uint8_t>& raw, OnRecord&& on_record);
  const std::vector<uint8_t>* frames(uint32_t file, const wire::BlockLocation& where,
                                     LoadResult* r);
  // The first build: every record of the overview into the model.
  void build_overview(TraceModel& model);
  // The spans of target into b.scratch: its blocks at target.ns, the overview's spans of the
  // others. Stops early (false) when stop_ is set.
  bool build(Built& b);
  // Swaps a built window into the model (the caller's thread).
  bool adopt(TraceModel& model, Built& b);
  // What [t0, t1] at px needs: true with next set when the model must change. May widen
  // target_'s range in place when the same block versions cover the new window.
  bool plan(int64_t t0, int64_t t1, int px, Target& next);
  // Per block, the offset of the version a build with these arguments would use.
  std::vector<uint64_t> versions(int64_t from, int64_t to, int64_t detail_ns) const;
  void work();  // the worker thread

  StoreViewOptions options_;
  std::vector<std::string> files_;
  std::vector<int> fds_;
  std::vector<Block> blocks_;
  int64_t min_ns_ = 0, max_ns_ = 0;
  int64_t overview_ns_ = 0;
  Target target_;
  // The overview's spans per block, decoded once (its other records stay in the model).
  std::vector<std::vector<std::pair<uint32_t, wire::Span>>> overview_spans_;
  struct Cached {
    std::vector<uint8_t> frames;
    std::list<uint64_t>::iterator lru;
  };
  // Block cache and decoder: used by whichever thread builds, under build_mu_.
  std::mutex build_mu_;
  std::map<uint64_t, Cached> cache_;  // key: file << 40 | offset
  std::list<uint64_t> lru_;           // most recent first
  uint64_t cache_bytes_ = 0;
  wire::FrameDecoder decoder_{wire::DecoderOptions{wire::kMaxBlockRawBytes}};
  StoreViewStats stats_;  // the caller's thread only

  // [SECTION] update_async(): the caller's thread and the worker
  std::optional<Target> waiting_;  // asked for, not handed to the worker yet (caller only)
  mutable std::mutex mu_;          // guards the four below
  std::condition_variable cv_;
  std::optional<Built> job_;       // handed over, not started
  bool busy_ = false;              // the worker is building
  std::optional<Built> done_;      // built, not swapped in yet
  std::vector<TraceModel> trash_;  // old spans for the worker to free
  std::atomic<bool> stop_{false};
  std::thread worker_;  // started by the first update_async()

 public:
  ~StoreView();
  StoreView(const StoreView&) = delete;
  StoreView& operator=(const StoreView&) = delete;
};

}  // namespace inferscope::viewer
