// Block manager and checkpoint store.
#include "inferscope/engine/kv_cache.hpp"

#include <stdexcept>

namespace inferscope::engine {

namespace {
uint64_t mix(uint64_t h, uint64_t v) {  // splitmix64 step over (h ^ v)
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<uint64_t> block_hashes(std::span<const uint64_t> keys, int32_t block_size) {
  std::vector<uint64_t> out;
  uint64_t h = 0x243f6a8885a308d3ull;
  for (size_t b = 0; (b + 1) * static_cast<size_t>(block_size) <= keys.size(); ++b) {
    for (int32_t i = 0; i < block_size; ++i)
      h = mix(h, keys[b * static_cast<size_t>(block_size) + static_cast<size_t>(i)]);
    h = mix(h, 0xb10cull + b);
    out.push_back(h | 1);  // never 0
  }
  return out;
}

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), blocks_(static_cast<size_t>(num_blocks)) {
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int32_t BlockManager::cached_prefix(std::span<const uint64_t> hashes) const {
  int32_t n = 0;
  for (uint64_t h : hashes) {
    if (!by_hash_.count(h)) break;
    ++n;
  }
  return n;
}

void BlockManager::acquire_cached(std::span<const uint64_t> hashes, int32_t n,
                                  std::vector<int32_t>& out) {
  for (int32_t i = 0; i < n; ++i) {
    auto it = by_hash_.find(hashes[static_cast<size_t>(i)]);
    if (it == by_hash_.end()) throw std::logic_error("acquire_cached: block not cached");
    Block& b = blocks_[static_cast<size_t>(it->second)];
    if (b.refs == 0) {
      lru_.erase(b.lru_pos);
      ++used_;
    }
    ++b.refs;
    out.push_back(it->second);
  }
}

bool BlockManager::allocate(int32_t n, std::vector<int32_t>& out) {
  if (n > available()) return false;
  for (int32_t i = 0; i < n; ++i) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {  // evict the least recently used cached block
      id = lru_.front();
      lru_.pop_front();
      Block& b = blocks_[static_cast<size_t>(id)];
      by_hash_.erase(b.hash);
      b.registered = false;
      ++evictions_;
    }
    blocks_[static_cast<size_t>(id)].refs = 1;
    ++used_;
    out.push_back(id);
  }
  return true;
}

void BlockManager::register_block(int32_t id, uint64_t hash) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.registered || by_hash_.count(hash)) return;
  b.registered = true;
  b.hash = hash;
  by_hash_[hash] = id;
}

void BlockManager::release(std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    Block& b = blocks_[static_cast<size_t>(id)];
    if (b.refs <= 0) throw std::logic_error("release: block not referenced");
    if (--b.refs > 0) continue;
    --used_;
    if (b.registered)
      b.lru_pos = lru_.insert(lru_.end(), id);
    else
      free_.push_back(id);
  }
}

CheckpointStore::CheckpointStore(int32_t slots) : slots_(slots) {
  for (int32_t s = slots - 1; s >= 0; --s) free_.push_back(s);
}

int32_t CheckpointStore::find(uint64_t hash) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  lru_.splice(lru_.end(), lru_, it->second.pos);
  return it->second.slot;
}

void CheckpointStore::restored(uint64_t hash) {
  auto it = by_hash_.find(hash);
  if (it != by_hash_.end()) it->second.reused = true;
}

int32_t CheckpointStore::insert(uint64_t hash, bool* fresh) {
  *fresh = false;
  if (slots_ <= 0) return -1;
  if (int32_t s = find(hash); s >= 0) return s;
  int32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    uint64_t victim = lru_.front();
    lru_.pop_front();
    const Entry& e = by_hash_[victim];
    slot = e.slot;
    ++(e.reused ? evicted_reused_ : evicted_unused_);
    by_hash_.erase(victim);
  }
  by_hash_[hash] = Entry{slot, lru_.insert(lru_.end(), hash), false};
  *fresh = true;
  return slot;
}

}  // namespace inferscope::engine
