// The SPSC byte ring on its own: order, wrap-around, full, and a real
// producer/consumer pair on two threads (run under TSan/ASan in CI builds).
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "../../agent/src/byte_ring.hpp"

namespace inferscope::agent::detail {
namespace {

TEST(ByteRing, CapacityIsAPowerOfTwoOfAtLeast64KiB) {
  EXPECT_EQ(ByteRing(1000).capacity(), 64u << 10);
  EXPECT_EQ(ByteRing((1u << 20) + 5).capacity(), 1u << 20);
}

TEST(ByteRing, KeepsOrderAcrossWrapAndReportsFull) {
  ByteRing ring(64 << 10);
  uint64_t written = 0, read = 0;
  std::vector<uint8_t> payload(1000);
  // Many rounds of fill-and-drain with odd sizes force wraps at every offset.
  for (int round = 0; round < 200; ++round) {
    int accepted = 0;
    for (;;) {
      const size_t len = 8 + (written * 37) % 900;
      std::fill(payload.begin(), payload.end(), static_cast<uint8_t>(written));
      if (!ring.write(1, 0, static_cast<uint16_t>(len), &written, sizeof written, payload.data(),
                      len))
        break;
      ++written;
      ++accepted;
    }
    ASSERT_GT(accepted, 0);
    ring.drain([&](const RingHeader& h, const uint8_t* p) {
      uint64_t seq;
      std::memcpy(&seq, p, sizeof seq);
      ASSERT_EQ(seq, read);
      ASSERT_EQ(h.count, 8 + (seq * 37) % 900);
      for (size_t i = 0; i < h.count; ++i) ASSERT_EQ(p[8 + i], static_cast<uint8_t>(seq));
      ++read;
    });
    ASSERT_EQ(read, written);
    ASSERT_TRUE(ring.empty());
  }
  EXPECT_LE(ring.high_water(), ring.capacity());
}

// write_words (the inline range path: one compare against the producer's limit) mixed with
// variable-size writes: the limit must send every record that would pass the end of the
// buffer or the consumer's tail to the slow path, at every offset.
TEST(ByteRing, WordRecordsAndVariableRecordsShareTheLimit) {
  ByteRing ring(64 << 10);
  uint64_t written = 0, read = 0, refused = 0;
  std::vector<uint8_t> payload(600);
  for (int round = 0; round < 300; ++round) {
    for (;;) {
      bool ok;
      if (written % 3 == 2) {
        const size_t len = 8 + (written * 53) % 500;
        std::fill(payload.begin(), payload.end(), static_cast<uint8_t>(written));
        ok = ring.write(2, 0, static_cast<uint16_t>(len), &written, sizeof written, payload.data(),
                        len);
      } else {
        ok = ring.write_words(1, 3, static_cast<uint16_t>(written), written, ~written, written * 7);
      }
      if (!ok) {
        ++refused;
        break;
      }
      ++written;
    }
    // After the drain the producer's view of the tail (and its limit) is stale: the next
    // round's writes go past it only through the slow path's re-read.
    ring.drain([&](const RingHeader& h, const uint8_t* p) {
      uint64_t w[3];
      std::memcpy(w, p, sizeof w);
      ASSERT_EQ(w[0], read);
      if (h.kind == 1) {
        ASSERT_EQ(h.bytes, 32u);
        ASSERT_EQ(h.sub, 3);
        ASSERT_EQ(h.count, static_cast<uint16_t>(read));
        ASSERT_EQ(w[1], ~read);
        ASSERT_EQ(w[2], read * 7);
      } else {
        ASSERT_EQ(h.kind, 2);
        ASSERT_EQ(h.count, 8 + (read * 53) % 500);
        for (size_t i = 0; i < h.count; ++i) ASSERT_EQ(p[8 + i], static_cast<uint8_t>(read));
      }
      ++read;
    });
    ASSERT_EQ(read, written);
  }
  EXPECT_EQ(refused, 300u);  // one refusal per round: the ring was full each time
  EXPECT_EQ(ring.written(), written);
}

TEST(ByteRing, RejectsARecordLargerThanAQuarter) {
  ByteRing ring(64 << 10);
  std::vector<uint8_t> big(ring.max_payload() + 1);
  EXPECT_FALSE(ring.write(1, 0, 0, big.data(), big.size()));
  EXPECT_TRUE(ring.write(1, 0, 0, big.data(), ring.max_payload() - 8));
}

TEST(ByteRing, ProducerAndConsumerThreads) {
  ByteRing ring(64 << 10);
  constexpr uint64_t kCount = 300000;
  std::atomic<bool> done{false};
  uint64_t dropped = 0;
  std::thread producer([&] {
    for (uint64_t i = 0; i < kCount; ++i)
      if (!ring.write(1, 0, 0, &i, sizeof i)) ++dropped;
    done = true;
  });
  uint64_t last = 0, got = 0;
  bool first = true, ordered = true;
  auto take = [&](const RingHeader&, const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    if (!first && v <= last) ordered = false;
    first = false;
    last = v;
    ++got;
  };
  while (!done) ring.drain(take);
  producer.join();
  ring.drain(take);
  EXPECT_TRUE(ordered);
  EXPECT_EQ(got + dropped, kCount);
}

}  // namespace
}  // namespace inferscope::agent::detail
