// tmoe/backend/cuda/rope.cuh: rotary position embedding, in place, on a sub-range of each head.
//
// For token t, head h and pair i < rope_dim / 2, with p = x + t * ld_token + h * ld_head +
// rope_begin, theta = float(positions[t]) * inv_freq[i] (fp32, as HF builds its angle table):
//   interleaved (GPT-J; DeepSeek's q_pe / k_pe as stored):  (a, b) = (p[2i], p[2i + 1])
//   half-split  (NeoX; Qwen2 / Llama HF checkpoints):       (a, b) = (p[i], p[i + rope_dim/2])
//   a' = a cos - b sin,  b' = a sin + b cos   (cos, sin scaled by attn_factor, YaRN's mscale)
// The rotation runs in fp32 with accurate sincosf and rounds to T once (DeepSeek's reference
// rotates in fp32; HF rounds cos/sin to bf16 first, which differs in the last bf16 bit).
// One thread per pair.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/rope.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/config.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

template <class T, bool kInterleaved>
__global__ void rope_kernel(T* __restrict__ x, int tokens, int heads, std::size_t ld_token,
                            std::size_t ld_head, int rope_begin, int half,
                            const std::int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, float attn_factor) {
  pdl_trigger();
  pdl_wait();
  const std::size_t n = std::size_t(tokens) * heads * half;
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n;
       k += std::size_t(gridDim.x) * blockDim.x) {
    const int i = int(k % half);
    const std::size_t th = k / half;
    const int h = int(th % heads), t = int(th / heads);
    T* p = x + t * ld_token + h * ld_head + rope_begin;
    float s, c;
    sincosf(float(positions[t]) * inv_freq[i], &s, &c);
    s *= attn_factor, c *= attn_factor;
    T* pa = kInterleaved ? p + 2 * i : p + i;
    T* pb = kInterleaved ? p + 2 * i + 1 : p + i + half;
    const float a = to_float(*pa), b = to_float(*pb);
    *pa = from_float<T>(a * c - b * s);
    *pb = from_float<T>(a * s + b * c);
  }
}

template <class T>
cudaError_t launch_rope(T* x, int tokens, int heads, std::size_t ld_token, std::size_t ld_head,
                        int rope_begin, int rope_dim, const std::int32_t* positions,
                        const float* inv_freq, float attn_factor, bool interleaved,
                        cudaStream_t stream) {
  const std::size_t n = std::size_t(tokens) * heads * (rope_dim / 2);
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned(std::min<std::size_t>((n + kThreads - 1) / kThreads, 65535));
  if (interleaved)
    rope_kernel<T, true><<<blocks, kThreads, 0, stream>>>(x, tokens, heads, ld_token, ld_head,
                                                          rope_begin, rope_dim / 2, positions,
                                                          inv_freq, attn_factor);
  else
    rope_kernel<T, false><<<blocks, kThreads, 0, stream>>>(x, tokens, heads, ld_token, ld_head,
                                                           rope_begin, rope_dim / 2, positions,
                                                           inv_freq, attn_factor);
  return cudaGetLastError();
}

}  // namespace tmoe::cuda
