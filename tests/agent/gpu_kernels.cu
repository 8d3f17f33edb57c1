// Trivial kernels for the agent's gpu tests, compiled by nvcc.
#include "gpu_kernels.hpp"

namespace inferscope::agent::testing {

__global__ void inferscope_test_scale_kernel(float* x, int n, float f) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= f;
}

cudaError_t launch_scale(float* x, int n, float f, cudaStream_t stream) {
  inferscope_test_scale_kernel<<<(n + 255) / 256, 256, 0, stream>>>(x, n, f);
  return cudaGetLastError();
}

}  // namespace inferscope::agent::testing
