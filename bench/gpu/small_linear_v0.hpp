// The pre-rewrite linear kernels (bench only): small_linear_v0.cu, grouped_gemm_v0.cu.
#pragma once

#include "kernels.hpp"

namespace inferscope::bench {

// Same contract as engine::cuda::small_linear (without the rows hint).
void small_linear_v0(engine::cuda::View x, const __nv_bfloat16* w, const int32_t* offsets,
                     int experts, engine::cuda::View y, int n_out, int k, float beta,
                     cudaStream_t s);
// Same contract as engine::cuda::grouped_gemm.
void grouped_gemm_v0(const __nv_bfloat16* x, const __nv_bfloat16* w, const int32_t* offsets,
                     float* y, int64_t ldy, int experts, int n, int k, int max_rows_per_expert,
                     cudaStream_t s);

}  // namespace inferscope::bench
