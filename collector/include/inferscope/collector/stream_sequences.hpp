// inferscope collector: which frames of each agent stream are already applied.
//
// Agents number their data frames (wire::FrameSequence: a random stream id and
// a frame number from 1) and write again whatever a collector did not
// acknowledge before a connection broke. This table remembers, per stream, the
// highest number applied, so a re-sent frame is skipped and every record is
// counted once. It outlives connections (an agent reconnects with the same
// stream) and, seeded from the trace store's newest segments at start, a
// collector restart on the same --trace-dir.
//
// Bounded: at most max_streams entries; the stream seen longest ago is
// forgotten first (its agent has been gone the longest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>

namespace inferscope::collector {

class StreamSequences {
 public:
  explicit StreamSequences(size_t max_streams = 65536) : max_streams_(max_streams) {}

  // True when the frame is new for its stream (and remembers it); false when a
  // frame with this or a later number was already applied: skip it.
  bool admit(uint64_t stream, uint64_t seq);
  // Raises a stream's high-water mark without applying anything (recovery).
  void seed(uint64_t stream, uint64_t seq);
  // 0 when the stream is unknown.
  uint64_t last(uint64_t stream) const;
  size_t size() const { return map_.size(); }

 private:
  struct Entry {
    uint64_t last = 0;
    std::list<uint64_t>::iterator age;  // position in lru_ (front: most recent)
  };
  Entry& touch(uint64_t stream);

  size_t max_streams_;
  std::unordered_map<uint64_t, Entry> map_;
  std::list<uint64_t> lru_;
};

}  // namespace inferscope::collector
