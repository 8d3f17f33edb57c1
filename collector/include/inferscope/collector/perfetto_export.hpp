// inferscope collector: trace files -> Perfetto's native protobuf trace format
// (TrackEvent packets; opens in ui.perfetto.dev and trace_processor).
//
// Several nodes (one collector --trace-dir each) become one trace. Layout
// (docs/collector.md, "Perfetto export"):
//   (node, source)   -> a process track "<model> rank R (<instance>) @ <node>"
//   CPU thread       -> child track "thread <tid>"; its spans nest by time
//   GPU stream       -> child track "GPU <device> stream <stream>"; kernels, memcpys
//   correlation id   -> a flow from the CPU launch (runtime span) to its GPU work
//   request, stage   -> slices on the process's "requests" tracks (one per request,
//                       merged by name in the UI); stages nest in their request,
//                       categories prefill / decode / encoder / connector
//   memory           -> counter tracks "<kind> used" (bytes)
//   prefix cache     -> counter tracks "prefix cache hit rate (attention|ssm)"
//   expert loads     -> counter tracks "layer L imbalance (max/mean)"
//   counters         -> counter tracks by name
//   alerts           -> instants "opened" / "closed" on the node's alert track,
//                       and the closed episode as a slice on its own track
//
// Clocks: each host's CLOCK_MONOTONIC is moved onto one host's (NodeClocks) by
// the difference of the hosts' realtime offsets from their hellos (records.hpp).
// A clock snapshot maps the trace's clock to REALTIME.
//
// Streams: frames are read a block at a time through the store's index and each
// frame's events are written before the next is read; track, interning and
// string tables are bounded. Memory does not grow with the trace's length.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "inferscope/collector/chrome_export.hpp"
#include "inferscope/wire/episode_id.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

// One node's trace: a collector's --trace-dir (or trace files), and its label.
struct ExportNode {
  std::string label;
  std::vector<std::string> files;
};

// Time window in the trace's clock (NodeClocks: the earliest-booted host's
// monotonic clock; a single node's own). stats.events counts packets.
bool export_perfetto_trace(const std::vector<ExportNode>& nodes, std::ostream& out,
                           const ExportOptions& options, ExportStats& stats, std::string& error);

// Distinct names (and categories, annotation names) one packet sequence interns
// before its incremental state is restarted; for tests.
size_t perfetto_interning_cap();

// The host clock of a node's first hello.
struct NodeClock {
  std::string host;
  int64_t realtime_minus_monotonic_ns = 0;
  bool found = false;
};
bool read_node_clock(const ExportNode& node, NodeClock& clock, std::string& error);

// Every node's clock and the trace's: the monotonic clock of the host with the
// smallest realtime - monotonic offset (the earliest booted), so that no moved
// timestamp is negative. shift(i) moves node i's first host onto it.
struct NodeClocks {
  std::vector<NodeClock> nodes;
  int64_t reference_offset_ns = 0;
  bool found = false;
  int64_t shift(size_t i) const {
    return found && nodes[i].found ? nodes[i].realtime_minus_monotonic_ns - reference_offset_ns : 0;
  }
};
bool read_node_clocks(const std::vector<ExportNode>& nodes, NodeClocks& clocks, std::string& error);

// [SECTION] Episodes
// An alert episode's id is wire::episode_id(): "<kind>-r<rank>-l<layer>-e<expert>-<start_ns>",
// e.g. "hot_expert-r3-l0-e2-4000000" (start in its node's clock).
using wire::episode_id;

struct FoundEpisode {
  wire::AlertEpisode episode;  // the closing record when stored, else the opening one
  size_t node = 0;
  int64_t shift_ns = 0;  // add to the episode's times for the trace's clock (NodeClocks)
};
// Finds an episode by id through the time index (only blocks at its start are
// read). False with error when the id is malformed or no node stores it.
bool find_episode(const std::vector<ExportNode>& nodes, const std::string& id, FoundEpisode& found,
                  std::string& error);
// Every episode stored, for --list-episodes (a full scan of source-0 frames).
bool list_episodes(const std::vector<ExportNode>& nodes, std::vector<FoundEpisode>& out,
                   std::string& error);

}  // namespace inferscope::collector
