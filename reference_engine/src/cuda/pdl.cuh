// Programmatic dependent launch (sm_90), for .cu files only.
//
// A decode step is a chain of ~20 small kernels per layer; each normally starts
// only after the one before has finished and the launch has gone through. The
// decode-path kernels are launched as programmatic dependents (launch_pdl) and
// begin with pdl_wait() then pdl_allow_dependents(): a kernel's blocks are
// scheduled while its predecessor finishes, wait for it to complete (and its
// writes to be visible) before touching memory, then let their own successor be
// scheduled. Ordering is the stream's: every kernel still starts its work after
// the previous one completed. The exception is the decode linear (small_linear),
// which requests its weights before its wait: weights are never written by a
// kernel that lets dependents start (uploads are copies, the bf16 shadow
// conversion is a plain launch), and since every trigger comes after a wait,
// a dependent can never start before the kernel two back has finished.
// INFERSCOPE_CUDA_PDL=0 / set_pdl(false) (kernels.hpp) makes them plain launches.
#pragma once

#include <cuda_runtime.h>

#include "check.hpp"
#include "kernels.hpp"

namespace inferscope::engine::cuda {

// Lets a dependent grid launched with programmatic stream serialization start
// once every block of this grid has called this (or exited). No-op otherwise.
__device__ __forceinline__ void pdl_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" :::);
#endif
}

// Waits until the grids this one depends on have completed and their memory is
// visible. No-op when the grid was not launched as a programmatic dependent
// (and before sm_90, where there is no dependent launch).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, s>>>(args...) as a programmatic dependent when pdl_on().
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_on() ? 1 : 0;
  ISC_CUDA(cudaLaunchKernelEx(&cfg, kernel, args...));
}

}  // namespace inferscope::engine::cuda
