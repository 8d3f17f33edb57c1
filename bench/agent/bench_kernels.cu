// A tiny kernel for agent_gpu_bench (nvcc, C++17).
#include "bench_kernels.hpp"

namespace inferscope::agent::bench {

__global__ void inferscope_bench_axpy_kernel(float* y, const float* x, int n, float a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

cudaError_t launch_axpy(float* y, const float* x, int n, float a, cudaStream_t stream) {
  inferscope_bench_axpy_kernel<<<(n + 255) / 256, 256, 0, stream>>>(y, x, n, a);
  return cudaGetLastError();
}

}  // namespace inferscope::agent::bench
