// tmoe/backend/cuda/attention.cuh: grouped-query attention over a float32 KV cache in device
// memory, for decoding and (unfused, no tensor cores) prefill: flash decoding.
//
//   out[t, h] = sum_{j <= pos[t]} softmax_j(scale * q[t, h] . K[g, j]) V[g, j],  g = h / (H / Hkv)
//
// The cache is head-major, (Hkv, capacity, D) for K and for V, like the CPU KvCache. A token's
// positions come from device memory (pos[t]), so a CUDA graph captured once serves every step.
// Work split (grid = (n_split, Hkv * head_blocks, T)): a block takes one KV head, up to kMaxG of
// the query heads that share it, and one of ns equal slices of the keys 0..pos[t], where ns =
// min(n_split, ceil((pos[t] + 1) / kAttnMinKeys)) is computed on the device (blocks past ns exit).
// Each warp walks the slice's keys (key j = slice start + warp + kWarps i): its lanes hold D/32
// consecutive dims of q, k and v (16-byte loads, 512 contiguous bytes per warp per key), a
// butterfly gives the dot, and the warp keeps an online softmax (running max m, sum l, accumulator)
// per query head. The warps' states are merged through shared memory. With n_split == 1 the block
// writes the normalized output; otherwise it writes its slice's normalized partial o_s and
// log-sum-exp lse_s = m_s + log l_s, and gqa_merge_kernel combines the slices: out = sum_s
// exp(lse_s - M) o_s / sum_s exp(lse_s - M), M = max_s lse_s (empty slices have lse = -inf and
// weigh nothing). All arithmetic is fp32.
#pragma once
#if !defined(__CUDACC__)
#error \
    "tmoe/backend/cuda/attention.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/config.hpp"

namespace tmoe::cuda {

inline constexpr int kAttnMaxG = 8;   // query heads per block (more: several head blocks)
inline constexpr int kAttnWarps = 4;  // warps per block
inline constexpr int kAttnMaxSplit = 128;
inline constexpr int kAttnMinKeys = 16;  // keys per slice at least (fewer slices when short)

// Slices actually used for a token that sees len keys: up to n_split, at least kAttnMinKeys keys
// each (a short context is not cut into near-empty slices that the merge would have to read).
__device__ TMOE_INLINE int attn_slices(int len, int n_split) {
  return max(1, min(n_split, (len + kAttnMinKeys - 1) / kAttnMinKeys));
}

struct GqaAttnArgs {
  const float* q;  // (T, ld_q): head h at q + t * ld_q + h * D
  std::size_t ld_q;
  const float* k;  // (Hkv, cap, D)
  const float* v;
  std::size_t cap;
  const std::int32_t* pos;  // (T): token t sees keys 0..pos[t]
  float* out;               // (T, ld_out): head h at out + t * ld_out + h * D
  std::size_t ld_out;
  float* part_o;    // (T, H, n_split, D), n_split > 1 only
  float* part_lse;  // (T, H, n_split)
  int H, Hkv, head_blocks, n_split;
  float scale;
  // Fused decode (T == 1): q points at the raw projection row [q | k | v] (ld_q unused); the
  // kernel adds bias, applies half-split RoPE over all D dims at pos[0] (inv_freq, attn_factor)
  // to q and to the new k, uses the new k and v for key pos[0] and stores them into the caches.
  bool fused = false;
  const float* bias = nullptr;
  const float* inv_freq = nullptr;
  float attn_factor = 1.f;
};

// Half-split RoPE of one head held kL dims per lane (dim d = lane * kL + e): the partner of d is
// d +- D/2, i.e. the same e in lane ^ 16 (D/2 = 16 lanes * kL for every kD). cs holds (cos, sin)
// times attn_factor of the D/2 angles (shared memory, computed once per block). Every lane calls
// it.
template <int kL>
__device__ TMOE_INLINE void rope_lanes(float (&x)[kL], int lane, const float2* cs) {
  float other[kL];
#pragma unroll
  for (int e = 0; e < kL; ++e) other[e] = __shfl_xor_sync(0xffffffffu, x[e], 16);
  const bool hi = lane >= 16;
#pragma unroll
  for (int e = 0; e < kL; ++e) {
    const float2 r = cs[(lane & 15) * kL + e];
    // pair (a, b) = (x[i], x[i + D/2]) -> (a c - b s, a s + b c)
    x[e] = hi ? other[e] * r.y + x[e] * r.x : x[e] * r.x - other[e] * r.y;
  }
}

template <int kD>
__global__ void __launch_bounds__(kAttnWarps* kWarpSize) gqa_attention_kernel(GqaAttnArgs a) {
  constexpr int kL = kD / kWarpSize;  // dims per lane: 2, 4 or 8
  static_assert(kL == 2 || kL == 4 || kL == 8, "head_dim must be 64, 128 or 256");
  const int split = blockIdx.x, t = blockIdx.z;
  const int g_kv = blockIdx.y / a.head_blocks, hb = blockIdx.y % a.head_blocks;
  const int group = a.H / a.Hkv;
  const int per_block = (group + a.head_blocks - 1) / a.head_blocks;
  const int h0 = g_kv * group + hb * per_block;
  const int nh = max(0, min(per_block, g_kv * group + group - h0));
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  pdl_trigger();
  pdl_wait();

  const int len = a.pos[t] + 1;
  const int ns = attn_slices(len, a.n_split);
  if (split >= ns) return;
  const int chunk = (len + ns - 1) / ns;
  const int j0 = split * chunk, j1 = min(len, j0 + chunk);

  __shared__ float2 cs[kD / 2];
  if (a.fused) {
    for (int i = threadIdx.x; i < kD / 2; i += blockDim.x) {
      float s, c;
      sincosf(float(len - 1) * a.inv_freq[i], &s, &c);
      cs[i] = make_float2(c * a.attn_factor, s * a.attn_factor);
    }
    __syncthreads();
  }
  float q[kAttnMaxG][kL], acc[kAttnMaxG][kL], m[kAttnMaxG], l[kAttnMaxG];
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g) {
    m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < kL; ++e) acc[g][e] = 0.f, q[g][e] = 0.f;
    if (g < nh) {
      const std::size_t off = std::size_t(h0 + g) * kD + lane * kL;
      const float* qp = a.q + std::size_t(t) * a.ld_q + off;
#pragma unroll
      for (int e = 0; e < kL; ++e) q[g][e] = a.fused && a.bias ? qp[e] + a.bias[off + e] : qp[e];
      if (a.fused) rope_lanes<kL>(q[g], lane, cs);
#pragma unroll
      for (int e = 0; e < kL; ++e) q[g][e] *= a.scale;
    }
  }
  const float* kb = a.k + std::size_t(g_kv) * a.cap * kD + lane * kL;
  const float* vb = a.v + std::size_t(g_kv) * a.cap * kD + lane * kL;
  // Fused decode: the slice that holds the new key p computes k_p (bias + RoPE) and v_p (bias)
  // from the projection itself, and head block 0's first warp stores them into the caches.
  const int p = len - 1;
  const bool has_p = a.fused && j1 == len;
  float kp[kL], vp[kL];
  if (has_p) {
    const std::size_t ko = std::size_t(a.H + g_kv) * kD + lane * kL;
    const std::size_t vo = std::size_t(a.H + a.Hkv + g_kv) * kD + lane * kL;
#pragma unroll
    for (int e = 0; e < kL; ++e) {
      kp[e] = a.bias ? a.q[ko + e] + a.bias[ko + e] : a.q[ko + e];
      vp[e] = a.bias ? a.q[vo + e] + a.bias[vo + e] : a.q[vo + e];
    }
    rope_lanes<kL>(kp, lane, cs);
    if (hb == 0 && warp == 0) {
      float* kd = const_cast<float*>(kb) + std::size_t(p) * kD;
      float* vd = const_cast<float*>(vb) + std::size_t(p) * kD;
#pragma unroll
      for (int e = 0; e < kL; ++e) kd[e] = kp[e], vd[e] = vp[e];
    }
  }
  // Two keys per warp per round, both loaded before either is used (loads in flight).
  for (int j = j0 + warp; j < j1; j += 2 * kAttnWarps) {
    const bool two = j + kAttnWarps < j1;
    float kv[2][kL], vv[2][kL];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const std::size_t row = std::size_t(u == 0 || two ? j + u * kAttnWarps : j) * kD;
#pragma unroll
      for (int e = 0; e < kL; e += 2) {
        const float2 k2 = *reinterpret_cast<const float2*>(kb + row + e);
        const float2 v2 = *reinterpret_cast<const float2*>(vb + row + e);
        kv[u][e] = k2.x, kv[u][e + 1] = k2.y, vv[u][e] = v2.x, vv[u][e + 1] = v2.y;
      }
      if (has_p && j + u * kAttnWarps == p)
#pragma unroll
        for (int e = 0; e < kL; ++e) kv[u][e] = kp[e], vv[u][e] = vp[e];
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (u == 1 && !two) break;
#pragma unroll
      for (int g = 0; g < kAttnMaxG; ++g) {
        if (g >= nh) break;
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < kL; ++e) s = fmaf(q[g][e], kv[u][e], s);
        s = warp_sum(s);
        const float mn = fmaxf(m[g], s);
        const float corr = expf(m[g] - mn), p = expf(s - mn);
        l[g] = fmaf(l[g], corr, p);
#pragma unroll
        for (int e = 0; e < kL; ++e) acc[g][e] = fmaf(acc[g][e], corr, p * vv[u][e]);
        m[g] = mn;
      }
    }
  }

  // Merge the warps' states.
  __shared__ float sm[kAttnWarps][kAttnMaxG], sl[kAttnWarps][kAttnMaxG];
  __shared__ float so[kAttnWarps][kAttnMaxG][kD];
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g) {
    if (g >= nh) break;
    if (lane == 0) sm[warp][g] = m[g], sl[warp][g] = l[g];
#pragma unroll
    for (int e = 0; e < kL; ++e) so[warp][g][lane * kL + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nh * kD; i += blockDim.x) {
    const int g = i / kD, e = i % kD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm[w][g]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = expf(sm[w][g] - M);  // 0 for a warp that saw no key
        L = fmaf(sl[w][g], f, L);
        O = fmaf(so[w][g][e], f, O);
      }
    }
    const int h = h0 + g;
    if (a.n_split == 1) {
      a.out[std::size_t(t) * a.ld_out + std::size_t(h) * kD + e] = O / L;  // len >= 1: L > 0
    } else {
      const std::size_t ps = (std::size_t(t) * a.H + h) * a.n_split + split;
      a.part_o[ps * kD + e] = L > 0.f ? O / L : 0.f;
      if (e == 0) a.part_lse[ps] = L > 0.f ? M + logf(L) : -INFINITY;
    }
  }
}

// out[t, h] = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max lse). Grid T * H, block D.
__global__ void gqa_merge_kernel(GqaAttnArgs a, int D) {
  pdl_trigger();
  pdl_wait();
  const int th = blockIdx.x, t = th / a.H, h = th % a.H, e = threadIdx.x;
  const int ns = attn_slices(a.pos[t] + 1, a.n_split);
  const float* lse = a.part_lse + std::size_t(th) * a.n_split;
  float M = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < ns; ++s) M = fmaxf(M, lse[s]);
  float W = 0.f, O = 0.f;
#pragma unroll 8
  for (int s = 0; s < ns; ++s) {
    const float w = expf(lse[s] - M);
    W += w;
    O = fmaf(w, a.part_o[(std::size_t(th) * a.n_split + s) * D + e], O);
  }
  a.out[std::size_t(t) * a.ld_out + std::size_t(h) * D + e] = O / W;
}

// Enqueues the attention of T tokens (n_split slices per head; 1 writes out directly).
inline cudaError_t launch_gqa_attention(GqaAttnArgs a, int D, int T, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  const dim3 grid(a.n_split, a.Hkv * a.head_blocks, T);
  const dim3 block(kAttnWarps * kWarpSize);
  cudaError_t e = launch(D == 64    ? gqa_attention_kernel<64>
                         : D == 128 ? gqa_attention_kernel<128>
                                    : gqa_attention_kernel<256>,
                         grid, block, 0, stream, a);
  if (e == cudaSuccess && a.n_split > 1)
    e = launch(gqa_merge_kernel, dim3(T * a.H), dim3(D), 0, stream, a, D);
  return e;
}

}  // namespace tmoe::cuda
