// Node clocks and alert episodes for the exporters (perfetto_export.hpp, [SECTION] Episodes).
#include <charconv>
#include <limits>
#include <unordered_map>

#include "inferscope/collector/perfetto_export.hpp"
#include "inferscope/collector/trace_scan.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::collector {
namespace {

// Calls on_alert for each alert record in the frames of nodes[i] within [from, to].
template <typename OnAlert>
bool scan_alerts(const ExportNode& node, int64_t from, int64_t to, OnAlert&& on_alert,
                 std::string& error) {
  wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  TraceScanStats stats;
  return scan_trace_files(
      node.files, from, to,
      [&](uint32_t source, std::span<const uint8_t> frame) {
        if (source != 0 || !dec.open(frame).ok()) return true;  // alerts are source 0's
        wire::Record r;
        while (dec.next(r))
          if (wire::kind_of(r) == wire::RecordKind::kAlert)
            on_alert(std::get<wire::AlertEpisode>(r));
        return true;
      },
      stats, error);
}

bool parse_u64(std::string_view s, uint64_t& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

}  // namespace

bool read_node_clock(const ExportNode& node, NodeClock& clock, std::string& error) {
  wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  TraceScanStats stats;
  // Hellos open every segment, so this reads the first block of the first file.
  return scan_trace_files(
      node.files,
      [&](uint32_t, std::span<const uint8_t> frame) {
        if (!dec.open(frame).ok()) return true;
        wire::Record r;
        while (dec.next(r))
          if (wire::kind_of(r) == wire::RecordKind::kHello) {
            const auto& h = std::get<wire::Hello>(r);
            clock.host = h.host;
            clock.realtime_minus_monotonic_ns = h.clock.realtime_minus_monotonic_ns;
            clock.found = true;
            return false;
          }
        return true;
      },
      stats, error);
}

bool read_node_clocks(const std::vector<ExportNode>& nodes, NodeClocks& clocks,
                      std::string& error) {
  clocks = NodeClocks{};
  clocks.nodes.resize(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!read_node_clock(nodes[i], clocks.nodes[i], error)) return false;
    const NodeClock& c = clocks.nodes[i];
    if (c.found && (!clocks.found || c.realtime_minus_monotonic_ns < clocks.reference_offset_ns)) {
      clocks.found = true;
      clocks.reference_offset_ns = c.realtime_minus_monotonic_ns;
    }
  }
  return true;
}

bool find_episode(const std::vector<ExportNode>& nodes, const std::string& id, FoundEpisode& found,
                  std::string& error) {
  // The start time is the id's last field: only blocks holding it are read.
  const auto dash = id.rfind('-');
  uint64_t start = 0;
  if (dash == std::string::npos || !parse_u64(std::string_view(id).substr(dash + 1), start) ||
      start > uint64_t(std::numeric_limits<int64_t>::max())) {
    error = "episode id '" + id +
            "' is not <kind>-r<rank>-l<layer>-e<expert>-<start_ns> (see --list-episodes)";
    return false;
  }
  NodeClocks clocks;
  if (!read_node_clocks(nodes, clocks, error)) return false;
  bool have = false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t t = static_cast<int64_t>(start);
    if (!scan_alerts(
            nodes[i], t, t,
            [&](const wire::AlertEpisode& a) {
              if (episode_id(a) != id) return;
              // The closing record (end_ns set) wins over the opening one.
              if (!have || (found.episode.end_ns == 0 && a.end_ns != 0)) {
                have = true;
                found.episode = a;
                found.node = i;
                found.shift_ns = clocks.shift(i);
              }
            },
            error))
      return false;
    if (have) return true;
  }
  error = "no stored alert episode has the id " + id + " (see --list-episodes)";
  return false;
}

bool list_episodes(const std::vector<ExportNode>& nodes, std::vector<FoundEpisode>& out,
                   std::string& error) {
  NodeClocks clocks;
  if (!read_node_clocks(nodes, clocks, error)) return false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t shift = clocks.shift(i);
    std::unordered_map<std::string, size_t> seen;  // this node's ids -> index in out
    if (!scan_alerts(
            nodes[i], std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
            [&](const wire::AlertEpisode& a) {
              // An episode is stored when it opens and when it closes: keep one
              // entry, the closing one.
              auto [it, inserted] = seen.emplace(episode_id(a), out.size());
              if (inserted)
                out.push_back({a, i, shift});
              else if (a.end_ns != 0)
                out[it->second].episode = a;
            },
            error))
      return false;
  }
  return true;
}

}  // namespace inferscope::collector
