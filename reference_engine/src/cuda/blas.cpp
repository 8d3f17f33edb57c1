#include "blas.hpp"

#include "check.hpp"

namespace inferscope::engine::cuda {

namespace {
constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLAS' recommendation for Hopper
constexpr size_t kLaneWorkspaceBytes = 8u << 20;

void make_handle(cudaStream_t stream, size_t workspace_bytes, cublasHandle_t* handle,
                 void** workspace) {
  ISC_CUBLAS(cublasCreate(handle));
  ISC_CUBLAS(cublasSetStream(*handle, stream));
  // A workspace set once keeps cuBLAS from allocating during graph capture; handles that run at
  // the same time each need their own.
  ISC_CUDA(cudaMalloc(workspace, workspace_bytes));
  ISC_CUBLAS(cublasSetWorkspace(*handle, *workspace, workspace_bytes));
  ISC_CUBLAS(cublasSetMathMode(*handle, CUBLAS_DEFAULT_MATH));
}

// Row-major y = x W^T is column-major y^T = W x^T: A = W (k x n, transposed),
// B = x^T (k x rows), C = y^T (n x rows).
void gemm(cublasHandle_t h, const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t ldy,
          int rows, int n, int k, float beta) {
  const float alpha = 1.f;
  ISC_CUBLAS(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &alpha, w, CUDA_R_16BF, k, x,
                          CUDA_R_16BF, k, &beta, y, CUDA_R_32F, static_cast<int>(ldy),
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
}  // namespace

Blas::Blas(cudaStream_t stream) : stream_(stream) {
  make_handle(stream, kWorkspaceBytes, &handle_, &workspace_);
}

Blas::~Blas() {
  for (Lane& l : lanes_) {
    if (l.handle) cublasDestroy(l.handle);
    if (l.workspace) cudaFree(l.workspace);
    if (l.done) cudaEventDestroy(l.done);
    if (l.stream) cudaStreamDestroy(l.stream);
  }
  if (fork_) cudaEventDestroy(fork_);
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
}

void Blas::make_lanes() {
  ISC_CUDA(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
  for (Lane& l : lanes_) {
    ISC_CUDA(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking));
    ISC_CUDA(cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming));
    make_handle(l.stream, kLaneWorkspaceBytes, &l.handle, &l.workspace);
  }
  lanes_made_ = true;
}

void Blas::linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t ldy, int rows,
                  int n, int k, float beta) {
  if (rows <= 0 || n <= 0) return;
  gemm(handle_, x, w, y, ldy, rows, n, k, beta);
}

void Blas::grouped_linear(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t ldy,
                          std::span<const int32_t> offsets, int n, int k, bool concurrent) {
  const size_t E = offsets.empty() ? 0 : offsets.size() - 1;
  auto expert = [&](cublasHandle_t h, size_t e) {
    const int32_t b = offsets[e], c = offsets[e + 1] - offsets[e];
    if (c > 0)
      gemm(h, x + int64_t(b) * k, w + int64_t(e) * n * k, y + int64_t(b) * ldy, ldy, c, n, k, 0.f);
  };
  if (!concurrent) {
    for (size_t e = 0; e < E; ++e) expert(handle_, e);
    return;
  }
  if (!lanes_made_) make_lanes();
  ISC_CUDA(cudaEventRecord(fork_, stream_));  // the operands are ready on the main stream
  for (Lane& l : lanes_) ISC_CUDA(cudaStreamWaitEvent(l.stream, fork_, 0));
  size_t lane = 0;
  for (size_t e = 0; e < E; ++e) {
    if (offsets[e + 1] == offsets[e]) continue;
    expert(lanes_[lane].handle, e);
    lane = (lane + 1) % kLanes;
  }
  for (Lane& l : lanes_) {  // the main stream goes on once every lane is done
    ISC_CUDA(cudaEventRecord(l.done, l.stream));
    ISC_CUDA(cudaStreamWaitEvent(stream_, l.done, 0));
  }
}

}  // namespace inferscope::engine::cuda
