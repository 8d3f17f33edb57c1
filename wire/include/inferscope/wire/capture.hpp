// inferscope wire: the capture request (collector -> agent), version 1.
//
// The collector -> agent direction of an ingest connection carries
// acknowledgements (ack.hpp, 16 bytes, magic "ISAK") and, to agents whose
// hello announced kCapabilityCaptureRequests, capture requests: "trace the
// GPU for the next N steps (or T ms), and tag what you record with this id".
// A collector never sends one to an agent that did not announce the
// capability, so agents from before it (which close a connection on bytes that
// are not an acknowledgement) never see one.
//
// Every collector -> agent message other than the ack starts with the same
// 8-byte header, so an agent can step over message types newer than itself:
//   offset 0  u32  magic: "ISCQ" (0x51435349) for a capture request; an agent
//                  skips any other magic whose first two bytes are "IS" and
//                  whose length is valid (it is not an ack: the ack is "ISAK")
//   offset 4  u16  version of this message (1)
//   offset 6  u16  length: total bytes of the message, header included, a
//                  multiple of 8 in [16, kMaxControlBytes]; a later version
//                  may append fields (an agent reads the ones it knows)
// Capture request, version 1 (32 bytes):
//   offset 8  u64  capture id: unique per collector process, from 1
//   offset 16 u64  episode id: the alert episode that asked (0: a user request)
//   offset 24 u32  steps to trace (0: use duration_ms)
//   offset 28 u32  duration_ms (used when steps == 0; 0 then means the
//                  agent's burst length; a step-counted capture is capped by
//                  the agent's own INFERSCOPE_GPU_CAPTURE_MAX_MS)
// All little-endian. The agent answers nothing on the wire: its counters
// (requested, started, refused busy / cooldown / off, completed) ride in
// AgentHealth, and the captured GPU spans carry the arg "capture" = the
// episode id (or the capture id when the episode id is 0).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

namespace inferscope::wire {

inline constexpr uint32_t kCaptureMagic = 0x51435349;  // "ISCQ" little-endian
inline constexpr uint16_t kCaptureVersion = 1;
inline constexpr size_t kCaptureBytes = 32;
inline constexpr size_t kControlHeaderBytes = 8;
inline constexpr size_t kMaxControlBytes = 4096;
// Hello::capabilities bits.
inline constexpr uint32_t kCapabilityCaptureRequests = 1u << 0;

struct CaptureRequest {
  uint64_t capture_id = 0;
  uint64_t episode_id = 0;
  uint32_t steps = 0;
  uint32_t duration_ms = 0;

  // What the agent tags the captured spans with.
  uint64_t tag() const { return episode_id != 0 ? episode_id : capture_id; }
  friend bool operator==(const CaptureRequest&, const CaptureRequest&) = default;
};

inline std::vector<uint8_t> encode_capture_request(const CaptureRequest& r) {
  std::vector<uint8_t> out(kCaptureBytes);
  const uint32_t magic = kCaptureMagic;
  const uint16_t version = kCaptureVersion, length = kCaptureBytes;
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 2);
  std::memcpy(out.data() + 6, &length, 2);
  std::memcpy(out.data() + 8, &r.capture_id, 8);
  std::memcpy(out.data() + 16, &r.episode_id, 8);
  std::memcpy(out.data() + 24, &r.steps, 4);
  std::memcpy(out.data() + 28, &r.duration_ms, 4);
  return out;
}

// The header of a non-ack control message: its magic and total length, or
// nullopt when the 8 bytes are not one (then the stream is not trusted).
struct ControlHeader {
  uint32_t magic = 0;
  uint16_t version = 0;
  uint16_t length = 0;
};
inline std::optional<ControlHeader> decode_control_header(std::span<const uint8_t> in) {
  if (in.size() < kControlHeaderBytes) return std::nullopt;
  ControlHeader h;
  std::memcpy(&h.magic, in.data(), 4);
  std::memcpy(&h.version, in.data() + 4, 2);
  std::memcpy(&h.length, in.data() + 6, 2);
  if ((h.magic & 0xffffu) != 0x5349u) return std::nullopt;  // "IS"
  if (h.length < 16 || h.length > kMaxControlBytes || h.length % 8 != 0) return std::nullopt;
  return h;
}

// A whole capture request (in.size() == its header's length), or nullopt.
inline std::optional<CaptureRequest> decode_capture_request(std::span<const uint8_t> in) {
  auto h = decode_control_header(in);
  if (!h || h->magic != kCaptureMagic || h->version < 1 || h->length < kCaptureBytes ||
      in.size() != h->length)
    return std::nullopt;
  CaptureRequest r;
  std::memcpy(&r.capture_id, in.data() + 8, 8);
  std::memcpy(&r.episode_id, in.data() + 16, 8);
  std::memcpy(&r.steps, in.data() + 24, 4);
  std::memcpy(&r.duration_ms, in.data() + 28, 4);
  return r;
}

}  // namespace inferscope::wire
