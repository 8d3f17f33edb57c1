// Per-record body encoding. Every record is: tag (u8), body length (varint), body.
// Timestamps are delta-coded against the previous timestamp in the same frame.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const Hello& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const StringDef& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const Span& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const ExpertLoad& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const MemorySample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const PrefixCacheSample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const StageTiming& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RequestEvent& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const AgentHealth& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const CounterSample& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const AlertEpisode& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const ExpertParallelStep& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RangeQuery& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const RangeEnd& r);
void add_one(std::vector<uint8_t>& payload, int64_t& previous_ns, const FrameSequence& r);

enum class BodyResult : uint8_t { kOk, kSkipped, kError };

// Bytes a span body's known fields can take at most, args included: a
// decode_span_fast read never goes further than this past the body's start.
inline constexpr size_t kSpanFieldsMaxBytes = 3 + 8 * 10 + kMaxSpanArgs * 20;

// The common case of decode_body for a span: each field read without a bounds
// check, the body checked once at the end. Needs kSpanFieldsMaxBytes readable
// from body (the frame's records after it: not the last ones). True when the
// span is valid; then out and previous_ns are what decode_body would make
// them. False says nothing: decode_body then decodes it (and says what is
// wrong), as if this had not run (previous_ns untouched; out may hold anything).
bool decode_span_fast(const uint8_t* body, size_t body_bytes, size_t readable, int64_t& previous_ns,
                      Record& out);

// Decodes one record body of the given tag into out. kSkipped: a tag from a
// newer protocol revision, ignored. kError: why says what was wrong.
BodyResult decode_body(uint8_t tag, std::span<const uint8_t> body, int64_t& previous_ns,
                       Record& out, std::string& why);

}  // namespace inferscope::wire
