// Capture requests to agents (capture.hpp says when and how they are bounded).
#include <algorithm>
#include <chrono>

#include "capture_latency.hpp"
#include "inferscope/collector/capture.hpp"
#include "inferscope/wire/capture.hpp"
#include "inferscope/wire/episode_id.hpp"

namespace inferscope::collector {

namespace {
// Label sets of inferscope_agent_gpu_captures_total at most (model x rank x outcome).
constexpr size_t kMaxReportedSeries = 4096;
// Series of inferscope_collector_episode_capture_timestamp_seconds: the newest episodes only.
constexpr size_t kMaxEpisodeCaptures = 16;

}  // namespace

CaptureCoordinator::CaptureCoordinator(const CaptureOptions& options, SourceRegistry& sources,
                                       prometheus::Registry& registry)
    : options_(options),
      sources_(sources),
      requests_(prometheus::BuildCounter()
                    .Name("inferscope_collector_capture_requests_total")
                    .Help("GPU captures asked for, by origin (episode, user)")
                    .Register(registry)),
      agent_requests_(prometheus::BuildCounter()
                          .Name("inferscope_collector_capture_agent_requests_total")
                          .Help("Per agent: capture requests sent, or not sent and why")
                          .Register(registry)),
      agent_captures_(prometheus::BuildCounter()
                          .Name("inferscope_agent_gpu_captures_total")
                          .Help("What agents report doing with capture requests, by outcome "
                                "(requested, started, refused_busy, refused_cooldown, "
                                "refused_off, completed)")
                          .Register(registry)),
      episode_captures_(prometheus::BuildGauge()
                            .Name("inferscope_collector_episode_capture_timestamp_seconds")
                            .Help("Unix time at which an episode's GPU capture was asked for; the "
                                  "episode label is what inferscope-export --episode takes (the "
                                  "newest 16 episodes)")
                            .Register(registry)),
      latency_(std::make_unique<detail::CaptureLatency>(
          detail::CaptureLatencyOptions{options.max_pending_landings, options.landing_timeout_ns},
          registry)) {}

CaptureCoordinator::~CaptureCoordinator() = default;

void CaptureCoordinator::set_store(Settled settled) {
  latency_->set_settled(std::move(settled));
}
void CaptureCoordinator::set_log(Log log) {
  latency_->set_log(std::move(log));
}

void CaptureCoordinator::on_frame(std::span<const uint8_t> frame, uint64_t ticket, int64_t now_ns) {
  latency_->on_frame(sources_, frame, ticket, now_ns);
}

void CaptureCoordinator::tick(int64_t now_ns) {
  latency_->tick(sources_, now_ns);
}

prometheus::Counter& CaptureCoordinator::agent_outcome(const char* outcome) {
  return agent_requests_.Add({{"outcome", outcome}});
}

CaptureCoordinator::Outcome CaptureCoordinator::request(const std::string& model, uint32_t steps,
                                                        uint32_t duration_ms, uint64_t episode_id,
                                                        const char* origin, int64_t now_ns) {
  Outcome out;
  out.capture_id = next_id_++;
  requests_.Add({{"origin", origin}}).Increment();
  if (steps == 0 && duration_ms == 0) steps = options_.steps;
  wire::CaptureRequest req{out.capture_id, episode_id, steps, duration_ms};
  const auto message = wire::encode_capture_request(req);

  // Forget agents that went away (the map never outgrows the connections).
  std::vector<uint32_t> live;
  sources_.for_each([&](const Source& s) {
    if (s.connected && s.model == model) live.push_back(s.id);
  });
  std::erase_if(agents_, [&](const auto& kv) {
    const Source* s = sources_.find(kv.first);
    return s == nullptr || !s->connected;
  });
  for (uint32_t id : live) {
    const Source* s = sources_.find(id);
    ++out.agents;
    if (!(s->hello.capabilities & wire::kCapabilityCaptureRequests)) {
      ++out.unsupported;
      agent_outcome("unsupported").Increment();
      continue;
    }
    AgentState& st = agents_[id];
    if (now_ns < st.busy_until) {
      ++out.refused_busy;
      agent_outcome("refused_busy").Increment();
      continue;
    }
    if (now_ns < st.cooldown_until) {
      ++out.refused_cooldown;
      agent_outcome("refused_cooldown").Increment();
      continue;
    }
    if (!send_ || !send_(id, message)) {
      agent_outcome("send_failed").Increment();
      continue;
    }
    ++out.sent;
    agent_outcome("sent").Increment();
    // Its landing is timed from now: the episode's opening (or the POST's arrival).
    const auto last = reported_.find(id);
    latency_->on_sent(*s, out.capture_id, req.tag(), origin, now_ns,
                      last != reported_.end() ? last->second : wire::AgentHealth::Gpu{});
    // Busy for as long as the agent may run it; the cooldown counts from the send.
    const int64_t runs = steps > 0 ? options_.busy_ns
                                   : std::min<int64_t>(options_.busy_ns, duration_ms * 1'000'000ll);
    st.busy_until = now_ns + std::max<int64_t>(runs, 1);
    st.cooldown_until = now_ns + options_.cooldown_ns;
  }
  return out;
}

void CaptureCoordinator::on_alert(const wire::AlertEpisode& a, int64_t now_ns) {
  if (!options_.on_episodes || a.end_ns != 0) return;  // only when an episode opens
  switch (a.kind) {
    case wire::AlertKind::kHotExpert:
    case wire::AlertKind::kHotRank:
    case wire::AlertKind::kDeadExpert:
    case wire::AlertKind::kDropBurst:
      if (request(a.model, options_.steps, 0, wire::episode_capture_tag(a), "episode", now_ns)
              .sent > 0)
        remember_episode_capture(a);
      break;
    case wire::AlertKind::kColdExpert:
      break;
  }
}

// One series per captured episode, its value the wall-clock time of the request, so a Grafana
// annotation query ("series value as timestamp") marks the moment, names the episode and says how
// to open the capture (dashboards/grafana/inferscope-moe.json). Bounded: the oldest series goes.
void CaptureCoordinator::remember_episode_capture(const wire::AlertEpisode& a) {
  const double unix_s =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  prometheus::Gauge& g = episode_captures_.Add({{"model", a.model},
                                                {"kind", wire::to_string(a.kind)},
                                                {"rank", std::to_string(a.rank)},
                                                {"layer", std::to_string(a.layer)},
                                                {"expert", std::to_string(a.expert)},
                                                {"episode", wire::episode_id(a)}});
  g.Set(unix_s);
  if (std::find(episode_capture_series_.begin(), episode_capture_series_.end(), &g) !=
      episode_capture_series_.end())
    return;  // the same episode asked again: one series, its time updated
  episode_capture_series_.push_back(&g);
  if (episode_capture_series_.size() > kMaxEpisodeCaptures) {
    episode_captures_.Remove(episode_capture_series_.front());
    episode_capture_series_.pop_front();
  }
}

void CaptureCoordinator::on_health(const Source& source, const wire::AgentHealth& h,
                                   int64_t now_ns) {
  latency_->on_health(source, h.gpu, now_ns);
  if (reported_.size() >= kMaxReportedSeries / 6 && !reported_.count(source.id)) return;
  wire::AgentHealth::Gpu& last = reported_[source.id];
  // Cumulative values; a smaller one means the agent restarted its counts.
  auto add = [&](const char* outcome, uint64_t now, uint64_t before) {
    const uint64_t d = now >= before ? now - before : now;
    if (d == 0) return;
    agent_captures_.Add({{"model", source.model}, {"rank", source.rank}, {"outcome", outcome}})
        .Increment(static_cast<double>(d));
  };
  add("requested", h.gpu.captures_requested, last.captures_requested);
  add("started", h.gpu.captures_started, last.captures_started);
  add("refused_busy", h.gpu.captures_refused_busy, last.captures_refused_busy);
  add("refused_cooldown", h.gpu.captures_refused_cooldown, last.captures_refused_cooldown);
  add("refused_off", h.gpu.captures_refused_off, last.captures_refused_off);
  add("completed", h.gpu.captures_completed, last.captures_completed);
  last = h.gpu;
  // Sources that are gone do not keep their entry.
  std::erase_if(reported_, [&](const auto& kv) { return sources_.find(kv.first) == nullptr; });
}

}  // namespace inferscope::collector
