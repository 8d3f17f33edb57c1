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

// Decodes one record body of the given tag into out. kSkipped: a tag from a
// newer protocol revision, ignored. kError: why says what was wrong.
BodyResult decode_body(uint8_t tag, std::span<const uint8_t> body, int64_t& previous_ns,
                       Record& out, std::string& why);

}  // namespace inferscope::wire
