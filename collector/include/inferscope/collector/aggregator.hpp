// inferscope collector: turns decoded records into metrics and episodes.
//
// Single-threaded (the collector calls it from its one I/O thread); the
// prometheus-cpp families it updates are safe to scrape concurrently.
//
// Windows: each model has one window clock. Window k covers
// [k * window_ns, (k + 1) * window_ns) of the agents' CLOCK_MONOTONIC. A record
// whose timestamp falls in a later window closes the current one for every rank
// and layer of the model (a late record is counted in the current window).
// advance(now_ns) closes windows when no record comes (the daemon calls it from
// a timer with an estimate of the agents' clock); tests drive windows purely by
// record timestamps, so they need no sleeps.
#pragma once

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

class Aggregator {
 public:
  using AlertSink = std::function<void(const wire::AlertEpisode&)>;

  Aggregator(AggregatorOptions options, CollectorMetrics& metrics);
  ~Aggregator();

  // Episodes (opened: end_ns == 0; closed: end_ns set) go here as they happen.
  void set_alert_sink(AlertSink sink) { alert_sink_ = std::move(sink); }

  void on_connect(const Source& source);
  void on_disconnect(const Source& source);
  // False (with why) when the record contradicts the source's hello (e.g. an
  // expert count that differs from the layer's): a protocol error.
  bool on_record(const Source& source, const wire::Record& record, std::string& why);

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
  struct Model;
  struct Rank;
  struct Layer;
  Model* model_for(const Source& source);
  Rank* rank_for(Model& model, uint32_t rank, const std::string& rank_label);
  void on_time(Model& model, int64_t ts_ns);
  void close_window(Model& model);
  void close_layer(Model& model, Rank& rank, uint32_t index, Layer& layer, int64_t start_ns,
                   int64_t end_ns);
  void publish(Model& model, Rank& rank, Layer& layer, uint32_t index, const EpisodeEvent& ev);
  void emit(wire::AlertEpisode a);  // to the recent list and the sink
  void on_expert_load(const Source& source, Model& model, const wire::ExpertLoad& load,
                      std::string& why, bool& ok);

  AggregatorOptions options_;
  CollectorMetrics& metrics_;
  AlertSink alert_sink_;
  std::map<std::string, std::unique_ptr<Model>> models_;
  std::deque<wire::AlertEpisode> recent_;
  // Last cumulative health report per agent process (host, instance, pid), kept
  // across reconnects: a reconnecting agent re-sends its cumulative counts, and
  // keying by connection would count them twice. Bounded by kMaxAgentsTracked.
  std::map<std::string, wire::AgentHealth> health_;
  size_t episode_series_ = 0;
  int64_t last_record_ns_ = 0;
  int64_t last_arrival_steady_ns_ = 0;
  bool seen_record_ = false;
};

}  // namespace inferscope::collector
