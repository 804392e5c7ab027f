// tmoe/backend/cuda/reduce.cuh: warp and block reductions shared by the CUDA kernels.
// All lanes of the warp (all threads of the block) must call them; every caller gets the result.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/reduce.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include "tmoe/config.hpp"

namespace tmoe::cuda {

inline constexpr int kWarpSize = 32;

__device__ TMOE_INLINE float warp_sum(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ TMOE_INLINE float warp_max(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// (value, index) argmax over the warp: the largest value, the lowest index among equals.
__device__ TMOE_INLINE void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
  }
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024).
__device__ TMOE_INLINE float block_sum(float v) {
  __shared__ float partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x / kWarpSize;
  v = lane < nwarps ? partial[lane] : 0.f;
  return warp_sum(v);
}

}  // namespace tmoe::cuda
