// tmoe/backend/cuda/random.cuh: uniform random fill on the device, for benchmarks at real model
// sizes (tens of GB of weights made in milliseconds instead of minutes on the host).
//   x[i] = T(lo + (hi - lo) u_i),  u_i = (splitmix64(seed * 0x9e3779b97f4a7c15 + i) >> 40) 2^-24
// The same seed and n give the same values on every device. Never all zeros unless lo = hi = 0.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/random.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

__device__ inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
__global__ void fill_uniform_kernel(T* __restrict__ x, std::size_t n, std::uint64_t seed, float lo,
                                    float hi) {
  const std::uint64_t base = seed * 0x9e3779b97f4a7c15ull;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const float u = float(splitmix64(base + i) >> 40) * 0x1.0p-24f;
    x[i] = from_float<T>(lo + (hi - lo) * u);
  }
}

template <class T>
cudaError_t launch_fill_uniform(T* x, std::size_t n, std::uint64_t seed, float lo, float hi,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = unsigned(std::min<std::size_t>((n + 255) / 256, 65535));
  fill_uniform_kernel<T><<<blocks, 256, 0, stream>>>(x, n, seed, lo, hi);
  return cudaGetLastError();
}

}  // namespace tmoe::cuda
