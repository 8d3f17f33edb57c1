#pragma once
#include <cuda_runtime_api.h>

namespace inferscope::agent::testing {
// x[i] *= f for i < n, on stream (kernel name contains "inferscope_test_scale_kernel").
cudaError_t launch_scale(float* x, int n, float f, cudaStream_t stream);
// The same through the driver API (cuLaunchKernel).
cudaError_t launch_scale_driver(float* x, int n, float f, cudaStream_t stream);
}  // namespace inferscope::agent::testing
