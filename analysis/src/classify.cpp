#include "inferscope/analysis/classify.hpp"

namespace inferscope::analysis {

ExpertClass classify(double utilization, double share, const AnalysisOptions& o) {
  if (is_dead(share)) return ExpertClass::kDead;
  if (is_hot(utilization, o)) return ExpertClass::kHot;
  if (is_cold(utilization, o)) return ExpertClass::kCold;
  return ExpertClass::kNormal;
}

std::vector<ExpertClass> classify_layer(const LayerStats& s, const AnalysisOptions& o) {
  std::vector<ExpertClass> out(s.utilization.size(), ExpertClass::kNormal);
  if (s.routed == 0) return out;
  for (size_t e = 0; e < out.size(); ++e) out[e] = classify(s.utilization[e], s.share[e], o);
  return out;
}

const char* expert_class_name(ExpertClass c) {
  switch (c) {
    case ExpertClass::kNormal:
      return "normal";
    case ExpertClass::kHot:
      return "hot";
    case ExpertClass::kCold:
      return "cold";
    case ExpertClass::kDead:
      return "dead";
  }
  return "?";
}

}  // namespace inferscope::analysis
