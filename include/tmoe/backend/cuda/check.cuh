// tmoe/backend/cuda/check.cuh: turns CUDA runtime errors into tmoe::Error at the host boundary.
//
//   TMOE_CUDA_CHECK("cuda::gemv", cudaMalloc(&p, n));
// throws tmoe::Error("[cuda::gemv] cudaMalloc(&p, n): out of memory (cudaErrorMemoryAllocation)")
// naming the op, the call as written, and the runtime's message. Kernels never throw; their
// launches are checked with check_launch right after the <<<>>> (configuration errors), and faults
// inside them surface at the next synchronizing call, which names itself.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/check.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <string_view>

#include "tmoe/core/error.hpp"

namespace tmoe::cuda {

[[noreturn]] inline void fail_call(std::string_view op, const char* call, cudaError_t e) {
  fail(op, call, ": ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
}

// After a kernel launch: configuration errors (bad grid, too much shared memory) are reported
// here; sticky faults of earlier kernels too.
inline void check_launch(std::string_view op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) [[unlikely]]
    fail_call(op, "kernel launch", e);
}

}  // namespace tmoe::cuda

#define TMOE_CUDA_CHECK(op, call)                           \
  do {                                                      \
    const cudaError_t tmoe_cuda_err_ = (call);              \
    if (tmoe_cuda_err_ != cudaSuccess) [[unlikely]]         \
      ::tmoe::cuda::fail_call((op), #call, tmoe_cuda_err_); \
  } while (0)
