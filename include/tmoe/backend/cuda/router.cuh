// tmoe/backend/cuda/router.cuh: MoE routers over float gate logits (tokens, experts); one warp
// per token, the token's scores in shared memory, selections by repeated warp argmax (largest
// value, lowest expert index among equals). Outputs are best first.
//
// router_sigmoid_grouped_kernel, DeepSeek-V3 "noaux_tc" (r1-architecture section 6.1):
//   s_e = sigmoid(l_e);  c_e = s_e + bias_e                          (bias: selection only)
//   group g (experts [g G, (g+1) G), G = experts / n_group): score_g = top1(c) + top2(c)
//   keep the topk_group groups of largest score; experts of the other groups are excluded (as
//   DeepSeek's reference does with -inf; HF's 0.0 fill differs only when a kept c_e < 0)
//   idx = the top_k largest c_e among kept experts; w_k = s_{idx_k}
//   normalize: w_k /= (sum_k w_k + 1e-20);  w_k *= scale (routed_scaling_factor)
// router_softmax_kernel (Mixtral, DeepSeek-V2-Lite "greedy"):
//   p = softmax(l) in fp32; idx = top_k largest p; w_k = p_{idx_k}, renormalized to sum 1 when
//   normalize, times scale.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/router.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/reduce.cuh"

namespace tmoe::cuda {

inline constexpr int kRouterMaxExperts = 1024;
inline constexpr int kRouterMaxTopK = 32;

namespace router_detail {
// Picks top_k times the largest of v[0, n) (in shared memory), writing the chosen indices to
// idx and overwriting each chosen value with -inf. All lanes return idx.
__device__ TMOE_INLINE void select_topk(float* v, int n, int top_k, int* idx) {
  const int lane = threadIdx.x % kWarpSize;
  for (int k = 0; k < top_k; ++k) {
    float best = -INFINITY;
    int bi = n;  // larger than every index: loses ties against real ones
    for (int e = lane; e < n; e += kWarpSize)
      if (v[e] > best) best = v[e], bi = e;
    warp_argmax(best, bi);  // every lane holds the winner
    __syncwarp();           // all scans of v are done before lane 0 changes it
    if (lane == 0) {
      idx[k] = bi;
      if (bi < n) v[bi] = -INFINITY;
    }
    __syncwarp();
  }
}
}  // namespace router_detail

template <int kMaxExperts = kRouterMaxExperts>
__global__ void __launch_bounds__(kWarpSize)
    router_sigmoid_grouped_kernel(const float* __restrict__ logits, const float* __restrict__ bias,
                                  std::int32_t* __restrict__ out_idx, float* __restrict__ out_w,
                                  int experts, int n_group, int topk_group, int top_k,
                                  bool normalize, float scale, unsigned* __restrict__ counts) {
  __shared__ float s[kMaxExperts];  // sigmoid scores (weights)
  __shared__ float c[kMaxExperts];  // biased scores (selection)
  __shared__ int idx[kRouterMaxTopK];
  const int lane = threadIdx.x, t = blockIdx.x;
  const float* l = logits + std::size_t(t) * experts;
  for (int e = lane; e < experts; e += kWarpSize) {
    const float se = 1.f / (1.f + expf(-l[e]));
    s[e] = se;
    c[e] = se + (bias ? bias[e] : 0.f);
  }
  __syncwarp();
  // Group scores: lane g sums the two largest c of group g.
  const int G = experts / n_group;
  float gscore = -INFINITY;
  if (lane < n_group) {
    float m1 = -INFINITY, m2 = -INFINITY;
    for (int e = lane * G; e < (lane + 1) * G; ++e) {
      const float v = c[e];
      if (v > m1)
        m2 = m1, m1 = v;
      else if (v > m2)
        m2 = v;
    }
    gscore = m1 + m2;
  }
  // Keep the topk_group best groups.
  bool kept = false;
  for (int k = 0; k < topk_group; ++k) {
    float v = kept ? -INFINITY : gscore;
    int g = lane < n_group && !kept ? lane : kWarpSize;
    warp_argmax(v, g);
    kept = kept || lane == g;
  }
  const unsigned kept_mask = __ballot_sync(0xffffffffu, kept);
  __syncwarp();  // the group scans' reads of c come before the masking writes
  for (int e = lane; e < experts; e += kWarpSize)
    if (!((kept_mask >> (e / G)) & 1u)) c[e] = -INFINITY;
  __syncwarp();
  router_detail::select_topk(c, experts, top_k, idx);
  float w = lane < top_k ? s[idx[lane]] : 0.f;
  if (normalize) w /= warp_sum(w) + 1e-20f;
  if (lane < top_k) {
    out_idx[std::size_t(t) * top_k + lane] = idx[lane];
    out_w[std::size_t(t) * top_k + lane] = w * scale;
    if (counts) atomicAdd(counts + idx[lane], 1u);
  }
}

template <int kMaxExperts = kRouterMaxExperts>
__global__ void __launch_bounds__(kWarpSize)
    router_softmax_kernel(const float* __restrict__ logits, std::int32_t* __restrict__ out_idx,
                          float* __restrict__ out_w, int experts, int top_k, bool normalize,
                          float scale, unsigned* __restrict__ counts) {
  __shared__ float p[kMaxExperts];
  __shared__ float sel[kMaxExperts];
  __shared__ int idx[kRouterMaxTopK];
  const int lane = threadIdx.x, t = blockIdx.x;
  const float* l = logits + std::size_t(t) * experts;
  float m = -INFINITY;
  for (int e = lane; e < experts; e += kWarpSize) m = fmaxf(m, l[e]);
  m = warp_max(m);
  float z = 0.f;
  for (int e = lane; e < experts; e += kWarpSize) {
    const float v = expf(l[e] - m);
    p[e] = v;
    z += v;
  }
  z = warp_sum(z);
  for (int e = lane; e < experts; e += kWarpSize) sel[e] = p[e] /= z;
  __syncwarp();
  router_detail::select_topk(sel, experts, top_k, idx);
  float w = lane < top_k ? p[idx[lane]] : 0.f;
  if (normalize) w /= warp_sum(w);
  if (lane < top_k) {
    out_idx[std::size_t(t) * top_k + lane] = idx[lane];
    out_w[std::size_t(t) * top_k + lane] = w * scale;
    if (counts) atomicAdd(counts + idx[lane], 1u);
  }
}

inline cudaError_t launch_router_sigmoid_grouped(const float* logits, const float* bias,
                                                 std::int32_t* idx, float* w, int tokens,
                                                 int experts, int n_group, int topk_group,
                                                 int top_k, bool normalize, float scale,
                                                 unsigned* counts, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  router_sigmoid_grouped_kernel<><<<tokens, kWarpSize, 0, stream>>>(
      logits, bias, idx, w, experts, n_group, topk_group, top_k, normalize, scale, counts);
  return cudaGetLastError();
}

inline cudaError_t launch_router_softmax(const float* logits, std::int32_t* idx, float* w,
                                         int tokens, int experts, int top_k, bool normalize,
                                         float scale, unsigned* counts, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  router_softmax_kernel<>
      <<<tokens, kWarpSize, 0, stream>>>(logits, idx, w, experts, top_k, normalize, scale, counts);
  return cudaGetLastError();
}

}  // namespace tmoe::cuda
