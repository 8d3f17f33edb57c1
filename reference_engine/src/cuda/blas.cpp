#include "blas.hpp"

#include "check.hpp"

namespace inferscope::engine::cuda {

namespace {
constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLAS' recommendation for Hopper
}

Blas::Blas(cudaStream_t stream) {
  ISC_CUBLAS(cublasCreate(&handle_));
  ISC_CUBLAS(cublasSetStream(handle_, stream));
  // A workspace set once keeps cuBLAS from allocating during graph capture.
  ISC_CUDA(cudaMalloc(&workspace_, kWorkspaceBytes));
  ISC_CUBLAS(cublasSetWorkspace(handle_, workspace_, kWorkspaceBytes));
  ISC_CUBLAS(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
}

Blas::~Blas() {
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
}

// Row-major y = x W^T is column-major y^T = W x^T: A = W (k x n, transposed),
// B = x^T (k x rows), C = y^T (n x rows).
void Blas::linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int rows, int n, int k,
                  float beta) {
  if (rows <= 0 || n <= 0) return;
  const float alpha = 1.f;
  ISC_CUBLAS(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &alpha, w, CUDA_R_16BF, k,
                          x, CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
}

void Blas::linear_batched(const __nv_bfloat16* x, int64_t x_stride, const __nv_bfloat16* w,
                          int64_t w_stride, float* y, int64_t y_stride, int rows, int n, int k,
                          int batch) {
  if (rows <= 0 || n <= 0 || batch <= 0) return;
  const float alpha = 1.f, beta = 0.f;
  ISC_CUBLAS(cublasGemmStridedBatchedEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &alpha, w,
                                        CUDA_R_16BF, k, w_stride, x, CUDA_R_16BF, k, x_stride,
                                        &beta, y, CUDA_R_32F, n, y_stride, batch,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace inferscope::engine::cuda
