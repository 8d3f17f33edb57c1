// Block manager: reference counts, prefix lookup, LRU eviction; checkpoint store LRU.
#include <gtest/gtest.h>

#include "inferscope/engine/kv_cache.hpp"

namespace ie = inferscope::engine;

TEST(BlockManager, PrefixLookupRefcountsAndLruEviction) {
  ie::BlockManager bm(4, 2);
  std::vector<uint64_t> keys_a = {1, 2, 3, 4, 5}, keys_b = {1, 2, 9, 9};
  auto ha = ie::block_hashes(keys_a, 2), hb = ie::block_hashes(keys_b, 2);
  ASSERT_EQ(ha.size(), 2u);
  EXPECT_EQ(ha[0], hb[0]);  // same first block
  EXPECT_NE(ha[1], hb[1]);  // chain differs after
  std::vector<int32_t> a;
  ASSERT_TRUE(bm.allocate(2, a));
  bm.register_block(a[0], ha[0]);
  bm.register_block(a[1], ha[1]);
  EXPECT_EQ(bm.cached_prefix(hb), 1);
  EXPECT_EQ(bm.used(), 2);
  bm.release(a);
  EXPECT_EQ(bm.used(), 0);
  EXPECT_EQ(bm.available(), 4);  // 2 free + 2 cached-evictable
  std::vector<int32_t> b;
  bm.acquire_cached(hb, 1, b);
  EXPECT_EQ(b[0], a[0]);
  // Needs 3 fresh blocks: the 2 free ones and the LRU cached one (ha[1]).
  EXPECT_FALSE(bm.allocate(4, b));
  ASSERT_TRUE(bm.allocate(3, b));
  EXPECT_EQ(bm.evictions(), 1u);
  EXPECT_EQ(bm.cached_prefix(ha), 1);  // block 0 survives (referenced), block 1 evicted
  EXPECT_EQ(bm.available(), 0);
}

TEST(CheckpointStore, ReusesLeastRecentlyUsedSlot) {
  ie::CheckpointStore cs(2);
  bool fresh = false;
  int s1 = cs.insert(11, &fresh);
  EXPECT_TRUE(fresh);
  int s2 = cs.insert(22, &fresh);
  EXPECT_NE(s1, s2);
  EXPECT_EQ(cs.insert(11, &fresh), s1);
  EXPECT_FALSE(fresh);
  int s3 = cs.insert(33, &fresh);  // evicts 22, the least recently used
  EXPECT_EQ(s3, s2);
  EXPECT_EQ(cs.find(22), -1);
  EXPECT_EQ(cs.find(11), s1);
}

TEST(CheckpointStore, CountsEvictionsByWhetherTheCheckpointWasRestored) {
  ie::CheckpointStore cs(2);
  bool fresh = false;
  cs.insert(11, &fresh);
  cs.insert(22, &fresh);
  cs.restored(11);
  cs.find(22);            // a lookup alone is not a reuse
  cs.insert(33, &fresh);  // evicts 11 (LRU after the lookup of 22): it was restored
  EXPECT_EQ(cs.evicted_reused(), 1u);
  EXPECT_EQ(cs.evicted_unused(), 0u);
  cs.insert(44, &fresh);  // evicts 22: looked up, never restored
  cs.insert(55, &fresh);  // evicts 33: never looked at
  EXPECT_EQ(cs.evicted_unused(), 2u);
  EXPECT_EQ(cs.evicted_reused(), 1u);
  cs.restored(99);  // unknown hash: no effect, no crash
  EXPECT_EQ(cs.used(), 2);
}
