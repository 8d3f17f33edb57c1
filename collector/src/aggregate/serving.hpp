// Consumer: serving metrics per (model, rank): memory by kind, prefix-cache
// queried / hit tokens, stage durations and their GPU time, requests with TTFT,
// TPOT and end-to-end latency, and the SSM checkpoint eviction counters (the
// counters named in wire/counter_names.hpp). A rank has the memory, prefix,
// stage, request and token series from its first record on.
#pragma once

#include <array>

#include "consumer.hpp"
#include "inferscope/collector/metrics.hpp"

namespace inferscope::collector {

class ServingMetrics final : public RecordConsumer {
 public:
  explicit ServingMetrics(CollectorMetrics& metrics);
  ~ServingMetrics() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;
  void on_rank(const ModelState& model, const RankState& rank) override;

 private:
  struct Rank;
  CollectorMetrics& metrics_;
  RankTable<Rank> ranks_;
};

}  // namespace inferscope::collector
