#include "inferscope/collector/stream_sequences.hpp"

#include <algorithm>

namespace inferscope::collector {

StreamSequences::Entry& StreamSequences::touch(uint64_t stream) {
  auto it = map_.find(stream);
  if (it != map_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.age);
    return it->second;
  }
  if (map_.size() >= max_streams_ && !lru_.empty()) {
    map_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(stream);
  Entry& e = map_[stream];
  e.age = lru_.begin();
  return e;
}

bool StreamSequences::admit(uint64_t stream, uint64_t seq) {
  Entry& e = touch(stream);
  if (seq <= e.last) return false;
  e.last = seq;
  return true;
}

void StreamSequences::seed(uint64_t stream, uint64_t seq) {
  Entry& e = touch(stream);
  e.last = std::max(e.last, seq);
}

uint64_t StreamSequences::last(uint64_t stream) const {
  auto it = map_.find(stream);
  return it == map_.end() ? 0 : it->second.last;
}

}  // namespace inferscope::collector
