// tmoe/backend/cuda/launch.cuh: kernel launches with programmatic dependent launch (PDL, sm_90).
//
// A decode step is a chain of ~300 small kernels, each waiting for the one before. Launched
// normally, each kernel's blocks are scheduled only after the previous grid has finished and
// flushed, which costs a launch latency (~1-2 us) per kernel even inside a CUDA graph. With PDL
// (cudaLaunchAttributeProgrammaticStreamSerialization) the next grid may be scheduled as soon as
// every block of the running grid has executed griddepcontrol.launch_dependents (pdl_trigger);
// its blocks then wait in griddepcontrol.wait (pdl_wait) until the previous grid has completed
// and its memory is visible. So every kernel launched through launch() must call pdl_wait()
// before it reads anything an earlier kernel wrote (and may call pdl_trigger() early). Both are
// no-ops for a kernel launched without the attribute. Because each kernel waits for its
// predecessor to complete, a kernel two steps back has also completed: the order of a stream is
// kept. TMOE_CUDA_PDL=0 in the environment turns the attribute off (for measurements).
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/launch.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "tmoe/config.hpp"

namespace tmoe::cuda {

__device__ TMOE_INLINE void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ TMOE_INLINE void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

inline bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TMOE_CUDA_PDL");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...) with PDL allowed; returns the launch's error.
template <class... P, class... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem,
                   cudaStream_t stream, A&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

}  // namespace tmoe::cuda
