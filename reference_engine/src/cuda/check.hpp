// Error checks for CUDA runtime and cuBLAS calls: a failed call throws with the
// file, line and the library's own message, so the engine reports it cleanly
// instead of computing on garbage.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace inferscope::engine::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ") in " + what + " at " + file + ":" +
                           std::to_string(line));
}
[[noreturn]] inline void throw_cublas(cublasStatus_t e, const char* what, const char* file,
                                      int line) {
  throw std::runtime_error(std::string("cuBLAS error ") + cublasGetStatusName(e) + " in " + what +
                           " at " + file + ":" + std::to_string(line));
}

}  // namespace inferscope::engine::cuda

#define ISC_CUDA(call)                                                           \
  do {                                                                           \
    cudaError_t isc_e_ = (call);                                                 \
    if (isc_e_ != cudaSuccess)                                                   \
      ::inferscope::engine::cuda::throw_cuda(isc_e_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: catches bad launch configurations at once.
#define ISC_LAUNCH() ISC_CUDA(cudaGetLastError())
#define ISC_CUBLAS(call)                                                           \
  do {                                                                             \
    cublasStatus_t isc_s_ = (call);                                                \
    if (isc_s_ != CUBLAS_STATUS_SUCCESS)                                           \
      ::inferscope::engine::cuda::throw_cublas(isc_s_, #call, __FILE__, __LINE__); \
  } while (0)
