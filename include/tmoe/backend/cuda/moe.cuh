// tmoe/backend/cuda/moe.cuh: the combine step of a MoE layer on the GPU: the routed experts'
// outputs (gathered GEMVs, one row per chosen expert) weighted by the router and summed, plus
// the shared experts' output.
//   out[t, i] = sum_{b < k} weight[t, b] * y[t, b, i] + (shared ? shared[t, i] : 0)
// fp32, the experts summed in routing order (as the CPU MoE). Grid (ceil(d / 256), T), block 256.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/moe.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>

#include "tmoe/backend/cuda/launch.cuh"

namespace tmoe::cuda {

__global__ void moe_combine_kernel(const float* __restrict__ y, const float* __restrict__ weight,
                                   int k, const float* __restrict__ shared, float* __restrict__ out,
                                   int d) {
  pdl_trigger();
  pdl_wait();
  const int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (i >= d) return;
  const float* yt = y + std::size_t(t) * k * d;
  const float* wt = weight + std::size_t(t) * k;
  float s = 0.f;
  for (int b = 0; b < k; ++b) s = fmaf(wt[b], yt[std::size_t(b) * d + i], s);
  if (shared) s += shared[std::size_t(t) * d + i];
  out[std::size_t(t) * d + i] = s;
}

inline cudaError_t launch_moe_combine(const float* y, const float* weight, int k,
                                      const float* shared, float* out, int d, int T,
                                      cudaStream_t stream) {
  if (d <= 0 || T <= 0) return cudaSuccess;
  return launch(moe_combine_kernel, dim3((d + 255) / 256, T), dim3(256), 0, stream, y, weight, k,
                shared, out, d);
}

}  // namespace tmoe::cuda
