#include "serving.hpp"

#include <algorithm>

#include "inferscope/wire/counter_names.hpp"

namespace inferscope::collector {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

namespace {

const Histogram::BucketBoundaries& stage_buckets() {
  static const Histogram::BucketBoundaries b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,   0.5,   1,      2.5,   5,    10,    30};
  return b;
}
const Histogram::BucketBoundaries& ttft_buckets() {
  static const Histogram::BucketBoundaries b{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                             1,     2.5,  5,     10,   30,  60};
  return b;
}
const Histogram::BucketBoundaries& tpot_buckets() {
  static const Histogram::BucketBoundaries b{0.001, 0.0025, 0.005, 0.01, 0.02, 0.04,
                                             0.08,  0.16,   0.32,  0.64, 1.28};
  return b;
}
const Histogram::BucketBoundaries& e2e_buckets() {
  static const Histogram::BucketBoundaries b{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                             2.5,  5,     10,   30,  60,   120, 300};
  return b;
}

}  // namespace

struct ServingMetrics::Rank {
  std::array<Gauge*, wire::kMemoryKindCount> mem_used{}, mem_capacity{};
  std::array<Counter*, 2> prefix_queried{}, prefix_hit{};
  std::array<Histogram*, wire::kStageCount> stage_hist{};
  std::array<Counter*, wire::kStageCount> stage_gpu{};  // created by the first measured GPU time
  std::array<Counter*, 2> ckpt_evictions{};             // [reused]; created by the first report
  Histogram *ttft = nullptr, *tpot = nullptr, *e2e = nullptr;
  std::array<Counter*, 4> requests{};
  std::array<Counter*, 4> tokens{};
};

ServingMetrics::ServingMetrics(CollectorMetrics& metrics) : metrics_(metrics) {}
ServingMetrics::~ServingMetrics() = default;

void ServingMetrics::on_rank(const ModelState& model, const RankState& rank) {
  Rank& r = ranks_.at(model, rank);
  const Labels base{{"model", model.name}, {"rank", rank.label}};
  auto with = [&](const char* key, const char* value) {
    Labels l = base;
    l[key] = value;
    return l;
  };
  for (uint8_t k = 0; k < wire::kMemoryKindCount; ++k) {
    const char* kind = wire::to_string(static_cast<wire::MemoryKind>(k));
    r.mem_used[k] = &metrics_.memory_used.Add(with("kind", kind));
    r.mem_capacity[k] = &metrics_.memory_capacity.Add(with("kind", kind));
  }
  const char* layer_kinds[2] = {"attention", "ssm"};
  for (int k = 0; k < 2; ++k) {
    r.prefix_queried[k] = &metrics_.prefix_queried.Add(with("layer_kind", layer_kinds[k]));
    r.prefix_hit[k] = &metrics_.prefix_hit.Add(with("layer_kind", layer_kinds[k]));
  }
  for (uint8_t s = 0; s < wire::kStageCount; ++s) {
    const char* stage = wire::to_string(static_cast<wire::Stage>(s));
    r.stage_hist[s] = &metrics_.stage_duration.Add(with("stage", stage), stage_buckets());
  }
  r.ttft = &metrics_.ttft.Add(base, ttft_buckets());
  r.tpot = &metrics_.tpot.Add(base, tpot_buckets());
  r.e2e = &metrics_.e2e.Add(base, e2e_buckets());
  const char* statuses[4] = {"ok", "cancelled", "error", "rejected"};
  for (int s = 0; s < 4; ++s) r.requests[s] = &metrics_.requests.Add(with("status", statuses[s]));
  const char* token_kinds[4] = {"prompt", "output", "image", "cached"};
  for (int k = 0; k < 4; ++k)
    r.tokens[k] = &metrics_.request_tokens.Add(with("kind", token_kinds[k]));
}

bool ServingMetrics::on_record(RecordContext& ctx, const wire::Record& record, std::string&) {
  const ModelState& model = ctx.model;
  switch (wire::kind_of(record)) {
    case wire::RecordKind::kMemory: {
      const auto& m = std::get<wire::MemorySample>(record);
      ctx.at(m.timestamp_ns);
      // Labelled with the source's rank (not the sample's field), so one
      // connection cannot mint series for arbitrary ranks.
      if (const RankState* rank = ctx.rank()) {
        Rank& r = ranks_.at(model, *rank);
        const auto k = static_cast<size_t>(m.kind);
        r.mem_used[k]->Set(static_cast<double>(m.used_bytes));
        r.mem_capacity[k]->Set(static_cast<double>(m.capacity_bytes));
      }
      break;
    }
    case wire::RecordKind::kPrefixCache: {
      const auto& p = std::get<wire::PrefixCacheSample>(record);
      ctx.at(p.timestamp_ns);
      if (const RankState* rank = ctx.rank()) {
        Rank& r = ranks_.at(model, *rank);
        r.prefix_queried[0]->Increment(static_cast<double>(p.attention_queried_tokens));
        r.prefix_hit[0]->Increment(static_cast<double>(p.attention_hit_tokens));
        r.prefix_queried[1]->Increment(static_cast<double>(p.ssm_queried_tokens));
        r.prefix_hit[1]->Increment(static_cast<double>(p.ssm_hit_tokens));
      }
      break;
    }
    case wire::RecordKind::kStage: {
      const auto& s = std::get<wire::StageTiming>(record);
      ctx.at(s.end_ns);
      if (const RankState* rank = ctx.rank()) {
        Rank& r = ranks_.at(model, *rank);
        const auto k = static_cast<size_t>(s.stage);
        r.stage_hist[k]->Observe(seconds(std::max<int64_t>(0, s.end_ns - s.start_ns)));
        // gpu_ns 0 means "not measured" (no CUPTI, a CPU stage): no series, rather
        // than one that reads as "the GPU took no time".
        if (s.gpu_ns > 0) {
          if (r.stage_gpu[k] == nullptr)
            r.stage_gpu[k] = &metrics_.stage_gpu_seconds.Add({{"model", model.name},
                                                              {"rank", rank->label},
                                                              {"stage", wire::to_string(s.stage)}});
          r.stage_gpu[k]->Increment(seconds(s.gpu_ns));
        }
      }
      break;
    }
    case wire::RecordKind::kRequest: {
      const auto& q = std::get<wire::RequestEvent>(record);
      ctx.at(q.finish_ns);
      if (const RankState* rank = ctx.rank()) {
        Rank& r = ranks_.at(model, *rank);
        r.requests[static_cast<size_t>(q.status)]->Increment();
        r.tokens[0]->Increment(q.prompt_tokens);
        r.tokens[1]->Increment(q.output_tokens);
        r.tokens[2]->Increment(q.image_tokens);
        r.tokens[3]->Increment(q.cached_tokens);
        if (q.status == wire::RequestStatus::kOk) {
          r.e2e->Observe(seconds(std::max<int64_t>(0, q.finish_ns - q.arrival_ns)));
          if (q.first_token_ns != 0) {
            r.ttft->Observe(seconds(std::max<int64_t>(0, q.first_token_ns - q.arrival_ns)));
            if (q.output_tokens > 1)
              r.tpot->Observe(seconds(std::max<int64_t>(0, q.finish_ns - q.first_token_ns)) /
                              (q.output_tokens - 1));
          }
        }
      }
      break;
    }
    case wire::RecordKind::kCounter: {
      // Only the counters named in wire/counter_names.hpp become metrics. No
      // window clock: counters carry no window-relevant time here.
      const auto& c = std::get<wire::CounterSample>(record);
      if (c.is_gauge || !(c.value >= 0)) break;
      const std::string& name = ctx.source.string(c.name_id);
      const int reused = name == wire::counter_names::kSsmCheckpointsEvictedUnused   ? 0
                         : name == wire::counter_names::kSsmCheckpointsEvictedReused ? 1
                                                                                     : -1;
      if (reused < 0) break;
      const RankState* rank = ctx.rank();
      if (rank == nullptr) break;
      Rank& r = ranks_.at(model, *rank);
      if (r.ckpt_evictions[reused] == nullptr)
        r.ckpt_evictions[reused] = &metrics_.ssm_checkpoint_evictions.Add(
            {{"model", model.name}, {"rank", rank->label}, {"reused", reused ? "true" : "false"}});
      r.ckpt_evictions[reused]->Increment(c.value);
      break;
    }
    default:
      break;
  }
  return true;
}

}  // namespace inferscope::collector
