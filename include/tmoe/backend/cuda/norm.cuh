// tmoe/backend/cuda/norm.cuh: fused residual add + RMSNorm, one block per row (token).
//
//   h = residual + x, rounded to T and stored back into residual (the bf16 residual stream);
//   r = rsqrt(mean(h^2) + eps) over the row, in fp32;
//   out = T( T(h * r) * weight )   (HF order: normalize, round, then the weight multiply).
// Two passes over the row: the first writes h and sums squares, the second re-reads h (an L1/L2
// hit) and writes out. x == nullptr skips the add (plain RMSNorm of residual, left unchanged).
// float rows with dim % 4 == 0 and dim <= 16384 take add_rmsnorm_regs_kernel instead: every
// thread loads its float4s of x, h and weight at once (the weight before the PDL wait), keeps h in
// registers and makes one pass: a decode step's norm is latency-bound (one 6 KB row), so the
// loads in flight, not the bytes, set its time.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/norm.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

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

template <int kPer>
__global__ void __launch_bounds__(256)
    add_rmsnorm_regs_kernel(const float* __restrict__ x, float* __restrict__ residual,
                            const float* __restrict__ weight, float* __restrict__ out, int dim,
                            float eps) {
  const int n4 = dim / 4;
  float4 w[kPer], h[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * 256;
    if (i < n4) w[k] = __ldg(reinterpret_cast<const float4*>(weight) + i);
  }
  pdl_trigger();
  pdl_wait();
  const std::size_t base = std::size_t(blockIdx.x) * dim;
  float4* hp = reinterpret_cast<float4*>(residual + base);
  const float4* xp = x ? reinterpret_cast<const float4*>(x + base) : nullptr;
  float4 xv[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * 256;
    h[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (i < n4) {
      h[k] = hp[i];
      if (xp) xv[k] = xp[i];
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * 256;
    if (i < n4 && xp) {
      h[k].x += xv[k].x, h[k].y += xv[k].y, h[k].z += xv[k].z, h[k].w += xv[k].w;
      hp[i] = h[k];
    }
    ss = fmaf(h[k].x, h[k].x, fmaf(h[k].y, h[k].y, fmaf(h[k].z, h[k].z, fmaf(h[k].w, h[k].w, ss))));
  }
  const float r = rsqrtf(block_sum(ss) / float(dim) + eps);
  float4* op = reinterpret_cast<float4*>(out + base);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * 256;
    if (i < n4)
      op[i] = make_float4(h[k].x * r * w[k].x, h[k].y * r * w[k].y, h[k].z * r * w[k].z,
                          h[k].w * r * w[k].w);
  }
}

template <class T>
cudaError_t launch_add_rmsnorm(const T* x, T* residual, const T* weight, T* out, int rows, int dim,
                               float eps, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  if constexpr (std::is_same_v<T, float>) {
    const bool aligned = reinterpret_cast<std::uintptr_t>(residual) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(out) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(weight) % 16 == 0 &&
                         reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
    if (aligned && dim % 4 == 0 && dim <= 16384) {
      const int per = (dim / 4 + 255) / 256;
      const dim3 g(rows), b(256);
      if (per <= 1)
        return launch(add_rmsnorm_regs_kernel<1>, g, b, 0, stream, x, residual, weight, out, dim,
                      eps);
      if (per <= 2)
        return launch(add_rmsnorm_regs_kernel<2>, g, b, 0, stream, x, residual, weight, out, dim,
                      eps);
      if (per <= 4)
        return launch(add_rmsnorm_regs_kernel<4>, g, b, 0, stream, x, residual, weight, out, dim,
                      eps);
      if (per <= 8)
        return launch(add_rmsnorm_regs_kernel<8>, g, b, 0, stream, x, residual, weight, out, dim,
                      eps);
      return launch(add_rmsnorm_regs_kernel<16>, g, b, 0, stream, x, residual, weight, out, dim,
                    eps);
    }
  }
  const int threads = dim >= 4096 ? 512 : dim >= 1024 ? 256 : 128;
  return launch(add_rmsnorm_kernel<T>, dim3(rows), dim3(threads), 0, stream, x, residual, weight,
                out, dim, eps);
}

}  // namespace tmoe::cuda
