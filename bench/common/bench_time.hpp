// Small timing helpers the benchmarks share: a steady clock in seconds and the median of runs.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace inferscope::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The middle element (the upper one of an even count); 0 for no runs.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace inferscope::bench
