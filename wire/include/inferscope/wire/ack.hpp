// inferscope wire: the collector's acknowledgement (collector -> agent).
//
// Protocol version 1 streams go one way; this is the only thing a collector
// writes back on an ingest connection. It lets an agent bound what a collector
// that dies without draining (kill -9, crash) may have lost: records written
// on the connection but not yet acknowledged are counted as "unconfirmed".
//
//   offset 0  u32  magic "ISAK" (0x4b415349), little-endian
//   offset 4  u32  flags: bit 0 "draining" (graceful stop: the collector reads
//                  everything up to the agent's EOF, then closes); others 0
//   offset 8  u64  bytes of this connection's stream the collector has fully
//                  processed (whole frames only), cumulative from the first byte
//
// A draining ack is followed by the collector's half-close; an EOF without
// one means the collector died (kill -9 closes its sockets too), so what was
// not acknowledged stays in doubt. Agents that predate acks read and discard
// whatever the collector sends, so adding them changes nothing for those. An agent that finds a bad
// magic stops reading acknowledgements on that connection (everything it writes there stays
// unconfirmed) rather than trusting a desynchronised stream.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

namespace inferscope::wire {

inline constexpr uint32_t kAckMagic = 0x4b415349;  // "ISAK" little-endian
inline constexpr size_t kAckBytes = 16;
inline constexpr uint32_t kAckDraining = 1u << 0;

using AckBytes = std::array<uint8_t, kAckBytes>;

// Little-endian hosts only, like the frame header code (x86, arm64).
inline AckBytes encode_ack(uint64_t bytes_processed, uint32_t flags = 0) {
  AckBytes out{};
  const uint32_t magic = kAckMagic;
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &flags, 4);
  std::memcpy(out.data() + 8, &bytes_processed, 8);
  return out;
}

struct Ack {
  uint64_t bytes_processed = 0;
  bool draining = false;
};

// The acknowledgement, or nullopt when the 16 bytes are not one.
inline std::optional<Ack> decode_ack(std::span<const uint8_t, kAckBytes> in) {
  uint32_t magic = 0, flags = 0;
  std::memcpy(&magic, in.data(), 4);
  std::memcpy(&flags, in.data() + 4, 4);
  if (magic != kAckMagic || (flags & ~kAckDraining) != 0) return std::nullopt;
  Ack a;
  std::memcpy(&a.bytes_processed, in.data() + 8, 8);
  a.draining = (flags & kAckDraining) != 0;
  return a;
}

}  // namespace inferscope::wire
