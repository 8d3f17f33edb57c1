#include "agent_health.hpp"

namespace inferscope::collector {

namespace {
constexpr const char* kCuptiEvents[] = {"detach", "reattach", "detach_error"};
}  // namespace

struct AgentHealthMetrics::Rank {
  prometheus::Counter *sent = nullptr, *reconnects = nullptr, *unconfirmed = nullptr;
  std::array<prometheus::Counter*, wire::kRecordKindCount> dropped{};  // created by the first drop
  // inferscope_agent_gpu_cupti_events_total by event (kCuptiEvents), created by
  // the first non-zero count: ranks without CUPTI detaching add no series.
  std::array<prometheus::Counter*, 3> cupti{};
  prometheus::Gauge* connected = nullptr;
};

AgentHealthMetrics::AgentHealthMetrics(CollectorMetrics& metrics) : metrics_(metrics) {}
AgentHealthMetrics::~AgentHealthMetrics() = default;

void AgentHealthMetrics::on_rank(const ModelState& model, const RankState& rank) {
  Rank& r = ranks_.at(model, rank);
  const prometheus::Labels base{{"model", model.name}, {"rank", rank.label}};
  r.sent = &metrics_.agent_sent.Add(base);
  r.reconnects = &metrics_.agent_reconnects.Add(base);
  r.unconfirmed = &metrics_.agent_unconfirmed.Add(base);
  r.connected = &metrics_.agent_connected.Add(base);
}

void AgentHealthMetrics::on_connected(const ModelState& model, const RankState& rank) {
  if (Rank* r = ranks_.find(model, rank)) r->connected->Set(rank.connected);
}

bool AgentHealthMetrics::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const auto& h = std::get<wire::AgentHealth>(record);
  const RankState* rank = ctx.rank();
  if (rank == nullptr) return true;
  Rank& r = ranks_.at(ctx.model, *rank);
  constexpr size_t kMaxAgentsTracked = 4096;
  const wire::Hello& hello = ctx.source.hello;
  std::string agent = hello.host + '|' + hello.instance + '|' + std::to_string(hello.pid);
  if (last_.size() >= kMaxAgentsTracked && !last_.count(agent)) last_.erase(last_.begin());
  wire::AgentHealth& last = last_[agent];
  // Cumulative values; a smaller one means the agent restarted its counts.
  auto delta = [](uint64_t now, uint64_t before) { return now >= before ? now - before : now; };
  r.sent->Increment(static_cast<double>(delta(h.records_sent, last.records_sent)));
  r.reconnects->Increment(static_cast<double>(delta(h.reconnects, last.reconnects)));
  r.unconfirmed->Increment(
      static_cast<double>(delta(h.records_unconfirmed, last.records_unconfirmed)));
  for (uint8_t k = 0; k < wire::kRecordKindCount; ++k) {
    const uint64_t d = delta(h.dropped_by_kind[k], last.dropped_by_kind[k]);
    if (d == 0) continue;
    if (r.dropped[k] == nullptr)
      r.dropped[k] = &metrics_.agent_dropped.Add(
          {{"model", ctx.model.name},
           {"rank", rank->label},
           {"kind", wire::to_string(static_cast<wire::RecordKind>(k))}});
    r.dropped[k]->Increment(static_cast<double>(d));
  }
  // Older agents send no detach counters (they decode as 0): no series for them.
  const uint64_t cupti_now[] = {h.gpu.cupti_detaches, h.gpu.cupti_reattaches,
                                h.gpu.cupti_detach_errors};
  const uint64_t cupti_before[] = {last.gpu.cupti_detaches, last.gpu.cupti_reattaches,
                                   last.gpu.cupti_detach_errors};
  for (size_t e = 0; e < r.cupti.size(); ++e) {
    const uint64_t d = delta(cupti_now[e], cupti_before[e]);
    if (d == 0) continue;
    if (r.cupti[e] == nullptr)
      r.cupti[e] = &metrics_.agent_gpu_cupti_events.Add(
          {{"model", ctx.model.name}, {"rank", rank->label}, {"event", kCuptiEvents[e]}});
    r.cupti[e]->Increment(static_cast<double>(d));
  }
  last = h;
  return true;
}

}  // namespace inferscope::collector
