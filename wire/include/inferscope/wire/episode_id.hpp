// How an alert episode is named outside the collector that opened it.
//
// Two forms of one identity (kind, model, rank, layer, expert, start):
//  - episode_id(): text, "<kind>-r<rank>-l<layer>-e<expert>-<start_ns>", what a person types
//    (inferscope-export --episode, --list-episodes) and what Perfetto exports show;
//  - episode_capture_tag(): a positive 64-bit hash, the value of the `capture` argument on every
//    GPU span of a capture the episode asked for (span arguments are integers). The viewer
//    computes it from an alert to find that capture's spans; the collector to tag the request.
// Both live here so the collector (capture requests, export) and the viewer agree by construction.
#pragma once

#include <cstdint>
#include <string>

#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

std::string episode_id(const AlertEpisode& a);

// Never 0 (0 means "no episode": a capture a user asked for).
uint64_t episode_capture_tag(const AlertEpisode& a);

}  // namespace inferscope::wire
