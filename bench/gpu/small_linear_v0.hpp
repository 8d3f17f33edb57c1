// The pre-rewrite decode linear (bench only): see small_linear_v0.cu.
#pragma once

#include "kernels.hpp"

namespace inferscope::bench {

// Same contract as engine::cuda::small_linear (without the rows hint).
void small_linear_v0(engine::cuda::View x, const __nv_bfloat16* w, const int32_t* offsets,
                     int experts, engine::cuda::View y, int n_out, int k, float beta,
                     cudaStream_t s);

}  // namespace inferscope::bench
