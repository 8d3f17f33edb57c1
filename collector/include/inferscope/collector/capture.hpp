// inferscope collector: asking agents for GPU captures (docs/gpu.md).
//
// A capture is "trace the GPU for the next N steps" sent to every connected
// agent of one model that announced it understands capture requests
// (wire/capture.hpp). Two origins: an alert episode opening (hot expert, hot
// rank, dead expert, token-drop burst; cold experts are not worth a trace),
// and a user (POST /capture on the capture endpoint, capture_http.hpp).
//
// Bounded on this side too: per agent, one capture at a time (a capture sent
// counts as running for options.busy_ns) and none again within
// options.cooldown_ns of the last one sent; the agent applies its own busy
// flag and cooldown as well and reports what it did in AgentHealth, which is
// exported here as inferscope_agent_gpu_captures_total{model,rank,outcome}.
// Collector-side counts: inferscope_collector_capture_requests_total{origin}
// and inferscope_collector_capture_agent_requests_total{outcome=sent |
// refused_busy | refused_cooldown | unsupported | send_failed}.
//
// The episode id on the wire and on the captured spans (arg "capture") is
// wire::episode_capture_tag(): a hash of what identifies the episode (kind, model,
// rank, layer, expert, start), so a viewer computes it from the alert record and
// finds the capture without any new field in AlertEpisode.
//
// Single-threaded: everything runs on the collector's io thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "inferscope/collector/options.hpp"
#include "inferscope/collector/sources.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

class CaptureCoordinator {
 public:
  // Writes one control message to a source's connection; false when it has none.
  using Send = std::function<bool(uint32_t source_id, std::vector<uint8_t> message)>;

  CaptureCoordinator(const CaptureOptions& options, SourceRegistry& sources,
                     prometheus::Registry& registry);
  void set_sender(Send send) { send_ = std::move(send); }

  struct Outcome {
    uint64_t capture_id = 0;
    uint32_t agents = 0;  // connected agents of the model
    uint32_t sent = 0;
    uint32_t refused_busy = 0;
    uint32_t refused_cooldown = 0;
    uint32_t unsupported = 0;  // agents too old to understand a capture request
  };
  // steps > 0, or duration_ms > 0, or neither (options.steps). origin: "episode" or "user".
  Outcome request(const std::string& model, uint32_t steps, uint32_t duration_ms,
                  uint64_t episode_id, const char* origin, int64_t now_ns);

  void on_alert(const wire::AlertEpisode& a, int64_t now_ns);
  void on_health(const Source& source, const wire::AgentHealth& h);

  const CaptureOptions& options() const { return options_; }

 private:
  struct AgentState {
    int64_t busy_until = INT64_MIN;
    int64_t cooldown_until = INT64_MIN;
  };
  prometheus::Counter& agent_outcome(const char* outcome);

  void remember_episode_capture(const wire::AlertEpisode& a);

  CaptureOptions options_;
  SourceRegistry& sources_;
  Send send_;
  uint64_t next_id_ = 1;
  std::map<uint32_t, AgentState> agents_;                // by source id; closed sources are pruned
  std::map<uint32_t, wire::AgentHealth::Gpu> reported_;  // last AgentHealth gpu block per source
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& agent_requests_;
  prometheus::Family<prometheus::Counter>& agent_captures_;
  // The last kMaxEpisodeCaptures episodes that got a capture, newest last (see the .cpp).
  prometheus::Family<prometheus::Gauge>& episode_captures_;
  std::deque<prometheus::Gauge*> episode_capture_series_;
};

}  // namespace inferscope::collector
