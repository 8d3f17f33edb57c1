// The aggregator's consumers: one per concern (MoE routing, serving, agent
// health, kernel time, expert parallelism). The Aggregator keeps the models,
// their ranks and the window clock, and hands each record to the consumers of
// its kind (a dispatch table); each consumer keeps its own state and metric
// handles and closes its own windows. docs/architecture.md lists them.
//
// Internal to the collector library (not installed).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "inferscope/collector/placement.hpp"
#include "inferscope/collector/sources.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector {

class Aggregator;

inline constexpr int64_t kNoWindow = INT64_MIN;

// A rank of a model, as every consumer sees it.
struct RankState {
  uint32_t id = 0;
  uint32_t index = 0;  // dense per model in order of arrival: consumers' tables index by it
  std::string label;
  uint32_t connected = 0;  // agents connected for this rank now
};

// A model, as every consumer sees it. The Aggregator owns it.
struct ModelState {
  uint32_t index = 0;  // dense in order of arrival (models are bounded and never removed)
  std::string name;
  std::vector<wire::LayerDescription> layers;  // from the first hello that described any
  int64_t window = kNoWindow;
  std::map<uint32_t, std::unique_ptr<RankState>> ranks;  // by id: windows close in rank order
  std::optional<Placement> placement;
  uint32_t world_size = 1;  // largest world size any hello of the model declared
};

// One record on its way through the consumers of its kind.
class RecordContext {
 public:
  // known_rank: the source's rank when the caller found it already (the aggregator keeps the
  // last record's), so that rank() does not look it up again; null to look it up on first use.
  RecordContext(Aggregator& aggregator, const Source& source, ModelState& model,
                RankState* known_rank = nullptr)
      : aggregator_(aggregator),
        rank_looked_up_(known_rank != nullptr),
        rank_(known_rank),
        source(source),
        model(model) {}

  // The source's rank, created on first use; null over the rank bound (counted
  // once per record however many consumers ask).
  RankState* rank();
  // The rank if rank() found one; null if it was not asked for or is over the bound.
  RankState* rank_found() const { return rank_; }
  // The record's time: a later window closes the model's current one first.
  void at(int64_t ts_ns);

 private:
  Aggregator& aggregator_;
  bool rank_looked_up_ = false;
  RankState* rank_ = nullptr;

 public:
  const Source& source;
  ModelState& model;
};

using AlertOut = std::function<void(wire::AlertEpisode)>;

class RecordConsumer {
 public:
  virtual ~RecordConsumer() = default;
  // False, with why, when the record contradicts the source's hello: a protocol
  // error, and the consumers after this one do not see the record.
  virtual bool on_record(RecordContext& ctx, const wire::Record& record, std::string& why) = 0;
  // The model's window [start_ns, end_ns) closed (consumers in dispatch order).
  virtual void close_window(ModelState& /*model*/, int64_t /*start_ns*/, int64_t /*end_ns*/) {}
  // A rank seen for the first time: the series every rank has from the start.
  virtual void on_rank(const ModelState& /*model*/, const RankState& /*rank*/) {}
  // The count of agents connected for the rank changed.
  virtual void on_connected(const ModelState& /*model*/, const RankState& /*rank*/) {}
  // The rank's last agent left; its state ends at end_ns.
  virtual void on_rank_left(const ModelState& /*model*/, const RankState& /*rank*/,
                            int64_t /*end_ns*/) {}
};

// A consumer's state per model and per rank, found by the dense indexes above
// (no map lookup per record). Entries are created on first use.
template <class PerRank>
class RankTable {
 public:
  PerRank& at(const ModelState& model, const RankState& rank) {
    if (models_.size() <= model.index) models_.resize(model.index + 1);
    auto& ranks = models_[model.index];
    if (ranks.size() <= rank.index) ranks.resize(rank.index + 1);
    if (!ranks[rank.index]) ranks[rank.index] = std::make_unique<PerRank>();
    return *ranks[rank.index];
  }
  PerRank* find(const ModelState& model, const RankState& rank) const {
    if (models_.size() <= model.index) return nullptr;
    const auto& ranks = models_[model.index];
    return rank.index < ranks.size() ? ranks[rank.index].get() : nullptr;
  }

 private:
  std::vector<std::vector<std::unique_ptr<PerRank>>> models_;
};

template <class PerModel>
class ModelTable {
 public:
  PerModel& at(const ModelState& model) {
    if (models_.size() <= model.index) models_.resize(model.index + 1);
    if (!models_[model.index]) models_[model.index] = std::make_unique<PerModel>();
    return *models_[model.index];
  }
  PerModel* find(const ModelState& model) const {
    return model.index < models_.size() ? models_[model.index].get() : nullptr;
  }

 private:
  std::vector<std::unique_ptr<PerModel>> models_;
};

double seconds(int64_t ns);

}  // namespace inferscope::collector
