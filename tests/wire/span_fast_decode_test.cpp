// decode_span_fast (wire/src/record_codec.hpp) against decode_body, the checked
// decoder it stands in for: on valid spans of every shape both give the same
// span and timestamp chain; on damaged bodies the fast path either refuses or
// agrees with decode_body, byte for byte, and never moves the chain when it refuses.
#include <gtest/gtest.h>

#include <random>

#include "record_codec.hpp"

namespace inferscope::wire {
namespace {

// A span with fields of every width: 1-byte to 10-byte varints, negative and
// huge deltas, 0 to 4 args.
Span random_span(std::mt19937_64& rng) {
  auto pick = [&](uint64_t max) {
    const int bits = static_cast<int>(rng() % 65);
    const uint64_t v = bits == 64 ? rng() : rng() & ((uint64_t{1} << bits) - 1);
    return max == UINT64_MAX ? v : v % (max + 1);
  };
  Span s;
  s.track_kind = static_cast<TrackKind>(rng() % 2);
  s.track_id = static_cast<uint32_t>(pick(UINT32_MAX));
  s.stream = static_cast<uint32_t>(pick(UINT32_MAX));
  s.name_id = static_cast<uint32_t>(pick(UINT32_MAX));
  s.category = static_cast<SpanCategory>(rng() % 8);
  s.depth = static_cast<uint16_t>(pick(UINT16_MAX));
  // Deltas from a random previous time are of every size and sign; end - start
  // stays in range (the encoder subtracts them as int64).
  s.start_ns = static_cast<int64_t>(pick(INT64_MAX / 2));
  s.end_ns = s.start_ns + static_cast<int64_t>(pick(INT64_MAX / 4));
  s.correlation_id = pick(UINT64_MAX);
  s.request_id = pick(UINT64_MAX);
  s.num_args = static_cast<uint8_t>(rng() % (kMaxSpanArgs + 1));
  for (uint8_t i = 0; i < s.num_args; ++i)
    s.args[i] = {static_cast<uint32_t>(pick(UINT32_MAX)), static_cast<int64_t>(pick(UINT64_MAX))};
  return s;
}

// The body of s as add_one writes it (without tag and length).
std::vector<uint8_t> body_of(const Span& s, int64_t previous_ns) {
  std::vector<uint8_t> record;
  add_one(record, previous_ns, s);
  const size_t head = (record[1] & 0x80) ? 3 : 2;  // a span body is under 16 KiB
  return {record.begin() + static_cast<ptrdiff_t>(head), record.end()};
}

struct Both {
  bool fast_ok = false;
  BodyResult checked = BodyResult::kError;
  Record fast, slow;
  int64_t fast_prev = 0, slow_prev = 0;
};

// Runs both decoders on body, followed by `after` readable bytes of noise.
Both decode_both(const std::vector<uint8_t>& body, int64_t prev, std::mt19937_64& rng,
                 size_t after = kSpanFieldsMaxBytes) {
  std::vector<uint8_t> buffer = body;
  for (size_t i = 0; i < after; ++i) buffer.push_back(static_cast<uint8_t>(rng()));
  Both b;
  b.fast_prev = b.slow_prev = prev;
  b.fast_ok = decode_span_fast(buffer.data(), body.size(), buffer.size(), b.fast_prev, b.fast);
  std::string why;
  b.checked = decode_body(static_cast<uint8_t>(RecordKind::kSpan), body, b.slow_prev, b.slow, why);
  return b;
}

TEST(SpanFastDecode, ValidSpansOfEveryShapeDecodeAsTheCheckedDecoderDoes) {
  std::mt19937_64 rng(7);
  for (int n = 0; n < 20000; ++n) {
    const Span s = random_span(rng);
    const int64_t prev = static_cast<int64_t>(rng());
    const Both b = decode_both(body_of(s, prev), prev, rng);
    ASSERT_EQ(b.checked, BodyResult::kOk) << n;
    ASSERT_TRUE(b.fast_ok) << n;
    ASSERT_EQ(std::get<Span>(b.fast), s) << n;
    ASSERT_EQ(std::get<Span>(b.fast).args, std::get<Span>(b.slow).args) << n;  // unused ones 0
    ASSERT_EQ(b.fast_prev, s.start_ns) << n;
    ASSERT_EQ(b.fast_prev, b.slow_prev) << n;
  }
}

TEST(SpanFastDecode, DamagedBodiesAreRefusedOrDecodedAlike) {
  std::mt19937_64 rng(11);
  int refused = 0, decoded = 0;
  for (int n = 0; n < 50000; ++n) {
    const int64_t prev = static_cast<int64_t>(rng());
    std::vector<uint8_t> body = body_of(random_span(rng), prev);
    switch (rng() % 4) {
      case 0:  // a byte changed
        body[rng() % body.size()] = static_cast<uint8_t>(rng());
        break;
      case 1:  // cut short
        body.resize(rng() % body.size());
        break;
      case 2:  // bytes after the fields (a newer revision's, or noise)
        for (size_t i = rng() % 8 + 1; i > 0; --i) body.push_back(static_cast<uint8_t>(rng()));
        break;
      default:  // a run of continuation bytes (varints over 10 bytes)
        for (size_t i = rng() % body.size(), k = 0; i < body.size() && k < 12; ++i, ++k)
          body[i] |= 0x80;
    }
    const Both b = decode_both(body, prev, rng);
    if (!b.fast_ok) {
      ++refused;
      ASSERT_EQ(b.fast_prev, prev) << n << ": a refusal moved the timestamp chain";
      continue;
    }
    ++decoded;
    ASSERT_EQ(b.checked, BodyResult::kOk) << n << ": the fast path took what the checks refuse";
    ASSERT_EQ(std::get<Span>(b.fast), std::get<Span>(b.slow)) << n;
    ASSERT_EQ(std::get<Span>(b.fast).args, std::get<Span>(b.slow).args) << n;
    ASSERT_EQ(b.fast_prev, b.slow_prev) << n;
  }
  // Both outcomes occur (the damage is neither always fatal nor always harmless).
  EXPECT_GT(refused, 1000);
  EXPECT_GT(decoded, 1000);
}

TEST(SpanFastDecode, RefusesWithoutRoomToReadPastTheBody) {
  std::mt19937_64 rng(3);
  Span s;
  s.name_id = 5;
  const auto body = body_of(s, 0);
  const Both b = decode_both(body, 0, rng, kSpanFieldsMaxBytes - body.size() - 1);
  EXPECT_FALSE(b.fast_ok);
  EXPECT_EQ(b.checked, BodyResult::kOk);
  const Both room = decode_both(body, 0, rng, kSpanFieldsMaxBytes - body.size());
  EXPECT_TRUE(room.fast_ok);
}

}  // namespace
}  // namespace inferscope::wire
