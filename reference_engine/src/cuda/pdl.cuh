// Programmatic dependent launch (sm_90) from the device side, for .cu files only.
//
// A decode linear (small_linear.cu) is launched as a programmatic dependent: it
// may start while the kernel before it finishes, if that kernel lets it, and
// requests its weights at once (they do not depend on the previous kernel). The
// kernels that come right before a decode linear let it (pdl_allow_dependents
// at their start): RMSNorm, SwiGLU, paged attention, the MoE permutation. The
// dependent still waits for their completion and their writes before it reads
// anything they produce (griddepcontrol.wait in small_linear_k), so where the
// trigger sits only decides how early the dependent's blocks may be scheduled.
// A kernel that writes weights must never call it.
#pragma once

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

}  // namespace inferscope::engine::cuda
