// The CUDA backend's fallback switches (INFERSCOPE_CUDA_PDL, INFERSCOPE_CUDA_FUSED,
// INFERSCOPE_CUDA_FEW_ROWS): each is on unless its variable is set to a value starting with '0',
// so the newer kernels run by default and `NAME=0` brings back the earlier path.
#pragma once

#include <cstdlib>

namespace inferscope::engine::cuda {

inline bool env_switch_on(const char* name) {
  const char* v = std::getenv(name);
  return !(v && v[0] == '0');
}

}  // namespace inferscope::engine::cuda
