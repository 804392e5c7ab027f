// tmoe/backend/cuda/gemv.cuh: decode GEMV kernels, y[o] = sum_i W[o, i] * x[i], at the HBM limit.
//
// One token's projection reads every weight byte once and does 2 FLOP per weight: it is bound by
// device memory (about 0.5 FLOP/byte for bf16, 1 for fp8, against ~300 for the chip). So the
// kernels only need to keep enough bytes in flight:
//   - each lane loads 16 bytes of W per step (8 bf16 or 16 fp8) with ld.global.nc and the
//     L1::no_allocate hint, so the streamed weights do not evict the activation from L1;
//   - a warp owns kRows consecutive rows and issues kRows * kUnroll independent 16-byte loads
//     before it uses the first one;
//   - lanes stride over the row in 16-byte chunks (chunk c = lane + 32 j): a warp's load is 512
//     contiguous bytes, fully coalesced; the row sum is a butterfly over the warp at the end;
//   - with few rows (expert projections, 576-row kv_a) kSplit warps share a row group and split
//     its chunks, adding their sums through shared memory, so about 8192 warps stay in flight.
// FP8 (e4m3, DeepSeek 128x128 block scales): a lane's 16-byte chunk lies inside one 128-column
// block (128 % 16 == 0), so it dots 16 weights with x in fp32 and multiplies that partial sum
// by the block's scale_inv once: W x = sum_blocks scale_inv[b] * (Wq_b . x_b). The rows of a warp
// share one row block whenever kRows divides 128, so one scale load serves all kRows rows.
// Widening fp8 costs ALU work per weight that HBM does not wait for only if it is cheap: the
// hardware e4m3x2 -> f16x2 conversion (F2FP) then f16 -> f32 measured fastest (docs/cuda.md);
// two exact bit-manipulation decodes stay as alternatives (Fp8Decode).
// Shapes that do not allow 16-byte rows take gemv_rowwise_kernel: one warp per row, element loads.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/gemv.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/config.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

inline constexpr int kFp8Block = 128;  // DeepSeek weight_block_size

namespace gemv_detail {

// 16-byte streaming load of read-only data: no L1 allocation, 256-byte L2 prefetch.
__device__ TMOE_INLINE uint4 load_stream16(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ TMOE_INLINE float bf16_lo(std::uint32_t u) {
  return __uint_as_float(u << 16);
}
__device__ TMOE_INLINE float bf16_hi(std::uint32_t u) {
  return __uint_as_float(u & 0xffff0000u);
}

// Byte k (0..3) of u, an e4m3 pattern, as float: sign to bit 31 and the 7 exponent+mantissa bits
// to bits 26..20 give the value times 2^-120 (exactly, fp8 subnormals included, as fp32
// subnormals); the multiply by 2^120 is exact too. (The one NaN pattern decodes as 480.)
template <int k>
__device__ TMOE_INLINE float e4m3_to_float(std::uint32_t u) {
  constexpr float kTwo120 = 1.329227995784916e36f;
  const std::uint32_t b = (u >> (8 * k)) & 0xffu;
  return __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * kTwo120;
}

// n consecutive activations starting at x + i, as float (n a multiple of 4 / 8).
template <int n>
__device__ TMOE_INLINE void load_x(const float* x, std::size_t i, float (&v)[n]) {
  const float4* p = reinterpret_cast<const float4*>(x + i);
#pragma unroll
  for (int j = 0; j < n / 4; ++j) {
    const float4 f = __ldg(p + j);
    v[4 * j] = f.x, v[4 * j + 1] = f.y, v[4 * j + 2] = f.z, v[4 * j + 3] = f.w;
  }
}
template <int n>
__device__ TMOE_INLINE void load_x(const bf16* x, std::size_t i, float (&v)[n]) {
  const uint4* p = reinterpret_cast<const uint4*>(x + i);
#pragma unroll
  for (int j = 0; j < n / 8; ++j) {
    const uint4 u = __ldg(p + j);
    const std::uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
      v[8 * j + 2 * q] = bf16_lo(w[q]), v[8 * j + 2 * q + 1] = bf16_hi(w[q]);
  }
}

// Dot of one 16-byte weight chunk with its activations.
__device__ TMOE_INLINE float dot_chunk(uint4 w, const float (&x)[8], bf16*) {
  const std::uint32_t u[4] = {w.x, w.y, w.z, w.w};
  float s0 = 0.f, s1 = 0.f;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    s0 = fmaf(bf16_lo(u[q]), x[2 * q], s0);
    s1 = fmaf(bf16_hi(u[q]), x[2 * q + 1], s1);
  }
  return s0 + s1;
}
__device__ TMOE_INLINE float dot_chunk(uint4 w, const float (&x)[4], float*) {
  const float s0 = fmaf(__uint_as_float(w.x), x[0], __uint_as_float(w.y) * x[1]);
  const float s1 = fmaf(__uint_as_float(w.z), x[2], __uint_as_float(w.w) * x[3]);
  return s0 + s1;
}
// fp8 decodes (kFp8Decode), each exact for every finite e4m3 value, subnormals included:
//   kDecodeF32Bits: the byte's bits moved into a float (value * 2^-120), then * 2^120;
//                   ~6 integer/FP ops per weight.
//   kDecodeF16Bits: two bytes at once moved into an f16x2 (value * 2^-8: the 2^8 goes into the
//                   block scale), then f16 -> f32; ~3 ops per weight.
//   kDecodeCvt:     the hardware e4m3x2 -> f16x2 conversion (sm_89+), then f16 -> f32.
enum Fp8Decode : int { kDecodeF32Bits = 0, kDecodeF16Bits = 1, kDecodeCvt = 2 };
// Factor the decoded dot must be multiplied by (folded into the block scale).
template <int kDecode>
inline constexpr float kFp8DecodeUnscale = kDecode == kDecodeF16Bits ? 256.f : 1.f;

__device__ TMOE_INLINE float2 half2_bits_to_float2(std::uint32_t h) {
  __half2_raw raw;
  raw.x = static_cast<unsigned short>(h & 0xffffu);
  raw.y = static_cast<unsigned short>(h >> 16);
  return __half22float2(__half2(raw));
}

template <int kDecode>
__device__ TMOE_INLINE float dot_chunk(uint4 w, const float (&x)[16], f8_e4m3*) {
  const std::uint32_t u[4] = {w.x, w.y, w.z, w.w};
  float s0 = 0.f, s1 = 0.f;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if constexpr (kDecode == kDecodeF32Bits) {
      s0 = fmaf(e4m3_to_float<0>(u[q]), x[4 * q], s0);
      s1 = fmaf(e4m3_to_float<1>(u[q]), x[4 * q + 1], s1);
      s0 = fmaf(e4m3_to_float<2>(u[q]), x[4 * q + 2], s0);
      s1 = fmaf(e4m3_to_float<3>(u[q]), x[4 * q + 3], s1);
    } else if constexpr (kDecode == kDecodeF16Bits) {
      // bytes 0, 2 -> f16 lanes (lo, hi); bytes 1, 3 likewise: sign to bit 15 of its lane,
      // exponent+mantissa to bits 13..7 (an f16 2^8 smaller than the e4m3 value).
      const std::uint32_t even = ((u[q] & 0x00800080u) << 8) | ((u[q] & 0x007f007fu) << 7);
      const std::uint32_t odd = (u[q] & 0x80008000u) | ((u[q] >> 1) & 0x3f803f80u);
      const float2 fe = half2_bits_to_float2(even), fo = half2_bits_to_float2(odd);
      s0 = fmaf(fe.x, x[4 * q], s0);
      s1 = fmaf(fo.x, x[4 * q + 1], s1);
      s0 = fmaf(fe.y, x[4 * q + 2], s0);
      s1 = fmaf(fo.y, x[4 * q + 3], s1);
    } else {
      const __half2_raw lo =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(u[q] & 0xffffu), __NV_E4M3);
      const __half2_raw hi =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(u[q] >> 16), __NV_E4M3);
      const float2 fl = __half22float2(__half2(lo)), fh = __half22float2(__half2(hi));
      s0 = fmaf(fl.x, x[4 * q], s0);
      s1 = fmaf(fl.y, x[4 * q + 1], s1);
      s0 = fmaf(fh.x, x[4 * q + 2], s0);
      s1 = fmaf(fh.y, x[4 * q + 3], s1);
    }
  }
  return s0 + s1;
}

}  // namespace gemv_detail

// Several GEMVs in one launch (grid.y = batch), e.g. the routed experts of one token: GEMV b uses
// W + idx[b] * w_stride, scale_inv + idx[b] * scale_stride, x + b * x_stride (0: one shared x)
// and writes y + b * out. idx == nullptr: a single GEMV (batch 1).
struct GemvBatch {
  const std::int32_t* idx = nullptr;
  std::size_t w_stride = 0, scale_stride = 0, x_stride = 0;
  bool prefetch = false;  // see gemv_vec_kernel (set by launch_gemv)
  // SwiGLU epilogue (vector kernel, kRows == 2, batch 1): rows 2i and 2i+1 of W are the gate and
  // up rows of unit i; y[i] = silu(gate . x) * (up . x), in fp32 (y has out / 2 elements).
  bool swiglu = false;
  // Residual add + RMSNorm prologue (vector kernel, batch 1, float x; set when norm_gamma is not
  // null): every block computes h = norm_h + norm_delta (norm_delta null: h = norm_h) and
  //   x = h * rsqrt(mean(h^2) + norm_eps) * norm_gamma
  // in fp32 into shared memory (the order of add_rmsnorm), then runs the GEMV on that x instead of
  // the x argument; block 0 also stores h to norm_out (when norm_delta is set). A decode step's
  // norm then costs no kernel of its own: the add_rmsnorm launch before each GEMV disappears.
  const float* norm_h = nullptr;
  const float* norm_delta = nullptr;
  const float* norm_gamma = nullptr;
  float* norm_out = nullptr;
  float norm_eps = 0.f;
  // q/k/v epilogue (vector kernel, kRows == 2, batch 1; set when rope_pos is not null): the rows
  // are [q heads | k heads | v heads] of rope_D, q and k rows in RoPE pair order (rows 2i, 2i+1
  // of a head are one rotation pair); each row pair is summed, + rope_bias, rotated by
  // pos * rope_inv_freq[i] (cos and sin times rope_factor, as qkv_store_kernel) and stored: q to
  // y, k and v to the caches (Hkv, cache_cap, rope_D) at position *rope_pos.
  const std::int32_t* rope_pos = nullptr;
  const float* rope_inv_freq = nullptr;
  const float* rope_bias = nullptr;
  float* k_cache = nullptr;
  float* v_cache = nullptr;
  std::size_t cache_cap = 0;
  float rope_factor = 1.f;
  int rope_H = 0, rope_Hkv = 0, rope_D = 0;
};

// Largest `in` of the normed GEMV: x lives in dynamic shared memory (40 KiB at most, which leaves
// the kernel's static shared memory room below the 48 KiB a launch gets without opting in).
inline constexpr int kGemvNormMaxIn = 10240;

namespace gemv_detail {
// The prologue of GemvBatch's normed GEMV (all threads of the block; d % 4 == 0; xs: d floats of
// 16-byte aligned shared memory). Called after pdl_wait: h and delta come from earlier kernels.
__device__ inline void norm_prologue(const GemvBatch& b, int d, float* xs) {
  const int n4 = d / 4;
  const float4* hp = reinterpret_cast<const float4*>(b.norm_h);
  const float4* dp = reinterpret_cast<const float4*>(b.norm_delta);
  float4* op =
      dp && blockIdx.x == 0 && blockIdx.y == 0 ? reinterpret_cast<float4*>(b.norm_out) : nullptr;
  float4* x4 = reinterpret_cast<float4*>(xs);
  float ss = 0.f;
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 h = hp[i];
    if (dp) {
      const float4 v = dp[i];
      h.x += v.x, h.y += v.y, h.z += v.z, h.w += v.w;
      if (op) op[i] = h;
    }
    x4[i] = h;
    ss = fmaf(h.x, h.x, fmaf(h.y, h.y, fmaf(h.z, h.z, fmaf(h.w, h.w, ss))));
  }
  const float r = rsqrtf(block_sum(ss) / float(d) + b.norm_eps);
  const float4* g4 = reinterpret_cast<const float4*>(b.norm_gamma);
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    const float4 h = x4[i], g = __ldg(g4 + i);
    x4[i] = make_float4(h.x * r * g.x, h.y * r * g.y, h.z * r * g.z, h.w * r * g.w);
  }
  __syncthreads();
}

// GemvBatch's q/k/v epilogue for the row pair (row0, row0 + 1) with sums a0, a1 (one thread).
__device__ inline void qkv_rope_store(const GemvBatch& b, int row0, float a0, float a1, float* y) {
  const int D = b.rope_D, head = row0 / D, d0 = row0 % D;  // row0 and d0 are even
  if (b.rope_bias) a0 += b.rope_bias[row0], a1 += b.rope_bias[row0 + 1];
  const int p = *b.rope_pos;
  if (head < b.rope_H + b.rope_Hkv) {
    float s, c;
    sincosf(float(p) * b.rope_inv_freq[d0 / 2], &s, &c);
    s *= b.rope_factor, c *= b.rope_factor;
    const float ra = a0 * c - a1 * s, rb = a0 * s + a1 * c;
    if (head < b.rope_H) {
      y[row0] = ra, y[row0 + 1] = rb;
    } else {
      float* k = b.k_cache + (std::size_t(head - b.rope_H) * b.cache_cap + p) * D + d0;
      k[0] = ra, k[1] = rb;
    }
  } else {
    float* v = b.v_cache + (std::size_t(head - b.rope_H - b.rope_Hkv) * b.cache_cap + p) * D + d0;
    v[0] = a0, v[1] = a1;
  }
}

// n consecutive floats of shared-memory x starting at i (n a multiple of 4).
template <int n>
__device__ TMOE_INLINE void load_xs(const float* xs, std::size_t i, float (&v)[n]) {
  const float4* p = reinterpret_cast<const float4*>(xs + i);
#pragma unroll
  for (int j = 0; j < n / 4; ++j) {
    const float4 f = p[j];
    v[4 * j] = f.x, v[4 * j + 1] = f.y, v[4 * j + 2] = f.z, v[4 * j + 3] = f.w;
  }
}

__device__ TMOE_INLINE void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
// TMOE_CUDA_GEMV_PREFETCH=1 turns the L2 prefetch before the PDL wait on. Off by default: on the
// H100 it cost 3.5% of whole-model decode speed (574 vs 595 tok/s, docs/cuda.md).
inline bool gemv_prefetch_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TMOE_CUDA_GEMV_PREFETCH");
    return e && std::strcmp(e, "1") == 0;
  }();
  return on;
}
}  // namespace gemv_detail

// Tuning of the vector kernel per weight type: rows per warp, 16-byte loads per row in flight
// per lane, warps per block, fp8 decode. Chosen from bench_cuda_gemv --all-configs (docs/cuda.md).
template <class W>
struct GemvDefaults {
  static constexpr int kRows = 2, kUnroll = 2, kWarps = 8;
  static constexpr int kFp8Decode = gemv_detail::kDecodeCvt;
};
template <>
struct GemvDefaults<f8_e4m3> {
  static constexpr int kRows = 2, kUnroll = 4, kWarps = 8;
  static constexpr int kFp8Decode = gemv_detail::kDecodeCvt;
};

// W (out, in) with 16-byte aligned rows, in % (16 / sizeof(W)) == 0. scale_inv: fp8 only,
// (ceil(out/128), ld_scale).
// Block: kWarps warps = kWarps / kSplit row groups of kRows rows; the kSplit warps of a group
// split the row's 16-byte chunks (warp s of the group takes chunks lane + 32 (s + kSplit j)) and
// add their sums through shared memory. kSplit > 1 keeps enough loads in flight when there are
// few rows (a 2048-row expert projection has 1024 row pairs: 8 warps per SM without a split).
// Grid: ceil(out / (kRows * kWarps / kSplit)) blocks.
// kNorm: the GemvBatch norm prologue computes x into dynamic shared memory (in floats); the x
// argument is unused.
template <class W, class X, int kRows, int kUnroll, int kWarps, int kSplit,
          int kFp8Decode = GemvDefaults<W>::kFp8Decode, bool kNorm = false>
__global__ void __launch_bounds__(kWarps* kWarpSize)
    gemv_vec_kernel(const W* __restrict__ w, std::size_t ldw, const float* __restrict__ scale_inv,
                    std::size_t ld_scale, const X* __restrict__ x, float* __restrict__ y, int out,
                    int in, GemvBatch batch) {
  using namespace gemv_detail;
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  constexpr int kVec = 16 / sizeof(W);  // weights per 16-byte chunk
  constexpr int kGroups = kWarps / kSplit;
  constexpr int kStride = kWarpSize * kSplit;  // chunks between a lane's consecutive loads
  static_assert(kWarps % kSplit == 0, "kSplit must divide kWarps");
  static_assert(!kFp8 || kFp8Block % kRows == 0, "a warp's rows must share one scale row block");
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int slice = warp % kSplit, group = warp / kSplit;
  const int row0 = (blockIdx.x * kGroups + group) * kRows;
  pdl_trigger();
  // Launched early under PDL, the block can pull its first weights into L2 while the kernel before
  // it (whose output x is) finishes: weights never depend on earlier kernels (unless gathered by
  // a device index). Opt-in (TMOE_CUDA_GEMV_PREFETCH=1): it measured slower.
  if (batch.prefetch && !batch.idx && row0 < out) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int c = lane + slice * kWarpSize + u * kStride;
        if (c < in / kVec)
          prefetch_l2(w + std::size_t(min(row0 + r, out - 1)) * ldw + std::size_t(c) * kVec);
      }
  }
  pdl_wait();
  if (batch.idx) {
    const std::size_t e = std::size_t(batch.idx[blockIdx.y]);
    w += e * batch.w_stride;
    if constexpr (kFp8) scale_inv += e * batch.scale_stride;
  }
  x += blockIdx.y * batch.x_stride;
  y += std::size_t(blockIdx.y) * out;
  const W* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + std::size_t(min(row0 + r, out - 1)) * ldw;
  const float* srow =
      kFp8 ? scale_inv + std::size_t(min(row0, out - 1) / kFp8Block) * ld_scale : nullptr;

  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.f;

  const int nchunk = row0 < out ? in / kVec : 0;
  uint4 wv[kUnroll][kRows];
  auto load_round = [&](int c) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (c + u * kStride < nchunk)
          wv[u][r] = load_stream16(wr[r] + std::size_t(c + u * kStride) * kVec);
  };
  // The norm prologue runs while the first round of weights is in flight (its h / delta reads
  // and two block barriers would otherwise delay every weight load of the block).
  const int c0 = lane + slice * kWarpSize;
  [[maybe_unused]] float* xs = nullptr;
  bool loaded = false;
  if constexpr (kNorm) {
    static_assert(std::is_same_v<X, float>, "the normed GEMV takes float activations");
    extern __shared__ float4 gemv_norm_smem[];
    xs = reinterpret_cast<float*>(gemv_norm_smem);
    load_round(c0);
    loaded = true;
    norm_prologue(batch, in, xs);
  }
  // kRows * kUnroll loads in flight per lane; the last round is predicated per chunk.
  for (int c = c0; c < nchunk; c += kUnroll * kStride) {
    if (!loaded) load_round(c);
    loaded = false;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int cu = c + u * kStride;
      if (cu >= nchunk) break;
      float xv[kVec];
      if constexpr (kNorm)
        load_xs(xs, std::size_t(cu) * kVec, xv);
      else
        load_x(x, std::size_t(cu) * kVec, xv);
      if constexpr (kFp8) {
        const float sc = __ldg(srow + cu * kVec / kFp8Block);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          acc[r] = fmaf(dot_chunk<kFp8Decode>(wv[u][r], xv, static_cast<W*>(nullptr)), sc, acc[r]);
      } else {
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += dot_chunk(wv[u][r], xv, static_cast<W*>(nullptr));
      }
    }
  }
  constexpr float kUnscale = kFp8 ? kFp8DecodeUnscale<kFp8Decode> : 1.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = warp_sum(acc[r]) * kUnscale;
  // silu(g) * u as the separate SwiGLU kernel computes it in fp32.
  auto silu_mul = [](float g, float u) { return g / (1.f + expf(-g)) * u; };
  if constexpr (kSplit == 1) {
    if (lane == 0) {
      if (kRows == 2 && batch.swiglu) {
        if (row0 < out) y[row0 / 2] = silu_mul(acc[0], acc[kRows - 1]);
      } else if (kRows == 2 && batch.rope_pos) {
        if (row0 < out) qkv_rope_store(batch, row0, acc[0], acc[kRows - 1], y);
      } else {
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (row0 + r < out) y[row0 + r] = acc[r];
      }
    }
  } else {
    __shared__ float part[kWarps][kRows];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[warp][r] = acc[r];
    __syncthreads();
    if (slice == 0) {
      float v = 0.f;
      if (lane < kRows)
#pragma unroll
        for (int s = 0; s < kSplit; ++s) v += part[group * kSplit + s][lane];
      if (kRows == 2 && (batch.swiglu || batch.rope_pos)) {
        const float g = __shfl_sync(0xffffffffu, v, 0), u = __shfl_sync(0xffffffffu, v, 1);
        if (lane == 0 && row0 < out) {
          if (batch.swiglu)
            y[row0 / 2] = silu_mul(g, u);
          else
            qkv_rope_store(batch, row0, g, u, y);
        }
      } else if (lane < kRows && row0 + lane < out) {
        y[row0 + lane] = v;
      }
    }
  }
}

// Any shape and alignment: one warp per row, one element per lane per step.
template <class W, class X>
__global__ void gemv_rowwise_kernel(const W* __restrict__ w, std::size_t ldw,
                                    const float* __restrict__ scale_inv, std::size_t ld_scale,
                                    const X* __restrict__ x, float* __restrict__ y, int out, int in,
                                    GemvBatch batch) {
  pdl_trigger();
  pdl_wait();
  if (batch.idx) {
    const std::size_t e = std::size_t(batch.idx[blockIdx.y]);
    w += e * batch.w_stride;
    if constexpr (std::is_same_v<W, f8_e4m3>) scale_inv += e * batch.scale_stride;
  }
  x += blockIdx.y * batch.x_stride;
  y += std::size_t(blockIdx.y) * out;
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= out) return;
  const W* wr = w + std::size_t(row) * ldw;
  float acc = 0.f;
  for (int i = lane; i < in; i += kWarpSize) {
    float wi = to_float(wr[i]);
    if constexpr (std::is_same_v<W, f8_e4m3>)
      wi *= scale_inv[std::size_t(row / kFp8Block) * ld_scale + i / kFp8Block];
    acc = fmaf(wi, to_float(x[i]), acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) y[row] = acc;
}

// Enqueues y = W x (batch > 1: the GemvBatch GEMVs, grid.y = batch); returns the launch's error
// (cudaSuccess or a configuration error).
// Chooses the 16-byte kernel when the rows allow it, and splits rows across warps (kSplit) until
// about 8192 warps are in flight (62 per SM on a 132-SM H100), as long as every warp keeps at
// least one 16-byte chunk per lane.
template <class W, class X, int kRows = GemvDefaults<W>::kRows,
          int kUnroll = GemvDefaults<W>::kUnroll, int kWarps = GemvDefaults<W>::kWarps>
cudaError_t launch_gemv(const W* w, std::size_t ldw, const float* scale_inv, const X* x, float* y,
                        int out, int in, cudaStream_t stream, int batch = 1, GemvBatch gb = {}) {
  constexpr int kVec = 16 / sizeof(W);
  const std::size_t ld_scale = (std::size_t(in) + kFp8Block - 1) / kFp8Block;
  if (out <= 0 || batch <= 0) return cudaSuccess;
  const bool vec = in % kVec == 0 && (ldw * sizeof(W)) % 16 == 0 &&
                   (gb.w_stride * sizeof(W)) % 16 == 0 && (gb.x_stride * sizeof(X)) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(w) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
  const bool norm = gb.norm_gamma != nullptr;
  if (norm &&
      (!std::is_same_v<X, float> || !vec || batch != 1 || in % 4 != 0 || in > kGemvNormMaxIn))
    return cudaErrorInvalidValue;  // the API layer checks these first, with a clear message
  if ((gb.swiglu || gb.rope_pos) && (kRows != 2 || !vec || batch != 1))
    return cudaErrorInvalidValue;
  if (!vec) {
    constexpr int kRowWarps = 4;
    return launch(gemv_rowwise_kernel<W, X>, dim3((out + kRowWarps - 1) / kRowWarps, batch),
                  dim3(kRowWarps * kWarpSize), 0, stream, w, ldw, scale_inv, ld_scale, x, y, out,
                  in, gb);
  }
  gb.prefetch = gemv_detail::gemv_prefetch_enabled() && pdl_enabled();
  constexpr int kTargetWarps = 8192;
  const int row_groups = (out + kRows - 1) / kRows, nchunk = in / kVec;
  int split = 1;
  while (split < kWarps && row_groups * batch * split < kTargetWarps &&
         nchunk >= 2 * split * kWarpSize)
    split *= 2;
  cudaError_t err = cudaSuccess;
  auto go = [&]<int kSplit>() {
    const int rows_per_block = kRows * (kWarps / kSplit);
    const dim3 grid((out + rows_per_block - 1) / rows_per_block, batch);
    if constexpr (std::is_same_v<X, float>)
      if (norm) {
        err = launch(gemv_vec_kernel<W, X, kRows, kUnroll, kWarps, kSplit,
                                     GemvDefaults<W>::kFp8Decode, true>,
                     grid, dim3(kWarps * kWarpSize), std::size_t(in) * sizeof(float), stream, w,
                     ldw, scale_inv, ld_scale, x, y, out, in, gb);
        return;
      }
    err =
        launch(gemv_vec_kernel<W, X, kRows, kUnroll, kWarps, kSplit>, grid,
               dim3(kWarps * kWarpSize), 0, stream, w, ldw, scale_inv, ld_scale, x, y, out, in, gb);
  };
  static_assert(kWarps == 8, "the split dispatch below lists kSplit = 1, 2, 4, 8");
  switch (split) {
    case 1:
      go.template operator()<1>();
      break;
    case 2:
      go.template operator()<2>();
      break;
    case 4:
      go.template operator()<4>();
      break;
    default:
      go.template operator()<8>();
      break;
  }
  return err;
}

}  // namespace tmoe::cuda
