// tmoe/backend/cpu/vec.hpp: SIMD vector kernels used by the layers (the VecKernels family):
//
//   silu_mul: y[i] = silu(g[i]) * u[i],  silu(g) = g / (1 + exp(-g))      (SwiGLU gating)
//   add:      y[i] += x[i]                                                (residual add)
//   axpy:     y[i] += a * w[i]   (w float / bf16 / f16, widened in the loop; MoE combine,
//                                 MLA query absorption q_lat += q_nope[d] * W_UK[d, :])
//   dot:      sum_i w[i] * x[i]  (w float / bf16 / f16; MLA value up-projection W_UV ctx)
// All rows contiguous; float32 arithmetic.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "tmoe/backend/cpu/norm.hpp"
#include "tmoe/backend/cpu/simd.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cpu {

template <class WT>
using AxpyFn = void (*)(float a, const WT* w, float* y, std::size_t n);
template <class WT>
using DotFn = float (*)(const WT* w, const float* x, std::size_t n);

struct VecKernels {
  void (*silu_mul)(const float* g, const float* u, float* y, std::size_t n);
  void (*add)(const float* x, float* y, std::size_t n);
  AxpyFn<float> axpy_f32;
  AxpyFn<bf16> axpy_bf16;
  AxpyFn<f16> axpy_f16;
  DotFn<float> dot_f32;
  DotFn<bf16> dot_bf16;
  DotFn<f16> dot_f16;
};

template <class Arch>
struct VecImpl {
  using B = fbatch<Arch>;
  using W = WidenLoad<Arch>;
  static constexpr std::size_t L = B::size;

  static void silu_mul(const float* g, const float* u, float* y, std::size_t n) {
    const B one(1.f);
    std::size_t i = 0;
    for (; i + L <= n; i += L) {
      const B gv = B::load_unaligned(g + i);
      (gv / (one + xsimd::exp(-gv)) * B::load_unaligned(u + i)).store_unaligned(y + i);
    }
    for (; i < n; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
  static void add(const float* x, float* y, std::size_t n) {
    std::size_t i = 0;
    for (; i + L <= n; i += L)
      (B::load_unaligned(y + i) + B::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += x[i];
  }
  template <class WT>
  static void axpy(float a, const WT* w, float* y, std::size_t n) {
    const B ba(a);
    std::size_t i = 0;
    for (; i + L <= n; i += L)
      xsimd::fma(ba, W::load(w + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += a * to_float(w[i]);
  }
  template <class WT>
  static float dot(const WT* w, const float* x, std::size_t n) {
    B a0(0.f), a1(0.f);
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      a0 = xsimd::fma(W::load(w + i), B::load_unaligned(x + i), a0);
      a1 = xsimd::fma(W::load(w + i + L), B::load_unaligned(x + i + L), a1);
    }
    for (; i + L <= n; i += L) a0 = xsimd::fma(W::load(w + i), B::load_unaligned(x + i), a0);
    float s = reduce_add(a0 + a1);
    for (; i < n; ++i) s += to_float(w[i]) * x[i];
    return s;
  }
};

template <class Arch>
VecKernels make_vec_kernels() {
  using I = VecImpl<Arch>;
  return {&I::silu_mul,
          &I::add,
          &I::template axpy<float>,
          &I::template axpy<bf16>,
          &I::template axpy<f16>,
          &I::template dot<float>,
          &I::template dot<bf16>,
          &I::template dot<f16>};
}

template <class WT>
AxpyFn<WT> axpy_fn(const VecKernels& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.axpy_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.axpy_bf16;
  else if constexpr (std::is_same_v<WT, f16>)
    return k.axpy_f16;
  else
    static_assert(sizeof(WT) == 0, "axpy: unsupported weight type");
}
template <class WT>
DotFn<WT> dot_fn(const VecKernels& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.dot_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.dot_bf16;
  else if constexpr (std::is_same_v<WT, f16>)
    return k.dot_f16;
  else
    static_assert(sizeof(WT) == 0, "dot: unsupported weight type");
}

}  // namespace tmoe::cpu
