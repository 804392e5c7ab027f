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
//     contiguous bytes, fully coalesced; the row sum is a butterfly over the warp at the end.
// FP8 (e4m3, DeepSeek 128x128 block scales): a lane's 16-byte chunk lies inside one 128-column
// block (128 % 16 == 0), so it dots 16 weights with x in fp32 and multiplies that partial sum
// by the block's scale_inv once: W x = sum_blocks scale_inv[b] * (Wq_b . x_b). The rows of a warp
// share one row block whenever kRows divides 128, so one scale load serves all kRows rows.
// The fp8 -> fp32 widening is exact and costs a few integer ops and one multiply per weight
// (e4m3_to_float), which the SM issues well under the rate at which HBM delivers fp8 bytes.
// Shapes that do not allow 16-byte rows take gemv_rowwise_kernel: one warp per row, element loads.
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/gemv.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

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
__device__ TMOE_INLINE float dot_chunk(uint4 w, const float (&x)[16], f8_e4m3*) {
  const std::uint32_t u[4] = {w.x, w.y, w.z, w.w};
  float s0 = 0.f, s1 = 0.f;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    s0 = fmaf(e4m3_to_float<0>(u[q]), x[4 * q], s0);
    s1 = fmaf(e4m3_to_float<1>(u[q]), x[4 * q + 1], s1);
    s0 = fmaf(e4m3_to_float<2>(u[q]), x[4 * q + 2], s0);
    s1 = fmaf(e4m3_to_float<3>(u[q]), x[4 * q + 3], s1);
  }
  return s0 + s1;
}

}  // namespace gemv_detail

// Tuning of the vector kernel per weight type: rows per warp, 16-byte loads per row in flight
// per lane, warps per block. Chosen from bench_cuda_gemv --all-configs (docs/cuda.md).
template <class W>
struct GemvDefaults {
  static constexpr int kRows = 2, kUnroll = 4, kWarps = 4;
};

// W (out, in) with 16-byte aligned rows, in % (16 / sizeof(W)) == 0. scale_inv: fp8 only,
// (ceil(out/128), ld_scale). Grid: ceil(out / (kRows * kWarps)) blocks of kWarps warps.
template <class W, class X, int kRows, int kUnroll, int kWarps>
__global__ void __launch_bounds__(kWarps* kWarpSize)
    gemv_vec_kernel(const W* __restrict__ w, std::size_t ldw, const float* __restrict__ scale_inv,
                    std::size_t ld_scale, const X* __restrict__ x, float* __restrict__ y, int out,
                    int in) {
  using namespace gemv_detail;
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  constexpr int kVec = 16 / sizeof(W);  // weights per 16-byte chunk
  static_assert(!kFp8 || kFp8Block % kRows == 0, "a warp's rows must share one scale row block");
  const int lane = threadIdx.x % kWarpSize;
  const int row0 = (blockIdx.x * kWarps + threadIdx.x / kWarpSize) * kRows;
  if (row0 >= out) return;
  const W* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + std::size_t(min(row0 + r, out - 1)) * ldw;
  const float* srow = kFp8 ? scale_inv + std::size_t(row0 / kFp8Block) * ld_scale : nullptr;

  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.f;

  const int nchunk = in / kVec;
  int c = lane;
  // Main loop: kRows * kUnroll loads in flight per lane.
  for (; c + (kUnroll - 1) * kWarpSize < nchunk; c += kUnroll * kWarpSize) {
    uint4 wv[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        wv[u][r] = load_stream16(wr[r] + std::size_t(c + u * kWarpSize) * kVec);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int cu = c + u * kWarpSize;
      float xv[kVec];
      load_x(x, std::size_t(cu) * kVec, xv);
      if constexpr (kFp8) {
        const float sc = __ldg(srow + cu * kVec / kFp8Block);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          acc[r] = fmaf(dot_chunk(wv[u][r], xv, static_cast<W*>(nullptr)), sc, acc[r]);
      } else {
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += dot_chunk(wv[u][r], xv, static_cast<W*>(nullptr));
      }
    }
  }
  for (; c < nchunk; c += kWarpSize) {  // tail: fewer than kUnroll chunks per lane left
    float xv[kVec];
    load_x(x, std::size_t(c) * kVec, xv);
    const float sc = kFp8 ? __ldg(srow + c * kVec / kFp8Block) : 1.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      acc[r] = fmaf(
          dot_chunk(load_stream16(wr[r] + std::size_t(c) * kVec), xv, static_cast<W*>(nullptr)), sc,
          acc[r]);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0 && row0 + r < out) y[row0 + r] = v;
  }
}

// Any shape and alignment: one warp per row, one element per lane per step.
template <class W, class X>
__global__ void gemv_rowwise_kernel(const W* __restrict__ w, std::size_t ldw,
                                    const float* __restrict__ scale_inv, std::size_t ld_scale,
                                    const X* __restrict__ x, float* __restrict__ y, int out,
                                    int in) {
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

// Enqueues y = W x; returns the launch's error (cudaSuccess or a configuration error).
// Chooses the 16-byte kernel when the rows allow it.
template <class W, class X, int kRows = GemvDefaults<W>::kRows,
          int kUnroll = GemvDefaults<W>::kUnroll, int kWarps = GemvDefaults<W>::kWarps>
cudaError_t launch_gemv(const W* w, std::size_t ldw, const float* scale_inv, const X* x, float* y,
                        int out, int in, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(W);
  const std::size_t ld_scale = (std::size_t(in) + kFp8Block - 1) / kFp8Block;
  if (out <= 0) return cudaSuccess;
  const bool vec = in % kVec == 0 && (ldw * sizeof(W)) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(w) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
  if (vec) {
    const int rows_per_block = kRows * kWarps;
    gemv_vec_kernel<W, X, kRows, kUnroll, kWarps>
        <<<(out + rows_per_block - 1) / rows_per_block, kWarps * kWarpSize, 0, stream>>>(
            w, ldw, scale_inv, ld_scale, x, y, out, in);
  } else {
    constexpr int kRowWarps = 4;
    gemv_rowwise_kernel<W, X>
        <<<(out + kRowWarps - 1) / kRowWarps, kRowWarps * kWarpSize, 0, stream>>>(
            w, ldw, scale_inv, ld_scale, x, y, out, in);
  }
  return cudaGetLastError();
}

}  // namespace tmoe::cuda
