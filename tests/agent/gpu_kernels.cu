// Trivial kernels for the agent's gpu tests, compiled by nvcc.
#include <cuda.h>
#include <dlfcn.h>

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

// The same kernel launched through the driver API (cuLaunchKernel), as cuBLAS
// launches its nvjet kernels: CUPTI sees a driver launch, not a runtime one.
cudaError_t launch_scale_driver(float* x, int n, float f, cudaStream_t stream) {
  cudaFunction_t fn = nullptr;
  cudaError_t e =
      cudaGetFuncBySymbol(&fn, reinterpret_cast<const void*>(&inferscope_test_scale_kernel));
  if (e != cudaSuccess) return e;
  // libcuda through dlopen, like the agent: the test binary must load (and
  // list its tests) on a machine without a driver.
  static void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  static auto launch =
      driver ? reinterpret_cast<decltype(&cuLaunchKernel)>(dlsym(driver, "cuLaunchKernel"))
             : nullptr;
  if (!launch) return cudaErrorInitializationError;
  void* args[] = {&x, &n, &f};
  const CUresult r = launch(reinterpret_cast<CUfunction>(fn), (n + 255) / 256, 1, 1, 256, 1, 1, 0,
                            reinterpret_cast<CUstream>(stream), args, nullptr);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorLaunchFailure;
}
}  // namespace inferscope::agent::testing
