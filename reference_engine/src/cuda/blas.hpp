// Dense GEMMs through cuBLAS: bf16 operands, fp32 accumulate and fp32 output.
// One handle per backend instance, bound to the backend's stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace inferscope::engine::cuda {

class Blas {
 public:
  explicit Blas(cudaStream_t stream);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y[rows, n] = beta * y + x[rows, k] · w[n, k]^T   (row-major, as on the CPU)
  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int rows, int n, int k,
              float beta = 0.f);
  // Strided batch of the same: x, w, y advance by their strides per batch item.
  void linear_batched(const __nv_bfloat16* x, int64_t x_stride, const __nv_bfloat16* w,
                      int64_t w_stride, float* y, int64_t y_stride, int rows, int n, int k,
                      int batch);
  cublasHandle_t handle() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace inferscope::engine::cuda
