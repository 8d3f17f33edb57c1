// The counting kernel's launcher, shared by nvcc (expert_counter.cu) and the
// host compiler; C++17 only, so nvcc needs no C++20 mode.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "inferscope/export.h"

namespace inferscope::agent {

inline constexpr uint32_t kCountMaxExperts = 4096;  // == wire::kMaxExperts

// Exported from libinferscope_agent_cuda.so (declared again in agent_cuda.hpp).
INFERSCOPE_API cudaError_t count_experts_async(const int32_t* ids, uint32_t n, uint32_t experts,
                                               uint32_t* counts, cudaStream_t stream);

}  // namespace inferscope::agent
