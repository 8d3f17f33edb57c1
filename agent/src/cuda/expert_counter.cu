// The expert-counting kernel (C++17 for nvcc; the class around it is in
// expert_counter.cpp, compiled by the host compiler).
#include <algorithm>
#include <cstdint>

#include "count_experts.hpp"

namespace inferscope::agent {
namespace {
// One block-local histogram in shared memory per block, merged with one
// atomicAdd per (block, expert): global atomics stay few even when every token
// picks the same expert.
__global__ void count_experts_kernel(const int32_t* ids, uint32_t n, uint32_t experts,
                                     uint32_t* counts) {
  extern __shared__ uint32_t local[];
  for (uint32_t e = threadIdx.x; e < experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int32_t e = ids[i];
    if (e >= 0 && static_cast<uint32_t>(e) < experts) atomicAdd(&local[e], 1u);
  }
  __syncthreads();
  for (uint32_t e = threadIdx.x; e < experts; e += blockDim.x)
    if (local[e]) atomicAdd(&counts[e], local[e]);
}

}  // namespace

cudaError_t count_experts_async(const int32_t* ids, uint32_t n, uint32_t experts, uint32_t* counts,
                                cudaStream_t stream) {
  if (experts == 0 || experts > kCountMaxExperts) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  constexpr uint32_t kThreads = 256;
  const uint32_t blocks = std::min<uint32_t>((n + kThreads - 1) / kThreads, 64);
  count_experts_kernel<<<blocks, kThreads, experts * sizeof(uint32_t), stream>>>(ids, n, experts,
                                                                                 counts);
  return cudaGetLastError();
}

}  // namespace inferscope::agent
