// Consumer: the agents' own health per (model, rank): records sent, dropped by
// kind, reconnects, unconfirmed records, CUPTI detaches / re-attaches / their
// errors (from their cumulative agent_health reports, as deltas), and how many
// agents are connected for the rank.
#pragma once

#include <array>

#include "consumer.hpp"
#include "inferscope/collector/metrics.hpp"

namespace inferscope::collector {

class AgentHealthMetrics final : public RecordConsumer {
 public:
  explicit AgentHealthMetrics(CollectorMetrics& metrics);
  ~AgentHealthMetrics() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;
  void on_rank(const ModelState& model, const RankState& rank) override;
  void on_connected(const ModelState& model, const RankState& rank) override;

 private:
  struct Rank;
  CollectorMetrics& metrics_;
  RankTable<Rank> ranks_;
  // Last cumulative report per agent process (host, instance, pid), kept across
  // reconnects: a reconnecting agent re-sends its cumulative counts, and keying
  // by connection would count them twice. Bounded by kMaxAgentsTracked.
  std::map<std::string, wire::AgentHealth> last_;
};

}  // namespace inferscope::collector
