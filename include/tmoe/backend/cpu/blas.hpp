// tmoe/backend/cpu/blas.hpp: dense matrix products for Linear layers on the CPU.
//
//   matmul(pool, W, X, Y, bias):  Y[t, o] = sum_i X[t, i] * W[o, i] + bias[o]
//     W: (out, in) row-major, float / bf16 / f16, exactly as PyTorch checkpoints store it
//     X: (T, in) float, Y: (T, out) float, bias: (out) float or nullptr
//   T == 1 is the decode GEMV (memory bound: every weight byte read once); T > 1 is the prefill
//   GEMM. Rows of W are split across the pool's threads.
//
// The per-ISA kernels live in BlasKernels (a family of the KernelTable): one contiguous SIMD loop
// per weight row, weights widened to float inside the loop, float32 accumulation.
#pragma once

#include <cstddef>
#include <type_traits>

#include "tmoe/backend/cpu/simd.hpp"
#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"

namespace tmoe::cpu {

// y[t*ldy + o] = dot(W row o, x row t) for o in [o_begin, o_end), t in [0, T).
template <class WT>
using MatmulRowsFn = void (*)(const WT* w, std::size_t ldw, const float* x, std::size_t ldx,
                              float* y, std::size_t ldy, std::size_t in, std::size_t T,
                              std::size_t o_begin, std::size_t o_end);

struct BlasKernels {
  MatmulRowsFn<float> matmul_rows_f32;
  MatmulRowsFn<bf16> matmul_rows_bf16;
  MatmulRowsFn<f16> matmul_rows_f16;
};

template <class Arch>
struct BlasImpl {
  using B = fbatch<Arch>;
  static constexpr std::size_t L = B::size;

  // Widen L weights starting at p to a float batch.
  static TMOE_INLINE B load_w(const float* p) { return B::load_unaligned(p); }
  static TMOE_INLINE B load_w(const bf16* p) {
    alignas(64) float f[L];
    for (std::size_t j = 0; j < L; ++j) f[j] = p[j].to_float();
    return B::load_aligned(f);
  }
  static TMOE_INLINE B load_w(const f16* p) {
    alignas(64) float f[L];
    for (std::size_t j = 0; j < L; ++j) f[j] = p[j].to_float();
    return B::load_aligned(f);
  }

  template <class WT>
  static void matmul_rows(const WT* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
                          std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                          std::size_t o_end) {
    for (std::size_t o = o_begin; o < o_end; ++o) {
      const WT* wr = w + o * ldw;
      for (std::size_t t = 0; t < T; ++t) {
        const float* xr = x + t * ldx;
        B acc0(0.f), acc1(0.f);
        std::size_t i = 0;
        for (; i + 2 * L <= in; i += 2 * L) {
          acc0 = xsimd::fma(load_w(wr + i), B::load_unaligned(xr + i), acc0);
          acc1 = xsimd::fma(load_w(wr + i + L), B::load_unaligned(xr + i + L), acc1);
        }
        for (; i + L <= in; i += L) acc0 = xsimd::fma(load_w(wr + i), B::load_unaligned(xr + i), acc0);
        float s = reduce_add(acc0 + acc1);
        for (; i < in; ++i) s += to_float(wr[i]) * xr[i];
        y[t * ldy + o] = s;
      }
    }
  }
};

template <class Arch>
BlasKernels make_blas_kernels() {
  using I = BlasImpl<Arch>;
  return {&I::template matmul_rows<float>, &I::template matmul_rows<bf16>,
          &I::template matmul_rows<f16>};
}

}  // namespace tmoe::cpu
