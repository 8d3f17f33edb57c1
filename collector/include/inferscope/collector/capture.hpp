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
// How long each capture takes to land (episode opening -> agent started ->
// first span ingested -> spans settled in the trace store) is measured by
// detail::CaptureLatency (collector/src/capture/capture_latency.hpp):
// inferscope_collector_capture_latency_seconds{stage} and
// inferscope_collector_capture_not_landed_total{reason}. It sees every
// forwarded frame through on_frame() (one call per frame, which returns at
// once while no capture is pending) and every AgentHealth through on_health().
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
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "inferscope/collector/options.hpp"
#include "inferscope/collector/sources.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

namespace detail {
class CaptureLatency;
}

class CaptureCoordinator {
 public:
  // Writes one control message to a source's connection; false when it has none.
  using Send = std::function<bool(uint32_t source_id, std::vector<uint8_t> message)>;

  // The trace store's settled ticket (TraceStore::settled_ticket); unset: no store.
  using Settled = std::function<uint64_t()>;
  using Log = std::function<void(const std::string&)>;

  CaptureCoordinator(const CaptureOptions& options, SourceRegistry& sources,
                     prometheus::Registry& registry);
  ~CaptureCoordinator();
  void set_sender(Send send) { send_ = std::move(send); }
  void set_store(Settled settled);
  void set_log(Log log);  // one line per capture that lands or does not

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
  void on_health(const Source& source, const wire::AgentHealth& h, int64_t now_ns);
  // Every frame the pipeline forwarded (after the store took it: ticket is its
  // TraceStore ticket, 0 without a store).
  void on_frame(std::span<const uint8_t> frame, uint64_t ticket, int64_t now_ns);
  // Periodically (the collector's tick): captures land or time out.
  void tick(int64_t now_ns);

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
  std::unique_ptr<detail::CaptureLatency> latency_;
};

}  // namespace inferscope::collector
