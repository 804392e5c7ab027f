// tmoe/backend/cpu/norm.hpp: SIMD row normalizations (RMSNorm, LayerNorm), the NormKernels family.
//
//   rms_norm:   y = w * (x * r),  r = 1 / sqrt(mean(x^2) + eps)
//   layer_norm: y = w * ((x - mean) * r) + b,  r = 1 / sqrt(mean((x - mean)^2) + eps)
// x, y: one contiguous float32 row of n values (y may alias x); w, b: the weight row in its
// stored type (float / bf16 / f16), widened inside the loop. Statistics in float32 with
// 4 independent accumulators (order differs from the reference's left-to-right double sum).
// With hf_bf16 set, rms_norm rounds like Hugging Face's bf16 module: y = bf16(w * bf16(x * r))
// (scalar path; only for parity experiments).
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "tmoe/backend/cpu/simd.hpp"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cpu {

template <class WT>
using RmsNormFn = void (*)(const float* x, const WT* w, float* y, std::size_t n, float eps,
                           bool hf_bf16);
template <class WT>
using LayerNormFn = void (*)(const float* x, const WT* w, const WT* b, float* y, std::size_t n,
                             float eps);

struct NormKernels {
  RmsNormFn<float> rms_norm_f32;
  RmsNormFn<bf16> rms_norm_bf16;
  RmsNormFn<f16> rms_norm_f16;
  LayerNormFn<float> layer_norm_f32;
  LayerNormFn<bf16> layer_norm_bf16;
  LayerNormFn<f16> layer_norm_f16;
};

// Widening loads shared by the layer kernels: L values of any weight type as a float batch.
template <class Arch>
struct WidenLoad {
  using B = fbatch<Arch>;
  static constexpr std::size_t L = B::size;
  static TMOE_INLINE B load(const float* p) { return B::load_unaligned(p); }
  // bf16 -> float is a 16-bit left shift; f16 uses the F16C conversion. Raw intrinsics only
  // when this translation unit's flags enable them (the per-ISA TUs), else a scalar widen.
  template <class WT>
  static TMOE_INLINE B load(const WT* p) {
#if defined(__AVX512F__)
    if constexpr (L == 16 && std::is_same_v<WT, bf16>) {
      const __m512i u =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return B(_mm512_castsi512_ps(_mm512_slli_epi32(u, 16)));
    }
    if constexpr (L == 16 && std::is_same_v<WT, f16>)
      return B(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#endif
#if defined(__AVX2__)
    if constexpr (L == 8 && std::is_same_v<WT, bf16>) {
      const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return B(_mm256_castsi256_ps(_mm256_slli_epi32(u, 16)));
    }
#endif
#if defined(__F16C__)
    if constexpr (L == 8 && std::is_same_v<WT, f16>)
      return B(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
    alignas(64) float f[L];
    for (std::size_t j = 0; j < L; ++j) f[j] = to_float(p[j]);
    return B::load_aligned(f);
  }
};

template <class Arch>
struct NormImpl {
  using B = fbatch<Arch>;
  using W = WidenLoad<Arch>;
  static constexpr std::size_t L = B::size;

  static TMOE_INLINE float sum(const float* x, std::size_t n, float shift) {
    B a0(0.f), a1(0.f);
    const B s(shift);
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      a0 += B::load_unaligned(x + i) - s;
      a1 += B::load_unaligned(x + i + L) - s;
    }
    for (; i + L <= n; i += L) a0 += B::load_unaligned(x + i) - s;
    float r = reduce_add(a0 + a1);
    for (; i < n; ++i) r += x[i] - shift;
    return r;
  }
  static TMOE_INLINE float sum_sq(const float* x, std::size_t n, float shift) {
    B a0(0.f), a1(0.f);
    const B s(shift);
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const B d0 = B::load_unaligned(x + i) - s, d1 = B::load_unaligned(x + i + L) - s;
      a0 = xsimd::fma(d0, d0, a0);
      a1 = xsimd::fma(d1, d1, a1);
    }
    for (; i + L <= n; i += L) {
      const B d = B::load_unaligned(x + i) - s;
      a0 = xsimd::fma(d, d, a0);
    }
    float r = reduce_add(a0 + a1);
    for (; i < n; ++i) r += (x[i] - shift) * (x[i] - shift);
    return r;
  }

  template <class WT>
  static void rms_norm(const float* x, const WT* w, float* y, std::size_t n, float eps,
                       bool hf_bf16) {
    const float r = 1.0f / std::sqrt(sum_sq(x, n, 0.f) / static_cast<float>(n) + eps);
    if (hf_bf16) {
      for (std::size_t i = 0; i < n; ++i)
        y[i] = round_to<bf16>(to_float(w[i]) * round_to<bf16>(x[i] * r));
      return;
    }
    const B br(r);
    std::size_t i = 0;
    for (; i + L <= n; i += L)
      (W::load(w + i) * (B::load_unaligned(x + i) * br)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = to_float(w[i]) * (x[i] * r);
  }

  template <class WT>
  static void layer_norm(const float* x, const WT* w, const WT* b, float* y, std::size_t n,
                         float eps) {
    const float mean = sum(x, n, 0.f) / static_cast<float>(n);
    const float r = 1.0f / std::sqrt(sum_sq(x, n, mean) / static_cast<float>(n) + eps);
    const B br(r), bm(mean);
    std::size_t i = 0;
    for (; i + L <= n; i += L) {
      B v = W::load(w + i) * ((B::load_unaligned(x + i) - bm) * br);
      if (b) v += W::load(b + i);
      v.store_unaligned(y + i);
    }
    for (; i < n; ++i) y[i] = to_float(w[i]) * ((x[i] - mean) * r) + (b ? to_float(b[i]) : 0.f);
  }
};

template <class Arch>
NormKernels make_norm_kernels() {
  using I = NormImpl<Arch>;
  return {&I::template rms_norm<float>,  &I::template rms_norm<bf16>,
          &I::template rms_norm<f16>,    &I::template layer_norm<float>,
          &I::template layer_norm<bf16>, &I::template layer_norm<f16>};
}

template <class WT>
RmsNormFn<WT> rms_norm_fn(const NormKernels& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.rms_norm_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.rms_norm_bf16;
  else if constexpr (std::is_same_v<WT, f16>)
    return k.rms_norm_f16;
  else
    static_assert(sizeof(WT) == 0, "rms_norm: unsupported weight type");
}
template <class WT>
LayerNormFn<WT> layer_norm_fn(const NormKernels& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.layer_norm_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.layer_norm_bf16;
  else if constexpr (std::is_same_v<WT, f16>)
    return k.layer_norm_f16;
  else
    static_assert(sizeof(WT) == 0, "layer_norm: unsupported weight type");
}

}  // namespace tmoe::cpu
