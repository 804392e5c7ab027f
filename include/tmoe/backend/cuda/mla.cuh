// tmoe/backend/cuda/mla.cuh: DeepSeek Multi-head Latent Attention, absorbed form, for decoding
// over the latent cache in device memory (section 4 of r1-architecture.md; the CPU twin is
// MlaAttention's absorbed path in layers/attention_mla.hpp).
//
// H heads, Dn = qk_nope_head_dim, Dr = qk_rope_head_dim, Dv = v_head_dim, R = kv_lora_rank,
// K = R + Dr. kv_b is kv_b_proj (H (Dn + Dv), R) as stored: head h's rows [h (Dn+Dv), +Dn) are
// W_UK[h] (Dn, R), the next Dv rows W_UV[h] (Dv, R). The cache is one float row of K per
// position: [c (R) = RMSNorm(kv_a[0:R]) | k_pe (Dr) = RoPE(kv_a[R:K])], like kv_a's own output.
//   mla_kv_store:  cache[pos[t]] = [RMSNorm(kv[t, 0:R]) * w | RoPE(kv[t, R:K], pos[t])]
//   mla_absorb_q:  qa[t, h] = [W_UK[h]^T q_nope[t, h] (R) | q_pe[t, h] (Dr)]        (H, K)
//   mla_attention: ctx[t, h] = sum_{j <= pos[t]} softmax_j(scale qa[t, h] . cache[j]) cache[j, 0:R]
//   mla_absorb_out: o[t, h] = W_UV[h] ctx[t, h]                                        (H, Dv)
// All arithmetic fp32 (kv_b may be bf16; it is widened in registers).
//
// mla_attention_kernel (flash decoding; grid (head_blocks, n_split, T), 256 threads): a block
// takes kMlaG = 16 heads and one of ns slices of the keys 0..pos[t] (ns chosen on the device, at
// least kMlaMinKeys keys per slice). Head blocks of one slice are adjacent in the grid, so a key
// tile is read from HBM once and from L2 by the other head blocks. The scaled q of the block's
// heads sits in shared memory; tiles of kMlaTile = 32 keys (K floats each, rows padded to K + 4
// floats so that lane j's 16-byte reads of row j hit distinct banks) are double-buffered with
// cp.async (rows past the slice are zero-filled). Per tile:
//   scores: warp w, lane j sums q . key_j over the float4s w, w + 8, ... of the row for all 16
//           heads (q read as broadcasts), the 8 warps' partials are added through shared memory;
//   softmax: warp w owns heads 2w, 2w + 1: running max m, sum l, correction exp(m_old - m_new),
//           p_j = exp(s_j - m_new) to shared memory;
//   values: thread i accumulates dims i and i + 256 of the latent for all 16 heads:
//           acc = acc * corr + sum_j p_j c_j.
// With ns == 1 the block writes ctx = acc / l; otherwise the slice's normalized partial and its
// log-sum-exp, and mla_merge_kernel combines them as gqa_merge_kernel does.
// The arithmetic is 2 K + 2 R flops per head and key on the CUDA cores: at R1's 128 heads it is
// bound by fp32 FMA throughput, not by the cache's bytes (see docs/cuda.md).
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/mla.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/config.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

inline constexpr int kMlaG = 16;         // heads per block
inline constexpr int kMlaTile = 32;      // keys per shared-memory tile
inline constexpr int kMlaThreads = 256;  // 8 warps
inline constexpr int kMlaWarps = kMlaThreads / kWarpSize;
inline constexpr int kMlaMaxSplit = 256;
inline constexpr int kMlaMinKeys = 64;            // keys per slice at least
inline constexpr int kMlaMaxR = 2 * kMlaThreads;  // latent dims: two per thread
inline constexpr int kMlaMaxK = 1024;             // R + Dr

__device__ TMOE_INLINE int mla_slices(int len, int n_split) {
  return max(1, min(n_split, (len + kMlaMinKeys - 1) / kMlaMinKeys));
}
// Slice `split` of a context of len >= 1 keys cut into ns = mla_slices(len, n_split) slices:
// keys [j0, j1) (empty when split >= ns).
struct MlaSlice {
  int ns, j0, j1;
};
__device__ TMOE_INLINE MlaSlice mla_slice(int len, int n_split, int split) {
  const int ns = mla_slices(len, n_split), chunk = (len + ns - 1) / ns, j0 = split * chunk;
  return {ns, j0, min(len, j0 + chunk)};
}

// ---- cache store: RMSNorm of the latent, RoPE of the rope key, one row per token --------------
// Grid T, block 256. kv (T, ld_kv) float; weight (R) float; inv_freq (Dr / 2). The cache row is
// float or bf16 (mla_tc.cuh's cache: each value rounded to nearest even once).
template <class C>
__device__ TMOE_INLINE C mla_cache_value(float v) {
  if constexpr (std::is_same_v<C, float>)
    return v;
  else
    return C::from_float(v);
}
template <class C>
__global__ void mla_kv_store_kernel(const float* __restrict__ kv, std::size_t ld_kv,
                                    const float* __restrict__ weight, float eps, int R, int Dr,
                                    const std::int32_t* __restrict__ pos,
                                    const float* __restrict__ inv_freq, float attn_factor,
                                    bool interleaved, C* __restrict__ cache) {
  pdl_trigger();
  pdl_wait();
  const int t = blockIdx.x;
  const float* x = kv + std::size_t(t) * ld_kv;
  const int p = pos[t];
  C* row = cache + std::size_t(p) * (R + Dr);
  float ss = 0.f;
  for (int i = threadIdx.x; i < R; i += blockDim.x) ss = fmaf(x[i], x[i], ss);
  const float r = rsqrtf(block_sum(ss) / float(R) + eps);
  for (int i = threadIdx.x; i < R; i += blockDim.x)
    row[i] = mla_cache_value<C>(x[i] * r * weight[i]);
  const int half = Dr / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(float(p) * inv_freq[i], &s, &c);
    s *= attn_factor, c *= attn_factor;
    const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = x[R + ia], b = x[R + ib];
    row[R + ia] = mla_cache_value<C>(a * c - b * s);
    row[R + ib] = mla_cache_value<C>(a * s + b * c);
  }
}

// ---- q absorption: qa[t, h] = [W_UK[h]^T q_nope (R) | q_pe (Dr)] ------------------------------
// Grid (H, T), block 256: thread i owns latent dims 4 (i % 128) .. + 3 (R <= 512) over the rows
// d = i / 128, + 2, ... of W_UK[h]; the two halves are added through shared memory. qa is float
// or bf16 (mla_tc.cuh's input: each value rounded to nearest even once, as that kernel rounds a
// float qa).
template <class W, class O>
__global__ void __launch_bounds__(256)
    mla_absorb_q_kernel(const W* __restrict__ kv_b, const float* __restrict__ q, std::size_t ld_q,
                        O* __restrict__ qa, int Dn, int Dr, int Dv, int R) {
  pdl_trigger();
  pdl_wait();
  const int h = blockIdx.x, t = blockIdx.y, K = R + Dr;
  const float* qh = q + std::size_t(t) * ld_q + std::size_t(h) * (Dn + Dr);
  O* out = qa + (std::size_t(t) * gridDim.x + h) * K;
  __shared__ float qn[kMlaMaxK];
  __shared__ float4 half1[128];
  for (int d = threadIdx.x; d < Dn + Dr; d += blockDim.x) qn[d] = qh[d];
  __syncthreads();
  for (int d = threadIdx.x; d < Dr; d += blockDim.x) out[R + d] = mla_cache_value<O>(qn[Dn + d]);
  const int ci = threadIdx.x % 128, part = threadIdx.x / 128, c = 4 * ci;
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
  if (c < R) {
    const W* w = kv_b + std::size_t(h) * (Dn + Dv) * R + c;
#pragma unroll 8
    for (int d = part; d < Dn; d += 2) {
      const W* wr = w + std::size_t(d) * R;
      const float qd = qn[d];
      a.x = fmaf(qd, to_float(wr[0]), a.x);
      a.y = fmaf(qd, to_float(wr[1]), a.y);
      a.z = fmaf(qd, to_float(wr[2]), a.z);
      a.w = fmaf(qd, to_float(wr[3]), a.w);
    }
  }
  if (part == 1) half1[ci] = a;
  __syncthreads();
  if (part == 0 && c < R) {
    const float4 b = half1[ci];
    out[c] = mla_cache_value<O>(a.x + b.x), out[c + 1] = mla_cache_value<O>(a.y + b.y);
    out[c + 2] = mla_cache_value<O>(a.z + b.z), out[c + 3] = mla_cache_value<O>(a.w + b.w);
  }
}

// ---- value un-absorption: o[t, h, i] = W_UV[h][i] . ctx[t, h] --------------------------------
// Grid (ceil(H Dv / 8), T), block 256: a warp per output row, lanes stride over R.
template <class W>
__global__ void __launch_bounds__(256)
    mla_absorb_out_kernel(const W* __restrict__ kv_b, const float* __restrict__ ctx,
                          float* __restrict__ o, std::size_t ld_o, int H, int Dn, int Dv, int R) {
  pdl_trigger();
  pdl_wait();
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize, t = blockIdx.y;
  if (row >= H * Dv) return;
  const int h = row / Dv, i = row % Dv;
  const W* w = kv_b + (std::size_t(h) * (Dn + Dv) + Dn + i) * R;
  const float* x = ctx + (std::size_t(t) * H + h) * R;
  float s = 0.f;
  for (int c = lane; c < R; c += kWarpSize) s = fmaf(to_float(w[c]), x[c], s);
  s = warp_sum(s);
  if (lane == 0) o[std::size_t(t) * ld_o + row] = s;
}

struct MlaAttnArgs {
  const float* qa;     // (T, H, K)
  const float* cache;  // (cap, K)
  const std::int32_t* pos;
  float* ctx;       // (T, H, R)
  float* part_o;    // (T, H, n_split, R)
  float* part_lse;  // (T, H, n_split)
  int H, R, Dr, n_split;
  float scale;
};

__device__ TMOE_INLINE void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ TMOE_INLINE void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int kN>
__device__ TMOE_INLINE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN));
}

// Shared memory of mla_attention_kernel, in floats, for K = R + Dr.
inline constexpr std::size_t mla_smem_floats(int K) {
  return std::size_t(kMlaG) * K + 2 * std::size_t(kMlaTile) * (K + 4) +
         std::size_t(kMlaWarps) * kMlaG * kMlaTile + std::size_t(kMlaTile) * kMlaG + 3 * kMlaG;
}

__global__ void __launch_bounds__(kMlaThreads, 1) mla_attention_kernel(MlaAttnArgs a) {
  const int hb = blockIdx.x, split = blockIdx.y, t = blockIdx.z;
  const int R = a.R, K = a.R + a.Dr, K4 = K / 4, pitch = K + 4;
  const int h0 = hb * kMlaG, nh = min(kMlaG, a.H - h0);
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  extern __shared__ __align__(16) float mla_smem[];
  float* sq = mla_smem;                            // (G, K) scaled q
  float* tile = sq + kMlaG * K;                    // 2 x (kMlaTile, pitch)
  float* red = tile + 2 * kMlaTile * pitch;        // (warps, G, kMlaTile) partial scores
  float* sp = red + kMlaWarps * kMlaG * kMlaTile;  // (kMlaTile, G) probabilities
  float* scorr = sp + kMlaTile * kMlaG;            // (G) correction of this tile
  float* sm = scorr + kMlaG;                       // (G) running max
  float* sl = sm + kMlaG;                          // (G) running sum
  pdl_trigger();
  pdl_wait();

  const int len = a.pos[t] + 1;
  const auto [ns, j0, j1] = mla_slice(len, a.n_split, split);
  if (split >= ns) return;
  const int ntiles = (j1 - j0 + kMlaTile - 1) / kMlaTile;

  auto load_tile = [&](int it, int buf) {
    float* dst = tile + buf * kMlaTile * pitch;
    const int base = j0 + it * kMlaTile;
    for (int i = tid; i < kMlaTile * K4; i += kMlaThreads) {
      const int r = i / K4, c = i % K4;
      const bool valid = base + r < j1;
      const float* src = a.cache + std::size_t(valid ? base + r : j0) * K + 4 * c;
      cp_async16(dst + r * pitch + 4 * c, src, valid);
    }
    cp_async_commit();
  };
  if (ntiles > 0) load_tile(0, 0);

  const float* qsrc = a.qa + (std::size_t(t) * a.H + h0) * K;
  for (int i = tid; i < kMlaG * K; i += kMlaThreads) sq[i] = i < nh * K ? qsrc[i] * a.scale : 0.f;
  if (tid < kMlaG) sm[tid] = -INFINITY, sl[tid] = 0.f;
  __syncthreads();

  float acc[kMlaG][2];
#pragma unroll
  for (int g = 0; g < kMlaG; ++g) acc[g][0] = acc[g][1] = 0.f;
  const int d0 = tid, d1 = tid + kMlaThreads;

  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < ntiles) {
      load_tile(it + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* kt = tile + buf * kMlaTile * pitch;
    // Scores: lane = key, warp = a comb of the row's float4s.
    {
      float s[kMlaG];
#pragma unroll
      for (int g = 0; g < kMlaG; ++g) s[g] = 0.f;
      const float4* krow = reinterpret_cast<const float4*>(kt + lane * pitch);
      for (int c = warp; c < K4; c += kMlaWarps) {
        const float4 k4 = krow[c];
#pragma unroll
        for (int g = 0; g < kMlaG; ++g) {
          const float4 q4 = reinterpret_cast<const float4*>(sq + g * K)[c];
          s[g] = fmaf(q4.x, k4.x, fmaf(q4.y, k4.y, fmaf(q4.z, k4.z, fmaf(q4.w, k4.w, s[g]))));
        }
      }
#pragma unroll
      for (int g = 0; g < kMlaG; ++g) red[(warp * kMlaG + g) * kMlaTile + lane] = s[g];
    }
    __syncthreads();
    // Online softmax: warp w owns heads 2w, 2w + 1; lane = key.
    {
      const int base = j0 + it * kMlaTile;
      const bool valid = base + lane < j1;
#pragma unroll
      for (int u = 0; u < kMlaG / kMlaWarps; ++u) {
        const int g = warp * (kMlaG / kMlaWarps) + u;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kMlaWarps; ++w) s += red[(w * kMlaG + g) * kMlaTile + lane];
        s = valid ? s : -INFINITY;
        const float m_old = sm[g];
        const float m_new = fmaxf(m_old, warp_max(s));  // the tile has >= 1 valid key
        const float p = valid ? expf(s - m_new) : 0.f;
        const float psum = warp_sum(p);
        sp[lane * kMlaG + g] = p;
        __syncwarp();
        if (lane == 0) {
          const float corr = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
          scorr[g] = corr;
          sl[g] = fmaf(sl[g], corr, psum);
          sm[g] = m_new;
        }
      }
    }
    __syncthreads();
    // Values: dims d0, d1 of the latent for all heads.
    {
      float corr[kMlaG];
#pragma unroll
      for (int g = 0; g < kMlaG; ++g) corr[g] = scorr[g];
#pragma unroll
      for (int g = 0; g < kMlaG; ++g) acc[g][0] *= corr[g], acc[g][1] *= corr[g];
      const bool has1 = d1 < R;
      if (d0 < R) {
#pragma unroll 4
        for (int j = 0; j < kMlaTile; ++j) {
          const float v0 = kt[j * pitch + d0];
          const float v1 = has1 ? kt[j * pitch + d1] : 0.f;
          const float4* pj = reinterpret_cast<const float4*>(sp + j * kMlaG);
#pragma unroll
          for (int g4 = 0; g4 < kMlaG / 4; ++g4) {
            const float4 p = pj[g4];
            acc[4 * g4][0] = fmaf(p.x, v0, acc[4 * g4][0]);
            acc[4 * g4][1] = fmaf(p.x, v1, acc[4 * g4][1]);
            acc[4 * g4 + 1][0] = fmaf(p.y, v0, acc[4 * g4 + 1][0]);
            acc[4 * g4 + 1][1] = fmaf(p.y, v1, acc[4 * g4 + 1][1]);
            acc[4 * g4 + 2][0] = fmaf(p.z, v0, acc[4 * g4 + 2][0]);
            acc[4 * g4 + 2][1] = fmaf(p.z, v1, acc[4 * g4 + 2][1]);
            acc[4 * g4 + 3][0] = fmaf(p.w, v0, acc[4 * g4 + 3][0]);
            acc[4 * g4 + 3][1] = fmaf(p.w, v1, acc[4 * g4 + 3][1]);
          }
        }
      }
    }
    __syncthreads();  // the buffer is refilled and sp / scorr rewritten next round
  }

#pragma unroll
  for (int g = 0; g < kMlaG; ++g) {
    if (g >= nh) break;
    const int h = h0 + g;
    const float L = sl[g];  // 0 only for a slice with no keys (j0 >= len)
    if (ns == 1) {
      float* o = a.ctx + (std::size_t(t) * a.H + h) * R;
      if (d0 < R) o[d0] = acc[g][0] / L;
      if (d1 < R) o[d1] = acc[g][1] / L;
    } else {
      const std::size_t ps = (std::size_t(t) * a.H + h) * a.n_split + split;
      float* o = a.part_o + ps * R;
      if (d0 < R) o[d0] = L > 0.f ? acc[g][0] / L : 0.f;
      if (d1 < R) o[d1] = L > 0.f ? acc[g][1] / L : 0.f;
      if (tid == 0) a.part_lse[ps] = L > 0.f ? sm[g] + logf(L) : -INFINITY;
    }
  }
}

// ctx[t, h] = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max lse). Grid (T H, ceil(R / 64)),
// block 64: the slices' lse read in parallel into shared memory (one dependent L2 read per slice
// per thread cost ~20 us at 66 slices), their weights computed once, then one latent dim per
// thread with 8 partial loads in flight.
inline constexpr int kMlaMergeDims = 64;
__global__ void __launch_bounds__(kMlaMergeDims) mla_merge_kernel(MlaAttnArgs a) {
  pdl_trigger();
  pdl_wait();
  const int th = blockIdx.x, t = th / a.H;
  const int ns = mla_slices(a.pos[t] + 1, a.n_split);
  if (ns == 1) return;  // the attention kernel wrote ctx
  const float* lse = a.part_lse + std::size_t(th) * a.n_split;
  __shared__ float w[kMlaMaxSplit];
  __shared__ float red[kMlaMergeDims / kWarpSize];
  float M = -INFINITY;
  for (int s = threadIdx.x; s < ns; s += blockDim.x) M = fmaxf(M, w[s] = lse[s]);
  M = warp_max(M);
  if (threadIdx.x % kWarpSize == 0) red[threadIdx.x / kWarpSize] = M;
  __syncthreads();
  M = red[0];
#pragma unroll
  for (int i = 1; i < kMlaMergeDims / kWarpSize; ++i) M = fmaxf(M, red[i]);
  float part = 0.f;
  for (int s = threadIdx.x; s < ns; s += blockDim.x) part += (w[s] = expf(w[s] - M));
  part = warp_sum(part);
  __syncthreads();  // red read above; w complete below
  if (threadIdx.x % kWarpSize == 0) red[threadIdx.x / kWarpSize] = part;
  __syncthreads();
  float W = 0.f;
#pragma unroll
  for (int i = 0; i < kMlaMergeDims / kWarpSize; ++i) W += red[i];
  const int e = blockIdx.y * kMlaMergeDims + threadIdx.x;
  if (e >= a.R) return;
  const float* po = a.part_o + std::size_t(th) * a.n_split * a.R + e;
  float O = 0.f;
#pragma unroll 8
  for (int s = 0; s < ns; ++s) O = fmaf(w[s], po[std::size_t(s) * a.R], O);
  a.ctx[std::size_t(th) * a.R + e] = O / W;
}

inline cudaError_t launch_mla_attention(MlaAttnArgs a, int T, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  const std::size_t smem = mla_smem_floats(a.R + a.Dr) * sizeof(float);
  cudaError_t e = cudaFuncSetAttribute(mla_attention_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const dim3 grid((a.H + kMlaG - 1) / kMlaG, a.n_split, T);
  e = launch(mla_attention_kernel, grid, dim3(kMlaThreads), smem, stream, a);
  if (e == cudaSuccess && a.n_split > 1)
    e = launch(mla_merge_kernel, dim3(T * a.H, (a.R + kMlaMergeDims - 1) / kMlaMergeDims),
               dim3(kMlaMergeDims), 0, stream, a);
  return e;
}

}  // namespace tmoe::cuda
