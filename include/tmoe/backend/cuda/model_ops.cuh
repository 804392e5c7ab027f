// tmoe/backend/cuda/model_ops.cuh: the small per-token kernels of a decoder step that sit between
// the GEMVs: embedding lookup, the fused q/k/v epilogue (bias, RoPE, KV-cache store), greedy
// argmax (which also advances the step's position, so a captured decode graph feeds itself),
// float -> bf16 conversion and FP8-block -> bf16 dequantization (prefill GEMM operands).
#pragma once
#if !defined(__CUDACC__)
#error \
    "tmoe/backend/cuda/model_ops.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/config.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

// out[t, i] = float(table[tokens[t], i]). Grid T, block 256.
template <class T>
__global__ void embedding_kernel(const T* __restrict__ table, std::size_t dim,
                                 const std::int32_t* __restrict__ tokens, float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const T* row = table + std::size_t(tokens[blockIdx.x]) * dim;
  float* o = out + std::size_t(blockIdx.x) * dim;
  for (std::size_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = to_float(row[i]);
}

struct QkvStoreArgs {
  float* qkv;  // (T, ld): [q (H*D) | k (Hkv*D) | v (Hkv*D)] per token; q is roped in place
  std::size_t ld;
  const float* bias;  // ((H + 2 Hkv) * D) or nullptr
  float* k_cache;     // (Hkv, cap, D)
  float* v_cache;
  std::size_t cap;
  const std::int32_t* pos;  // (T)
  const float* inv_freq;    // (rope_dim / 2)
  float attn_factor;
  int H, Hkv, D, rope_dim;
  bool interleaved;
};

// One block per (token, head of q, k or v); thread i handles the rotation pair i (and, past the
// rotated dims, plain copies). Bias first, then RoPE on q and k (fp32, like the CPU layer), then k
// and v go to the cache at position pos[t].
__global__ void qkv_store_kernel(QkvStoreArgs a) {
  pdl_trigger();
  pdl_wait();
  const int t = blockIdx.y, head = blockIdx.x;
  const int D = a.D;
  float* x = a.qkv + std::size_t(t) * a.ld + std::size_t(head) * D;
  const float* b = a.bias ? a.bias + std::size_t(head) * D : nullptr;
  const int p = a.pos[t];
  const bool is_v = head >= a.H + a.Hkv, is_q = head < a.H;
  float* dst = nullptr;
  if (!is_q) {
    const int g = is_v ? head - a.H - a.Hkv : head - a.H;
    dst = (is_v ? a.v_cache : a.k_cache) + (std::size_t(g) * a.cap + p) * D;
  }
  const int half = a.rope_dim / 2;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    if (!is_v && i < a.rope_dim) {
      if (i >= half) continue;  // the thread of pair i handles both of its elements
      const int ia = a.interleaved ? 2 * i : i, ib = a.interleaved ? 2 * i + 1 : i + half;
      float va = x[ia], vb = x[ib];
      if (b) va += b[ia], vb += b[ib];
      float s, c;
      sincosf(float(p) * a.inv_freq[i], &s, &c);
      s *= a.attn_factor, c *= a.attn_factor;
      const float ra = va * c - vb * s, rb = va * s + vb * c;
      if (is_q)
        x[ia] = ra, x[ib] = rb;
      else
        dst[ia] = ra, dst[ib] = rb;
    } else {
      const float v = b ? x[i] + b[i] : x[i];
      if (is_q)
        x[i] = v;
      else
        dst[i] = v;
    }
  }
}

// Row r of logits (rows, V): idx[r] = first index of the largest value. With advance != nullptr
// (one row), also p = *advance, *advance = p + 1 (the next step's position) and history[p + 1] =
// the token when history != nullptr. Grid rows, 1024 threads.
__global__ void argmax_kernel(const float* __restrict__ logits, std::size_t V,
                              std::int32_t* __restrict__ idx, std::int32_t* advance,
                              std::int32_t* history) {
  pdl_trigger();
  pdl_wait();
  const float* row = logits + std::size_t(blockIdx.x) * V;
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (std::size_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (v == best && int(i) < bi)) best = v, bi = int(i);
  }
  warp_argmax(best, bi);
  __shared__ float sv[kWarpSize];
  __shared__ int si[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (lane == 0) sv[warp] = best, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x / kWarpSize;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(best, bi);
    if (lane == 0) {
      const int tok = bi == 0x7fffffff ? 0 : bi;  // all NaN: token 0
      idx[blockIdx.x] = tok;
      if (advance) {
        const int p = *advance + 1;
        *advance = p;
        if (history) history[p] = tok;
      }
    }
  }
}

// Two-phase argmax over a wide row (a 151936-token vocabulary is 600 KB: one block would be
// latency-bound for ~70 us). Phase 1, grid (kArgmaxBlocks, rows): block b takes columns
// [b * chunk, (b + 1) * chunk) and writes its (value, index) pair; phase 2, one block per row,
// reduces the pairs and finishes like argmax_kernel. Ties keep the first index in both phases.
inline constexpr int kArgmaxBlocks = 128;

// Block-wide (value, index) maximum, first index on ties; valid in thread 0.
__device__ TMOE_INLINE void block_argmax(float& best, int& bi) {
  __shared__ float sv[kWarpSize];
  __shared__ int si[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  warp_argmax(best, bi);
  __syncthreads();
  if (lane == 0) sv[warp] = best, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x / kWarpSize;
    best = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(best, bi);
  }
}

__global__ void argmax_partial_kernel(const float* __restrict__ logits, std::size_t V,
                                      float* __restrict__ pv, int* __restrict__ pi) {
  pdl_trigger();
  pdl_wait();
  const float* row = logits + std::size_t(blockIdx.y) * V;
  const std::size_t chunk = (V + kArgmaxBlocks - 1) / kArgmaxBlocks;
  const std::size_t lo = blockIdx.x * chunk, hi = min(V, lo + chunk);
  float best = -INFINITY;
  int bi = 0x7fffffff;
  constexpr int kU = 8;
  for (std::size_t i0 = lo + threadIdx.x; i0 < hi; i0 += kU * blockDim.x) {
    float v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const std::size_t i = i0 + u * blockDim.x;
      v[u] = i < hi ? row[i] : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = int(i0 + u * blockDim.x);
      if (v[u] > best || (v[u] == best && i < bi && i0 + u * blockDim.x < hi)) best = v[u], bi = i;
    }
  }
  block_argmax(best, bi);
  if (threadIdx.x == 0) {
    const std::size_t k = std::size_t(blockIdx.y) * kArgmaxBlocks + blockIdx.x;
    pv[k] = best, pi[k] = bi;
  }
}

__global__ void argmax_final_kernel(const float* __restrict__ pv, const int* __restrict__ pi,
                                    std::int32_t* __restrict__ idx, std::int32_t* advance,
                                    std::int32_t* history) {
  pdl_trigger();
  pdl_wait();
  const std::size_t k = std::size_t(blockIdx.x) * kArgmaxBlocks + threadIdx.x;
  float best = threadIdx.x < kArgmaxBlocks ? pv[k] : -INFINITY;
  int bi = threadIdx.x < kArgmaxBlocks ? pi[k] : 0x7fffffff;
  if (best != best) best = -INFINITY, bi = 0x7fffffff;  // a NaN row slice
  block_argmax(best, bi);
  if (threadIdx.x == 0) {
    const int tok = bi == 0x7fffffff ? 0 : bi;
    idx[blockIdx.x] = tok;
    if (advance) {
      const int p = *advance + 1;
      *advance = p;
      if (history) history[p] = tok;
    }
  }
}

__global__ void to_bf16_kernel(const float* __restrict__ x, bf16* __restrict__ y, std::size_t n) {
  pdl_trigger();
  pdl_wait();
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x)
    y[i] = bf16::from_float(x[i]);
}

// FP8 e4m3 with 128x128 block scales -> bf16 (one rounding), grid-stride over rows x cols.
__global__ void dequant_fp8_block_kernel(const f8_e4m3* __restrict__ wq, std::size_t ldw,
                                         const float* __restrict__ scale, bf16* __restrict__ w,
                                         std::size_t rows, std::size_t cols) {
  pdl_trigger();
  pdl_wait();
  const std::size_t nb = (cols + 127) / 128, n = rows * cols;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t o = i / cols, c = i - o * cols;
    w[i] = bf16::from_float(to_float(wq[o * ldw + c]) * scale[(o / 128) * nb + c / 128]);
  }
}
// The same, 16 weights per step (cols and ldw multiples of 16, 16-byte aligned wq and w): one
// 16-byte load, the hardware e4m3x2 -> f16x2 conversion (exact: every e4m3 value is an f16),
// f32 products with the block scale, 32 bytes of bf16 stored. Results equal the kernel above.
__global__ void dequant_fp8_block_vec_kernel(const uint4* __restrict__ wq, std::size_t ldw16,
                                             const float* __restrict__ scale, uint4* __restrict__ w,
                                             std::size_t rows, std::size_t cols16) {
  pdl_trigger();
  pdl_wait();
  const std::size_t nb = (cols16 * 16 + 127) / 128, n = rows * cols16;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t o = i / cols16, c = i - o * cols16;
    const uint4 v = __ldg(wq + o * ldw16 + c);
    const float sc = scale[(o / 128) * nb + c / 8];
    const std::uint32_t in[4] = {v.x, v.y, v.z, v.w};
    std::uint32_t out[8];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(
            static_cast<__nv_fp8x2_storage_t>((in[q] >> (16 * h)) & 0xffffu), __NV_E4M3);
        const float2 f = __half22float2(__half2(r));
        out[2 * q + h] = std::uint32_t(bf16::from_float(f.x * sc).bits) |
                         (std::uint32_t(bf16::from_float(f.y * sc).bits) << 16);
      }
    }
    w[2 * i] = make_uint4(out[0], out[1], out[2], out[3]);
    w[2 * i + 1] = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

}  // namespace tmoe::cuda
