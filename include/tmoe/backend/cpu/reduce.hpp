// tmoe/backend/cpu/reduce.hpp: SIMD reductions over contiguous float rows: sum, max, sum of
// squares, dot product, and the numerically safe row softmax (max-subtracted, float32 sums).
//
// One contiguous linear loop per row with 4 independent accumulators (to hide FMA latency), then
// a scalar tail. Summation order therefore differs from the reference's left-to-right order; the
// tests bound the difference by n * eps * sum(|x|).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include "tmoe/backend/cpu/simd.hpp"

namespace tmoe::cpu {

struct ReduceKernels {
  float (*sum)(const float* x, std::size_t n);
  float (*max)(const float* x, std::size_t n);
  float (*sum_squares)(const float* x, std::size_t n);
  float (*dot)(const float* a, const float* b, std::size_t n);
  // In place: x = exp(x - max(x)) / sum(exp(x - max(x))).
  void (*softmax)(float* x, std::size_t n);
};

template <class Arch>
struct ReduceImpl {
  using B = fbatch<Arch>;
  static constexpr std::size_t L = B::size;

  static float sum(const float* x, std::size_t n) {
    B a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    std::size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      a0 += B::load_unaligned(x + i);
      a1 += B::load_unaligned(x + i + L);
      a2 += B::load_unaligned(x + i + 2 * L);
      a3 += B::load_unaligned(x + i + 3 * L);
    }
    for (; i + L <= n; i += L) a0 += B::load_unaligned(x + i);
    float s = reduce_add((a0 + a1) + (a2 + a3));
    for (; i < n; ++i) s += x[i];
    return s;
  }

  static float max(const float* x, std::size_t n) {
    float m = -std::numeric_limits<float>::infinity();
    std::size_t i = 0;
    if (n >= L) {
      B a(m);
      for (; i + L <= n; i += L) a = xsimd::max(a, B::load_unaligned(x + i));
      m = reduce_max(a);
    }
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }

  static float sum_squares(const float* x, std::size_t n) { return dot(x, x, n); }

  static float dot(const float* a, const float* b, std::size_t n) {
    B s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    std::size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      s0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), s0);
      s1 = xsimd::fma(B::load_unaligned(a + i + L), B::load_unaligned(b + i + L), s1);
      s2 = xsimd::fma(B::load_unaligned(a + i + 2 * L), B::load_unaligned(b + i + 2 * L), s2);
      s3 = xsimd::fma(B::load_unaligned(a + i + 3 * L), B::load_unaligned(b + i + 3 * L), s3);
    }
    for (; i + L <= n; i += L) s0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), s0);
    float s = reduce_add((s0 + s1) + (s2 + s3));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }

  static void softmax(float* x, std::size_t n) {
    if (n == 0) return;
    const float m = max(x, n);
    std::size_t i = 0;
    B acc(0.f);
    const B bm(m);
    for (; i + L <= n; i += L) {
      B e = xsimd::exp(B::load_unaligned(x + i) - bm);
      e.store_unaligned(x + i);
      acc += e;
    }
    float s = reduce_add(acc);
    for (; i < n; ++i) {
      x[i] = std::exp(x[i] - m);
      s += x[i];
    }
    const B inv(1.0f / s);
    for (i = 0; i + L <= n; i += L) (B::load_unaligned(x + i) * inv).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= 1.0f / s;
  }
};

template <class Arch>
ReduceKernels make_reduce_kernels() {
  using I = ReduceImpl<Arch>;
  return {&I::sum, &I::max, &I::sum_squares, &I::dot, &I::softmax};
}

}  // namespace tmoe::cpu
