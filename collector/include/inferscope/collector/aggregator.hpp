// inferscope collector: turns decoded records into metrics and episodes.
//
// Single-threaded (the collector calls it from its one I/O thread); the
// prometheus-cpp families it updates are safe to scrape concurrently.
//
// The Aggregator keeps the models, their ranks and the window clock, and hands
// each record to the consumers of its kind, one per concern (dispatch table;
// src/aggregate/, docs/architecture.md): MoE routing, serving (memory, prefix
// cache, stages, requests), agent health, kernel time, expert parallelism.
//
// Windows: each model has one window clock. Window k covers
// [k * window_ns, (k + 1) * window_ns) of the agents' CLOCK_MONOTONIC. A record
// whose timestamp falls in a later window closes the current one for every
// consumer, rank and layer of the model (a late record is counted in the current
// window). advance(now_ns) closes windows when no record comes (the daemon calls
// it from a timer with an estimate of the agents' clock); tests drive windows
// purely by record timestamps, so they need no sleeps.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/collector/detector.hpp"
#include "inferscope/collector/ep_ranks.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/sources.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

struct ModelState;
struct RankState;
class RecordContext;
class RecordConsumer;
class MoeRouting;
class ServingMetrics;
class AgentHealthMetrics;
class KernelTime;
class ExpertParallelism;

class Aggregator {
 public:
  using AlertSink = std::function<void(const wire::AlertEpisode&)>;

  Aggregator(AggregatorOptions options, CollectorMetrics& metrics);
  ~Aggregator();
  Aggregator(const Aggregator&) = delete;  // consumers hold references into it
  Aggregator& operator=(const Aggregator&) = delete;

  // Episodes (opened: end_ns == 0; closed: end_ns set) go here as they happen.
  void set_alert_sink(AlertSink sink) { alert_sink_ = std::move(sink); }

  void on_connect(const Source& source);
  void on_disconnect(const Source& source);
  // False (with why) when the record contradicts the source's hello (e.g. an
  // expert count that differs from the layer's): a protocol error.
  bool on_record(const Source& source, const wire::Record& record, std::string& why);
  // Whether on_record does anything with the record: most records are spans, and only
  // kernel spans have a consumer (kernel time). Inline, so that the pipeline skips the call
  // for the rest.
  static bool takes(const wire::Record& record) {
    const auto* span = std::get_if<wire::Span>(&record);
    return span == nullptr || span->category == wire::SpanCategory::kKernel;
  }
  // Adds what records counted since the last call to the metrics that are summed in plain
  // integers on the record path (kernel time: a prometheus counter update per kernel span
  // was the larger part of its cost). The pipeline calls it at the end of every frame, so
  // those counters are stale by at most the frame being applied.
  void flush_metrics();

  // Closes every window of every model that ended at or before now_ns.
  void advance(int64_t now_ns);
  // Estimate of the agents' clock: the latest record timestamp plus the wall
  // time since it arrived. Used by the daemon's timer; nullopt before any record.
  std::optional<int64_t> estimated_now(int64_t steady_now_ns) const;
  // The wall time (steady clock) at which the latest frame arrived.
  void note_arrival(int64_t steady_now_ns) { last_arrival_steady_ns_ = steady_now_ns; }

  // [SECTION] Inspection (tests, benchmark, docs)
  struct LayerSnapshot {
    uint32_t experts = 0;
    uint64_t windows = 0;       // non-idle windows closed
    analysis::LayerStats last;  // last non-idle window
  };
  std::optional<LayerSnapshot> layer(const std::string& model, uint32_t rank, uint32_t layer) const;
  std::optional<analysis::RankLoad> rank_load(const std::string& model, uint32_t layer) const;
  // The EPLB what-if's rank loads for the layer, last window (needs a placement).
  std::optional<analysis::RankLoad> eplb_rank_load(const std::string& model, uint32_t layer) const;
  // Open hot-rank episodes with their layers and responsible experts.
  std::vector<HotRank> hot_ranks(const std::string& model) const;
  const EpRanks* ep_ranks(const std::string& model) const;  // null before any EP data
  std::vector<wire::AlertEpisode> open_episodes() const;
  const std::deque<wire::AlertEpisode>& recent_alerts() const { return recent_; }

 private:
  friend class RecordContext;  // rank_for, on_time
  ModelState* model_for(const Source& source);
  const ModelState* find_model(const std::string& name) const;
  RankState* rank_for(ModelState& model, uint32_t rank, const std::string& rank_label);
  void on_time(ModelState& model, int64_t ts_ns);
  void close_window(ModelState& model);
  void emit(wire::AlertEpisode a);  // to the recent list and the sink

  AggregatorOptions options_;
  CollectorMetrics& metrics_;
  AlertSink alert_sink_;
  std::map<std::string, std::unique_ptr<ModelState>> models_;
  std::deque<wire::AlertEpisode> recent_;
  int64_t last_record_ns_ = 0;
  int64_t last_arrival_steady_ns_ = 0;
  bool seen_record_ = false;
  // The model and rank of the last record's source (models and ranks never go away);
  // forgotten on every on_connect / on_disconnect, the only times a source's model or rank
  // changes. A rank over the bound is not kept, so each record asking for it counts it.
  uint32_t last_source_ = 0;
  ModelState* last_model_ = nullptr;
  RankState* last_rank_ = nullptr;

  // [SECTION] Consumers, and by record kind the ones that take it, in order
  std::unique_ptr<MoeRouting> moe_;
  std::unique_ptr<ServingMetrics> serving_;
  std::unique_ptr<AgentHealthMetrics> health_;
  std::unique_ptr<KernelTime> kernels_;
  std::unique_ptr<ExpertParallelism> ep_;
  std::vector<RecordConsumer*> consumers_;  // every one: window close, rank events
  std::array<std::vector<RecordConsumer*>, wire::kRecordKindCount> by_kind_;
};

}  // namespace inferscope::collector
