#include "inferscope/collector/detector.hpp"

#include <algorithm>

#include "inferscope/analysis/classify.hpp"

namespace inferscope::collector {

LayerDetector::LayerDetector(const AggregatorOptions& options, uint32_t experts)
    : options_(options), experts_(experts) {}

uint32_t LayerDetector::count_open(wire::AlertKind kind) const {
  uint32_t n = 0;
  for (const auto& e : experts_) n += e.open == static_cast<int>(kind);
  return n;
}

void LayerDetector::close_all(int64_t end_ns, std::vector<EpisodeEvent>& events) {
  for (size_t i = 0; i < experts_.size(); ++i) {
    Expert& x = experts_[i];
    if (x.open >= 0)
      events.push_back({false, static_cast<wire::AlertKind>(x.open), static_cast<uint32_t>(i),
                        x.episode_start_ns, std::max(end_ns, x.episode_start_ns), x.peak_share,
                        x.peak_utilization});
    x = Expert{};
  }
  if (drop_open_)
    events.push_back({false, wire::AlertKind::kDropBurst, 0, drop_start_ns_,
                      std::max(end_ns, drop_start_ns_), drop_peak_, 0.0f});
  drop_open_ = false;
}

void LayerDetector::observe(const analysis::LayerStats& stats, int64_t start_ns, int64_t end_ns,
                            std::vector<EpisodeEvent>& events) {
  const size_t n = std::min(experts_.size(), stats.utilization.size());
  // Extends a streak or breaks it; `worse` says whether this window is the new peak.
  auto step = [&](Streak& s, bool in_condition, float share, float util, bool higher_is_peak) {
    if (!in_condition) {
      s = Streak{};
      return;
    }
    if (s.length == 0) {
      s.start_ns = start_ns;
      s.peak_share = share;
      s.peak_utilization = util;
    } else if (higher_is_peak ? util > s.peak_utilization : util < s.peak_utilization) {
      s.peak_share = share;
      s.peak_utilization = util;
    }
    ++s.length;
  };
  for (size_t i = 0; i < n; ++i) {
    Expert& x = experts_[i];
    const double u = stats.utilization[i];
    const float share = static_cast<float>(stats.share[i]);
    const float util = static_cast<float>(u);
    const bool zero = analysis::is_dead(stats.share[i]);
    step(x.hot, analysis::is_hot(u, options_), share, util, true);
    step(x.cold, analysis::is_cold(u, options_), share, util, false);
    step(x.dead, zero, share, util, false);

    auto close = [&](wire::AlertKind kind) {
      events.push_back({false, kind, static_cast<uint32_t>(i), x.episode_start_ns, start_ns,
                        x.peak_share, x.peak_utilization});
      x.open = -1;
    };
    // Close first (with hysteresis), then open at most one episode.
    if (x.open == static_cast<int>(wire::AlertKind::kHotExpert)) {
      if (analysis::hot_clears(u, options_)) {
        close(wire::AlertKind::kHotExpert);
      } else if (util > x.peak_utilization) {
        x.peak_share = share;
        x.peak_utilization = util;
      }
    } else if (x.open == static_cast<int>(wire::AlertKind::kColdExpert)) {
      if (analysis::cold_clears(u, options_) || x.dead.length >= options_.windows) {
        close(wire::AlertKind::kColdExpert);
      } else if (util < x.peak_utilization) {
        x.peak_share = share;
        x.peak_utilization = util;
      }
    } else if (x.open == static_cast<int>(wire::AlertKind::kDeadExpert)) {
      if (!zero) close(wire::AlertKind::kDeadExpert);
    }
    if (x.open >= 0) continue;
    const Streak* s = nullptr;
    wire::AlertKind kind{};
    if (x.dead.length >= options_.windows) {
      s = &x.dead;
      kind = wire::AlertKind::kDeadExpert;
    } else if (x.hot.length >= options_.windows) {
      s = &x.hot;
      kind = wire::AlertKind::kHotExpert;
    } else if (x.cold.length >= options_.windows) {
      s = &x.cold;
      kind = wire::AlertKind::kColdExpert;
    }
    if (s == nullptr) continue;
    x.open = static_cast<int>(kind);
    x.episode_start_ns = s->start_ns;
    x.peak_share = s->peak_share;
    x.peak_utilization = s->peak_utilization;
    events.push_back({true, kind, static_cast<uint32_t>(i), x.episode_start_ns, 0, x.peak_share,
                      x.peak_utilization});
  }

  // Layer-level drop burst: opens on the first window over the threshold.
  const float ratio = static_cast<float>(stats.drop_ratio);
  const bool burst = analysis::is_drop_burst(stats, options_);
  if (drop_open_) {
    if (!burst) {
      events.push_back(
          {false, wire::AlertKind::kDropBurst, 0, drop_start_ns_, start_ns, drop_peak_, 0.0f});
      drop_open_ = false;
    } else {
      drop_peak_ = std::max(drop_peak_, ratio);
    }
  } else if (burst) {
    drop_open_ = true;
    drop_start_ns_ = start_ns;
    drop_peak_ = ratio;
    events.push_back({true, wire::AlertKind::kDropBurst, 0, start_ns, 0, drop_peak_, 0.0f});
  }
  (void)end_ns;
}

}  // namespace inferscope::collector
