// The trace store's front: frames into the open block on the caller's thread,
// sealed blocks to the writer, and range queries over the writer's index.
#include "inferscope/collector/trace_store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_map>

#include "block_summary.hpp"
#include "inferscope/collector/record_tap.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/column_builder.hpp"
#include "segment_writer.hpp"

namespace inferscope::collector {
namespace {

// Visits each whole frame of a decompressed block in order; false when a frame
// header is bad (the block's CRC was good, so it was written bad): stop there.
bool for_each_frame(const wire::FrameDecoder& sizer, std::span<const uint8_t> raw,
                    const TraceStore::FrameVisitor& visit) {
  size_t offset = 0;
  while (offset < raw.size()) {
    size_t n = 0;
    std::span<const uint8_t> rest = raw.subspan(offset);
    if (!sizer.frame_size(rest, n).ok()) return false;
    visit(rest.first(n));
    offset += n;
  }
  return true;
}

}  // namespace

// [SECTION] The record tap
// States: idle; open (a frame's records arriving, merged into the first level
// at once); ended (its records are in, the next write() is that frame).
class TraceStore::Tap final : public RecordTap {
 public:
  // first_level: the store's, made before the tap and kept for its life.
  Tap(TraceStore& store, FirstLevel& first_level) : store_(store), first_level_(first_level) {}
  enum class State { kIdle, kOpen, kEnded };
  State state = State::kIdle;

  void begin_frame() override {
    state = State::kIdle;
    if (!store_.opened_ || !store_.options_.summaries) return;  // nothing to merge into
    // The block begins (replay first) before the frame's records go in, as its bytes will;
    // a failing store is left to add_frame's retry (the tap never starts one).
    if (!store_.writer_->failing()) store_.prepare_block(/*steady_now_ns: unused*/ 0);
    store_.first_level_->begin_frame();
    state = State::kOpen;
  }
  void record(uint32_t source, const wire::Record& r) override {
    // Through the tap's own reference: one dependent load fewer before the
    // lane lookup, on every record.
    if (state == State::kOpen) first_level_.add(source, r);
  }
  void end_frame() override {
    if (state == State::kOpen) state = State::kEnded;
  }
  wire::ColumnBuilder* columns() override {
    return state == State::kOpen && store_.open_block_columns_ ? store_.columns_.get() : nullptr;
  }
  void abort_frame() override {
    if (state != State::kIdle) store_.first_level_->undo_frame();
    if (store_.open_block_columns_) store_.columns_->undo_frame();
    state = State::kIdle;
    store_.write_deferred();
  }

 private:
  TraceStore& store_;
  FirstLevel& first_level_;
};

RecordTap& TraceStore::record_tap() {
  return *tap_;
}

TraceStore::TraceStore(TraceStoreOptions options, Replay replay, Log log)
    : options_(std::move(options)), replay_(std::move(replay)), log_(std::move(log)) {
  if (options_.segment_bytes == 0)
    options_.segment_bytes = std::clamp<uint64_t>(options_.max_bytes / 8, 64u << 10, 64u << 20);
  options_.block_bytes =
      std::clamp<uint32_t>(options_.block_bytes, 4u << 10, wire::kMaxBlockRawBytes / 2);
  if (options_.queue_blocks == 0) options_.queue_blocks = 1;
  writer_ = std::make_unique<Writer>(options_, log_);
  first_level_ = std::make_unique<FirstLevel>();
  // As the writer's compressor splits blocks (segment_writer.cpp): with summaries only.
  if (options_.columns && options_.summaries) columns_ = std::make_unique<wire::ColumnBuilder>();
  tap_ = std::make_unique<Tap>(*this, *first_level_);
}

TraceStore::~TraceStore() {
  close();
}

bool TraceStore::open(std::string& error) {
  if (!writer_->open(error)) return false;
  recover_sequences();
  opened_ = true;
  // The first segment's replay is taken now: later, the first frame may itself be
  // a new source's hello, which would then be in the block twice.
  open_block_starts_segment_ = true;
  begin_block();
  return true;
}

void TraceStore::write(std::span<const uint8_t> frame, int64_t steady_now_ns) {
  write(frame, wire::summarize_frame(frame), steady_now_ns);
}

void TraceStore::write(std::span<const uint8_t> frame, const wire::FrameSummary& summary,
                       int64_t steady_now_ns) {
  if (!opened_) return;
  if (tap_->state == Tap::State::kOpen) {
    // Raised while the tapped frame is decoded (an alert): stored after it, so
    // neither frame's records mix into the other's place in the block.
    deferred_.push_back({{frame.begin(), frame.end()}, summary, steady_now_ns});
    return;
  }
  const bool tapped = tap_->state == Tap::State::kEnded;
  tap_->state = Tap::State::kIdle;
  add_frame(frame, summary, steady_now_ns, tapped);
  write_deferred();
}

void TraceStore::write_deferred() {
  if (deferred_.empty()) return;
  auto frames = std::move(deferred_);
  deferred_.clear();
  for (const auto& d : frames) add_frame(d.frame, d.summary, d.steady_now_ns, false);
}

bool TraceStore::prepare_block(int64_t steady_now_ns) {
  if (open_block_begun_) return true;
  // Decide at a block's start whether it opens a segment: then it begins with
  // the replay so the segment can be read alone.
  if (writer_->failing()) {
    // Retry at most once a second, in a fresh segment; until then refuse cheaply.
    if (steady_now_ns - last_retry_ns_ < 1'000'000'000) return false;
    last_retry_ns_ = steady_now_ns;
    open_block_starts_segment_ = true;
  } else if (writer_->segment_full()) {
    open_block_starts_segment_ = true;
  }
  begin_block();
  return true;
}

void TraceStore::add_frame(std::span<const uint8_t> frame, const wire::FrameSummary& summary,
                           int64_t steady_now_ns, bool tapped) {
  ++tickets_;
  if (!open_block_begun_) {
    // A tapped frame's block begins when the tap opens, unless the store was
    // failing then; its records went in before this replay would: take them
    // out and decode (and split) the frame below instead, in block order.
    if (tapped) first_level_->undo_frame();
    if (open_block_columns_) columns_->undo_frame();
    tapped = false;
    if (!prepare_block(steady_now_ns)) {
      writer_->refuse(1);
      return;
    }
  }
  if (!open_block_has_data_) {
    open_block_since_ns_ = steady_now_ns;
    open_block_has_data_ = true;
  }
  open_block_.add(frame, summary);
  if (!tapped && options_.summaries) first_level_->add_frame(frame);
  // A tapped frame was split as it was decoded (unless the decoder gave up on it).
  if (open_block_columns_ && !(tapped && columns_->finish_decoded_frame(frame)))
    columns_->add_frame(frame);
  open_block_last_ticket_ = tickets_;
  if (open_block_.bytes.size() >= options_.block_bytes) seal_block(steady_now_ns);
}

void TraceStore::begin_block() {
  open_block_columns_ = columns_ && writer_->splits_next_block();
  if (open_block_starts_segment_ && replay_) {
    std::vector<std::vector<uint8_t>> frames;
    replay_(frames);
    for (const auto& f : frames) {
      open_block_.add(f, wire::summarize_frame(f));
      if (options_.summaries) first_level_->add_frame(f);
      if (open_block_columns_) columns_->add_frame(f);
    }
  }
  open_block_begun_ = true;
}

void TraceStore::seal_block(int64_t /*steady_now_ns*/) {
  if (!open_block_has_data_) return;  // a replay alone waits for data
  open_block_begun_ = open_block_has_data_ = false;
  wire::RawBlock block = std::move(open_block_);
  open_block_ = {};
  if (open_block_columns_) columns_->take(block);  // else (or when it cannot) the writer splits it
  // The next block reuses the buffers of one already written, when there is one.
  LevelSeed seed;
  if (!writer_->take_spare(open_block_, seed))
    open_block_.bytes.reserve(options_.block_bytes + (64u << 10));
  first_level_->take(seed);  // seed: this block's; the first level keeps the spare buffers
  writer_->submit(std::move(block), std::move(seed), open_block_starts_segment_,
                  open_block_last_ticket_);
  open_block_starts_segment_ = false;
}

void TraceStore::tick(int64_t steady_now_ns) {
  if (!opened_) return;
  if (open_block_has_data_ && steady_now_ns - open_block_since_ns_ >= options_.block_age_ns)
    seal_block(steady_now_ns);
  // Frames refused while the store fails (or in a dropped block) settle here.
  if (!open_block_has_data_) writer_->settle_if_idle(tickets_);
  writer_->enforce_retention();
}

void TraceStore::flush() {
  if (!opened_) return;
  seal_block(open_block_since_ns_);
  writer_->drain();
  writer_->settle_if_idle(tickets_);
}

uint64_t TraceStore::settled_ticket() const {
  return writer_->settled();
}

// Reads the first record of every frame in the two newest segments: a data
// frame starts with its FrameSequence. Agents re-send only what was not
// acknowledged, which is at most a few block ages old, so older segments
// cannot hold it; this bounds the work at start to two segments.
void TraceStore::recover_sequences() {
  std::unordered_map<uint64_t, uint64_t> last;
  auto segments = writer_->snapshot();
  const size_t from = segments.size() > 2 ? segments.size() - 2 : 0;
  std::vector<uint8_t> raw;
  const wire::FrameDecoder sizer(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  wire::Record rec;
  auto first_record = [&](std::span<const uint8_t> frame) {
    wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
    if (dec.open(frame).ok() && dec.next(rec))
      if (const auto* fs = std::get_if<wire::FrameSequence>(&rec))
        last[fs->stream] = std::max(last[fs->stream], fs->seq);
  };
  for (size_t k = from; k < segments.size(); ++k) {
    const int fd = ::open(segments[k].path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    for (const auto& block : segments[k].blocks) {
      if (block.header.summary_level() != 0) continue;  // copies of the block before
      std::string error;
      if (wire::read_block(fd, block, raw, error)) for_each_frame(sizer, raw, first_record);
    }
    ::close(fd);
  }
  recovered_.assign(last.begin(), last.end());
}

void TraceStore::close() {
  if (!opened_) return;
  flush();
  writer_->close();
  opened_ = false;
}

TraceStoreStats TraceStore::stats() const {
  return writer_->stats();
}

std::vector<std::string> TraceStore::segment_paths() const {
  return writer_->segment_paths();
}

RangeScan TraceStore::query(int64_t start_ns, int64_t end_ns, const FrameVisitor& visit,
                            int64_t lod_ns) const {
  RangeScan scan;
  std::vector<uint8_t> raw;
  wire::FrameDecoder sizer(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  for (const auto& seg : writer_->snapshot()) {
    const auto& blocks = seg.blocks;  // data blocks, each followed by its summaries
    const auto is_data = [&](size_t i) { return blocks[i].header.summary_level() == 0; };
    // The last data block that overlaps; definitions (hellos, strings) before it are read too.
    size_t last = blocks.size();
    for (size_t i = blocks.size(); i-- > 0;)
      if (is_data(i) && blocks[i].header.overlaps(start_ns, end_ns)) {
        last = i;
        break;
      }
    if (last == blocks.size()) {
      for (size_t i = 0; i < blocks.size(); ++i) scan.blocks_skipped += is_data(i);
      continue;
    }
    const int fd = ::open(seg.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      ++scan.errors;  // deleted by retention since the snapshot
      continue;
    }
    ++scan.segments;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!is_data(i)) continue;  // read in place of their data block, below
      const auto& h = blocks[i].header;
      const bool wanted =
          h.overlaps(start_ns, end_ns) || (i < last && (h.flags & wire::kBlockFlagDefinitions));
      if (!wanted) {
        ++scan.blocks_skipped;
        continue;
      }
      std::string error;
      // The coarsest summary at most lod_ns, for a block wholly inside the range
      // (a summary cannot drop the spans of a block that only overlaps it).
      size_t use = i;
      if (lod_ns > 0 && h.within(start_ns, end_ns))
        for (size_t j = i + 1; j < blocks.size() && !is_data(j); ++j)
          if (wire::summary_level_ns(blocks[j].header.summary_level()) <= lod_ns) use = j;
      if (use != i && wire::read_block(fd, blocks[use], raw, error)) {
        ++scan.summaries_read;
      } else if (wire::read_block(fd, blocks[i], raw, error)) {
        ++scan.blocks_read;  // no summary fits (or it could not be read): the block itself
      } else {
        ++scan.errors;
        continue;
      }
      if (!for_each_frame(sizer, raw, visit)) ++scan.errors;
    }
    ::close(fd);
  }
  return scan;
}

}  // namespace inferscope::collector
