// Paged KV-cache bookkeeping with automatic prefix caching (host side; the
// tensors live in the Model).
//
// Blocks hold block_size token positions. A full block of prompt tokens is
// registered under the hash of its tokens chained with the previous block's
// hash, so equal prefixes map to equal hash chains. Blocks are reference
// counted; a registered block whose count drops to 0 stays cached (evictable,
// least recently used first) until its memory is needed. SSM checkpoints
// (CheckpointStore) are keyed by the same chain hashes.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace inferscope::engine {

// Chain hashes of the full blocks of `keys` (one key per token position).
std::vector<uint64_t> block_hashes(std::span<const uint64_t> keys, int32_t block_size);

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  // Leading hashes whose blocks are cached (referenced or evictable).
  int32_t cached_prefix(std::span<const uint64_t> hashes) const;
  // Takes a reference on the cached blocks of hashes[0..n) and appends their ids.
  void acquire_cached(std::span<const uint64_t> hashes, int32_t n, std::vector<int32_t>& out);
  // Appends n fresh blocks, evicting least recently used cached blocks as
  // needed. Returns false (and takes nothing) if fewer than n are available.
  bool allocate(int32_t n, std::vector<int32_t>& out);
  // Registers a full block under `hash` unless that hash is already cached.
  void register_block(int32_t block, uint64_t hash);
  // Drops one reference per block.
  void release(std::span<const int32_t> blocks);

  int32_t available() const { return static_cast<int32_t>(free_.size() + lru_.size()); }
  int32_t used() const { return used_; }  // blocks with references
  int32_t cached() const { return static_cast<int32_t>(by_hash_.size()); }
  uint64_t evictions() const { return evictions_; }

 private:
  struct Block {
    int32_t refs = 0;
    uint64_t hash = 0;
    bool registered = false;
    std::list<int32_t>::iterator lru_pos;
  };
  int32_t block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;  // unregistered, unreferenced
  std::list<int32_t> lru_;     // registered, unreferenced; front = least recently used
  std::unordered_map<uint64_t, int32_t> by_hash_;
  int32_t used_ = 0;
  uint64_t evictions_ = 0;
};

// SSM state checkpoints at block boundaries, keyed by the chain hash of the
// prefix they follow; least recently used slot is reused when full.
//
// Evictions are counted by whether the checkpoint was ever restored: a pool that
// evicts checkpoints nobody restored is too small for the traffic's prefix reuse
// distance (or checkpoints too often), and its memory buys nothing.
class CheckpointStore {
 public:
  explicit CheckpointStore(int32_t slots);
  int32_t find(uint64_t hash);  // slot or -1 (touches LRU)
  // The checkpoint of `hash` was restored into a sequence's state (counts as reuse).
  void restored(uint64_t hash);
  // Slot for `hash`; *fresh = true when the caller must write the state into it.
  int32_t insert(uint64_t hash, bool* fresh);
  int32_t used() const { return static_cast<int32_t>(by_hash_.size()); }
  int32_t slots() const { return slots_; }
  uint64_t evicted_unused() const { return evicted_unused_; }  // never restored
  uint64_t evicted_reused() const { return evicted_reused_; }  // restored at least once

 private:
  int32_t slots_;
  std::list<uint64_t> lru_;  // front = least recently used
  struct Entry {
    int32_t slot;
    std::list<uint64_t>::iterator pos;
    bool reused = false;
  };
  std::unordered_map<uint64_t, Entry> by_hash_;
  std::vector<int32_t> free_;
  uint64_t evicted_unused_ = 0, evicted_reused_ = 0;
};

}  // namespace inferscope::engine
