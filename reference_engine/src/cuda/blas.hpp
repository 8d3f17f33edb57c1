// Dense GEMMs through cuBLAS: bf16 operands, fp32 accumulate and fp32 output.
// One handle per backend instance, bound to the backend's stream, plus side
// streams (each with its own handle and workspace) for per-expert GEMMs.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <span>

namespace inferscope::engine::cuda {

class Blas {
 public:
  explicit Blas(cudaStream_t stream);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y[rows, n] = beta * y + x[rows, k] · w[n, k]^T   (row-major, as on the CPU; y's rows ldy
  // floats apart, x and w contiguous)
  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t ldy, int rows,
              int n, int k, float beta = 0.f);
  // The same per expert: rows offsets[e] .. offsets[e + 1] of x and y against w[e] = w + e*n*k
  // (host offsets, E + 1 of them). With `concurrent`, the experts' GEMMs are spread over side
  // streams forked from and joined back into the main stream (never inside a graph capture):
  // one expert's ~1,000 rows give cuBLAS too few tiles to fill the GPU.
  void grouped_linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t ldy,
                      std::span<const int32_t> offsets, int n, int k, bool concurrent);
  cublasHandle_t handle() const { return handle_; }

 private:
  static constexpr int kLanes = 4;
  struct Lane {
    cudaStream_t stream = nullptr;
    cublasHandle_t handle = nullptr;
    void* workspace = nullptr;
    cudaEvent_t done = nullptr;
  };
  void make_lanes();
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cudaEvent_t fork_ = nullptr;
  std::array<Lane, kLanes> lanes_{};
  bool lanes_made_ = false;
};

}  // namespace inferscope::engine::cuda
