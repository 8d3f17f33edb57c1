// inferscope collector: the records of a frame, as the pipeline decodes them.
//
// The pipeline decodes every frame once to validate and aggregate it. A
// consumer that needs the records too (the trace store's level-of-detail
// summaries) taps them here instead of decoding the frame a second time.
//
//   begin_frame();  record(source, r) for each record;  then either
//   end_frame()    right before the frame goes to the frame sink (the next
//                  frame the sink is handed is this one), or
//   abort_frame()  when the frame is not forwarded (rejected part-way, or a
//                  duplicate): the consumer forgets the records it was given.
//
// Frames the sink gets without end_frame() just before (alert frames, which
// may be written while a tapped frame is still being decoded) were not tapped.
#pragma once

#include <cstdint>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {
class ColumnBuilder;
}

namespace inferscope::collector {

class RecordTap {
 public:
  virtual ~RecordTap() = default;
  virtual void begin_frame() = 0;
  // source: the id the frame is stamped with when forwarded.
  virtual void record(uint32_t source, const wire::Record& record) = 0;
  virtual void end_frame() = 0;
  virtual void abort_frame() = 0;
  // After begin_frame(): where the frame's records may be split into column
  // streams as they are decoded (FrameDecoder::fuse_columns), or null. The
  // consumer undoes that split on abort_frame(), and finishes it when the
  // frame reaches its sink; a frame whose split the decoder abandoned (it
  // re-encodes a hello) is split whole there instead.
  virtual wire::ColumnBuilder* columns() { return nullptr; }
};

}  // namespace inferscope::collector
