// Expert capacity: how many assignments an expert keeps in a step when routing has a capacity
// factor. One definition for the host (layers' route parameters, the backend's synchronous
// default of the device-side routing) and the CUDA router's device code, which computes it from
// a padded step's real rows: the same arithmetic everywhere keeps drops exact across paths.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define INFERSCOPE_HOST_DEVICE __host__ __device__
#else
#define INFERSCOPE_HOST_DEVICE
#endif

namespace inferscope::engine {

// ceil(factor * tokens * top_k / experts) in double, at least 1; 0 (no capacity) when the factor
// is not positive.
INFERSCOPE_HOST_DEVICE inline int32_t expert_capacity_for(float factor, int64_t tokens,
                                                          int64_t top_k, int64_t experts) {
  if (!(factor > 0.0f)) return 0;
  const double cap =
      ceil(static_cast<double>(factor) * static_cast<double>(tokens) * top_k / experts);
  return cap < 1.0 ? 1 : static_cast<int32_t>(cap);
}

}  // namespace inferscope::engine
