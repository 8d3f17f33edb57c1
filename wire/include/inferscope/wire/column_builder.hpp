// The column form of a block (split_block_columns, trace_block.hpp) built as
// its frames arrive, so the store does not walk a block's bytes again to split
// it when it seals the block.
//
// Frames the collector decodes anyway are split by the decoder itself
// (FrameDecoder::fuse_columns): it knows where each span field starts and
// ends, and writes the field's bytes into its stream as it reads them. Other
// frames (the sources' replay, alerts, a frame whose hello is re-encoded, one
// compressed by its agent) are split whole with add_frame(). Either way the
// streams hold exactly what split_block_columns makes of the same frames with
// correlation deltas and implied span lengths (formats 5 and 6), byte for
// byte (tested), so readers cannot tell.
//
// One thread; memory: each stream holds at most the block's bytes plus one
// frame, and the buffers are kept from block to block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "inferscope/wire/records.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::wire {

class ColumnBuilder {
 public:
  ColumnBuilder();
  ~ColumnBuilder();
  ColumnBuilder(const ColumnBuilder&) = delete;
  ColumnBuilder& operator=(const ColumnBuilder&) = delete;

  // Splits a whole frame into the streams. A frame that does not split (not a
  // well-formed frame, or a record with the implied-length marker's tag)
  // spoils the block: take() then says to split it from its frames.
  void add_frame(std::span<const uint8_t> frame);

  // A frame the decoder splits as it decodes: begin_decoded_frame() (from
  // FrameDecoder::fuse_columns), then its records, then either
  // finish_decoded_frame() with the frame as stored, or undo_frame().
  // abandon_frame() gives up on splitting it while decoding (a record the
  // decoder could not hand over); finish_decoded_frame() then says false and
  // the caller adds the frame whole.
  bool begin_decoded_frame(std::span<const uint8_t> header, size_t payload_bytes);
  // The stored frame (its header may differ from the decoded one's: the
  // collector stamps its source id); false when no decoded frame is pending,
  // it was abandoned, or its payload is not the decoded one's size.
  bool finish_decoded_frame(std::span<const uint8_t> frame);
  void undo_frame();  // the pending decoded frame's bytes go back out; none pending: nothing
  void abandon_frame();
  bool decoding_frame() const { return state_ == State::kDecoding; }

  // The decoder's hooks, for the records of a decoded frame in order.
  // decode_span: decode_span_fast (record_codec.hpp) that also splits the span;
  // false when it did not decode it (then decoding_frame() says whether the
  // frame is still being split: a span refused before any byte was written
  // leaves it so, and the decoder hands the record to split_record after
  // decoding it the checked way).
  bool decode_span(const uint8_t* record, size_t head_bytes, size_t body_bytes, size_t readable,
                   int64_t& previous_ns, Record& out);
  // A whole record (tag, length, body) of the decoded frame, `readable` bytes
  // readable from its start; false (and the frame abandoned) when it does not split.
  bool split_record(const uint8_t* record, size_t bytes, size_t readable);

  // The column form of every frame since the last take() into block.columns
  // (block.has_columns set), and the builder starts the next block. False
  // (has_columns clear) when the block must be split from its frames instead:
  // a frame spoiled it, or its coded correlation ids would make the form
  // larger than the frames (split_block_columns then splits without).
  bool take(RawBlock& block);

 private:
  enum class State { kIdle, kDecoding, kAbandoned };
  // Room for `bytes` more in every stream (a frame's bytes at most go to any one).
  void reserve(size_t bytes);
  void reset();

  // Stream c is [begin_[c], at_[c]) of a buffer of capacity_[c] bytes.
  std::unique_ptr<uint8_t[]> buffers_[kBlockColumns];
  size_t capacity_[kBlockColumns] = {};
  uint8_t* begin_[kBlockColumns] = {};
  uint8_t* at_[kBlockColumns] = {};
  uint64_t prev_correlation_ = 0;  // the correlation coder's chain (format 5)
  bool spoiled_ = false;
  size_t frame_bytes_ = 0;  // of the frames since take(), as stored

  State state_ = State::kIdle;
  // At begin_decoded_frame(): the streams' ends, the chain, where the header went.
  uint8_t* mark_[kBlockColumns] = {};
  uint64_t mark_correlation_ = 0;
  size_t header_at_ = 0;
  size_t payload_bytes_ = 0;
};

}  // namespace inferscope::wire
