#pragma once
#include <cuda_runtime_api.h>

namespace inferscope::agent::bench {
cudaError_t launch_axpy(float* y, const float* x, int n, float a, cudaStream_t stream);
}  // namespace inferscope::agent::bench
