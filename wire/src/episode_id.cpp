#include "inferscope/wire/episode_id.hpp"

#include <cstdint>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

namespace {
// FNV-1a: the tag only has to be stable across processes and builds, not secret.
uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
}  // namespace

std::string episode_id(const AlertEpisode& a) {
  return std::string(to_string(a.kind)) + "-r" + std::to_string(a.rank) + "-l" +
         std::to_string(a.layer) + "-e" + std::to_string(a.expert) + "-" +
         std::to_string(a.start_ns);
}

uint64_t episode_capture_tag(const AlertEpisode& a) {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint8_t kind = static_cast<uint8_t>(a.kind);
  h = fnv1a(h, &kind, 1);
  h = fnv1a(h, a.model.data(), a.model.size());
  h = fnv1a(h, &a.rank, sizeof a.rank);
  h = fnv1a(h, &a.layer, sizeof a.layer);
  h = fnv1a(h, &a.expert, sizeof a.expert);
  h = fnv1a(h, &a.start_ns, sizeof a.start_ns);
  h &= INT64_MAX;  // a span argument is an int64: keep it positive
  return h == 0 ? 1 : h;
}

}  // namespace inferscope::wire
