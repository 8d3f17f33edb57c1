// Consumer: expert parallelism per model. Two inputs:
//  - expert_load records, summed over the model's ranks per layer: with an
//    expert placement (--placement or the hello's expert_to_rank) each window
//    gives the ranks' utilization under it and under the EPLB what-if
//    (analysis::compute_rank_load, analysis::plan_eplb);
//  - expert_parallel records: the EpRanks join (idle time, stragglers, traffic,
//    hot ranks, EPLB advisor; ep_ranks.hpp), which also takes the placement
//    windows above to attribute a hot rank to its experts.
#pragma once

#include "consumer.hpp"
#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/collector/ep_ranks.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"

namespace inferscope::collector {

class ExpertParallelism final : public RecordConsumer {
 public:
  ExpertParallelism(const AggregatorOptions& options, CollectorMetrics& metrics, AlertOut alerts);
  ~ExpertParallelism() override;

  bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) override;
  void close_window(ModelState& model, int64_t start_ns, int64_t end_ns) override;

  const analysis::RankLoad* rank_load(const ModelState& model, uint32_t layer) const;
  const analysis::RankLoad* eplb_rank_load(const ModelState& model, uint32_t layer) const;
  const EpRanks* ep_ranks(const ModelState& model) const;  // null before any EP data

 private:
  struct Model {
    std::map<uint32_t, std::vector<uint64_t>> placement_acc;  // layer -> load over all ranks
    std::map<uint32_t, std::vector<prometheus::Gauge*>> rank_util;
    std::map<uint32_t, prometheus::Gauge*> balancedness;
    std::map<uint32_t, analysis::RankLoad> last_rank_load;
    // EPLB what-if, next to the current placement's gauges above.
    std::map<uint32_t, std::vector<prometheus::Gauge*>> eplb_util;
    std::map<uint32_t, prometheus::Gauge*> eplb_balancedness;
    std::map<uint32_t, analysis::RankLoad> last_eplb_load;
    // Created by the first expert_parallel record or placement window.
    std::unique_ptr<EpRanks> ep;
  };
  bool on_expert_load(RecordContext& ctx, const wire::ExpertLoad& load);
  bool on_step(RecordContext& ctx, const wire::ExpertParallelStep& s, std::string& why);

  const AggregatorOptions& options_;
  CollectorMetrics& metrics_;
  AlertOut alerts_;
  ModelTable<Model> models_;
};

}  // namespace inferscope::collector
