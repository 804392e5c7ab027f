// tmoe/backend/cuda/norm.cuh: fused residual add + RMSNorm, one block per row (token).
//
//   h = residual + x, rounded to T and stored back into residual (the bf16 residual stream);
//   r = rsqrt(mean(h^2) + eps) over the row, in fp32;
//   out = T( T(h * r) * weight )   (HF order: normalize, round, then the weight multiply).
// Two passes over the row: the first writes h and sums squares, the second re-reads h (an L1/L2
// hit) and writes out. x == nullptr skips the add (plain RMSNorm of residual, left unchanged).
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/norm.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

template <class T>
__global__ void add_rmsnorm_kernel(const T* __restrict__ x, T* __restrict__ residual,
                                   const T* __restrict__ weight, T* __restrict__ out, int dim,
                                   float eps) {
  pdl_trigger();
  pdl_wait();
  const std::size_t base = std::size_t(blockIdx.x) * dim;
  T* h = residual + base;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_float(h[i]);
    if (x) {
      v = round_to<T>(v + to_float(x[base + i]));
      h[i] = from_float<T>(v);
    }
    ss = fmaf(v, v, ss);
  }
  const float r = rsqrtf(block_sum(ss) / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    out[base + i] = from_float<T>(round_to<T>(to_float(h[i]) * r) * to_float(weight[i]));
}

template <class T>
cudaError_t launch_add_rmsnorm(const T* x, T* residual, const T* weight, T* out, int rows, int dim,
                               float eps, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const int threads = dim >= 4096 ? 512 : dim >= 1024 ? 256 : 128;
  return launch(add_rmsnorm_kernel<T>, dim3(rows), dim3(threads), 0, stream, x, residual, weight,
                out, dim, eps);
}

}  // namespace tmoe::cuda
