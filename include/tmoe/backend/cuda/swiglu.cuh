// tmoe/backend/cuda/swiglu.cuh: the SwiGLU gate of an MLP, out = silu(gate) * up, elementwise.
//
//   silu(g) = g / (1 + exp(-g)) in fp32, rounded to T; out = T(T(silu(g)) * up)  (HF's rounding:
//   F.silu returns T, then the T product; pitfall 18 of r1-architecture).
// gate, up and out are (rows, width) with their own row strides, so gate and up may be the two
// halves of one fused gate_up projection. Grid-stride loop, one element per thread per step.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/swiglu.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

template <class T>
__global__ void swiglu_kernel(const T* __restrict__ gate, std::size_t ld_gate,
                              const T* __restrict__ up, std::size_t ld_up, T* __restrict__ out,
                              std::size_t ld_out, int rows, int width) {
  pdl_trigger();
  pdl_wait();
  const std::size_t n = std::size_t(rows) * width;
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n;
       k += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t r = k / width, j = k % width;
    const float g = to_float(gate[r * ld_gate + j]);
    const float silu = round_to<T>(g / (1.f + expf(-g)));
    out[r * ld_out + j] = from_float<T>(silu * to_float(up[r * ld_up + j]));
  }
}

template <class T>
cudaError_t launch_swiglu(const T* gate, std::size_t ld_gate, const T* up, std::size_t ld_up,
                          T* out, std::size_t ld_out, int rows, int width, cudaStream_t stream) {
  const std::size_t n = std::size_t(rows) * width;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned(std::min<std::size_t>((n + kThreads - 1) / kThreads, 4096));
  return launch(swiglu_kernel<T>, dim3(blocks), dim3(kThreads), 0, stream, gate, ld_gate, up, ld_up,
                out, ld_out, rows, width);
}

}  // namespace tmoe::cuda
