// tmoe/backend/cpu/blas.hpp: dense matrix products for Linear layers on the CPU.
//
//   matmul(pool, W, X, Y, bias):  Y[t, o] = sum_i X[t, i] * W[o, i] + bias[o]
//     W: (out, in) row-major, float / bf16 / f16, exactly as PyTorch checkpoints store it
//     X: (T, in) float, Y: (T, out) float, bias: (out) float or nullptr
//
// Two kernels behind one entry point (BlasKernels::matmul_rows_*, chosen by T):
//  - T < kGemmMinRows: the decode GEMV. Memory bound, so every weight byte is read exactly once:
//    kGemvRows rows of W at a time share each load of x, weights are widened to float inside the
//    SIMD loop (bf16: zero-extend 16 -> 32 bits and shift left by 16; f16: F16C vcvtph2ps on
//    AVX2 and above), float32 accumulation. On avx512_vnni_bf16 the bf16 GEMV uses vdpbf16ps with
//    x split into three bf16 terms (x = hi + mid + lo, exact to ~2^-24 relative), so the result
//    keeps float32 accuracy while the weights are never widened.
//  - T >= kGemmMinRows: the prefill GEMM. Cache-blocked (KC along `in`, NC rows of W, MC rows of
//    X) with an MR x NR register tile of dot products along `in`: both X and W are contiguous
//    along `in`, so W needs no transpose; a block of W (nc x kc) is converted to float once into
//    a packed per-thread buffer and reused by every row of X. Eigen's GEMM was not used: it
//    would be compiled into every per-ISA translation unit under the same symbol names.
//
// The per-ISA kernels live in BlasKernels (a family of the KernelTable). Rows [o_begin, o_end)
// of W are one thread's share; ops.hpp splits them.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

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

// From this many rows of X on, matmul runs the blocked GEMM instead of T GEMV passes.
inline constexpr std::size_t kGemmMinRows = 6;
// Rows of W a thread's share should be a multiple of (GEMM column blocks; ops.hpp splits by it).
inline constexpr std::size_t kGemmRowGrain = 64;

namespace detail {
// A growable, 64-byte aligned scratch buffer of floats (one per thread and kernel family).
struct ScratchBuffer {
  std::unique_ptr<float[], void (*)(float*)> p{
      nullptr, [](float* q) { ::operator delete[](q, std::align_val_t{64}); }};
  std::size_t n = 0;
  float* get(std::size_t want) {
    if (want > n) {
      p.reset(static_cast<float*>(::operator new[](want * sizeof(float), std::align_val_t{64})));
      n = want;
    }
    return p.get();
  }
};
}  // namespace detail

template <class Arch>
struct BlasImpl {
  using B = fbatch<Arch>;
  static constexpr std::size_t L = B::size;
  static constexpr bool kAvx512 = std::is_base_of_v<xsimd::avx512f, Arch>;
  static constexpr bool kAvx2 = std::is_base_of_v<xsimd::avx2, Arch>;
  static constexpr bool kSse2 = std::is_base_of_v<xsimd::sse2, Arch> && L == 4;

  // ---- widening loads: L weights starting at p to a float batch ------------------------------
  static TMOE_INLINE B load_w(const float* p) { return B::load_unaligned(p); }

  // bf16 is the top half of a float: widen each 16-bit pattern to 32 bits, shift left by 16.
  static TMOE_INLINE B load_w(const bf16* p) {
    if constexpr (false) {
    }
#if defined(__AVX512F__)
    else if constexpr (kAvx512) {
      const __m512i v =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return B(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
#endif
#if defined(__AVX2__)
    else if constexpr (kAvx2 && L == 8) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return B(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
#endif
#if defined(__SSE2__)
    else if constexpr (kSse2) {
      // Interleaving zeros below each 16-bit pattern is the shift by 16.
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      return B(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), v)));
    }
#endif
    else {
      alignas(64) float f[L];
      for (std::size_t j = 0; j < L; ++j) f[j] = p[j].to_float();
      return B::load_aligned(f);
    }
  }

  // f16: F16C (AVX2 level and above) converts 8 or 16 halves per instruction.
  static TMOE_INLINE B load_w(const f16* p) {
    if constexpr (false) {
    }
#if defined(__AVX512F__)
    else if constexpr (kAvx512) {
      return B(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
    }
#endif
#if defined(__AVX2__) && defined(__F16C__)
    else if constexpr (kAvx2 && L == 8) {
      return B(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
#endif
    else {
      alignas(64) float f[L];
      for (std::size_t j = 0; j < L; ++j) f[j] = p[j].to_float();
      return B::load_aligned(f);
    }
  }

  // ---- decode GEMV ----------------------------------------------------------------------------
  static constexpr std::size_t kGemvRows = 4;

  // out[r] = dot(w + r*ldw, x) for r < R, over n elements; x loads shared by the R rows.
  template <std::size_t R, class WT>
  static TMOE_INLINE void dot_rows(const WT* w, std::size_t ldw, const float* x, std::size_t n,
                                   float* out) {
    B a[R], b[R];
    for (std::size_t r = 0; r < R; ++r) a[r] = b[r] = B(0.f);
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const B x0 = B::load_unaligned(x + i), x1 = B::load_unaligned(x + i + L);
      for (std::size_t r = 0; r < R; ++r) {
        a[r] = xsimd::fma(load_w(w + r * ldw + i), x0, a[r]);
        b[r] = xsimd::fma(load_w(w + r * ldw + i + L), x1, b[r]);
      }
    }
    if (i + L <= n) {
      const B x0 = B::load_unaligned(x + i);
      for (std::size_t r = 0; r < R; ++r) a[r] = xsimd::fma(load_w(w + r * ldw + i), x0, a[r]);
      i += L;
    }
    for (std::size_t r = 0; r < R; ++r) {
      float s = reduce_add(a[r] + b[r]);
      for (std::size_t j = i; j < n; ++j) s += to_float(w[r * ldw + j]) * x[j];
      out[r] = s;
    }
  }

  template <class WT>
  static void gemv(const WT* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
                   std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                   std::size_t o_end) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if constexpr (kAvx512 && std::is_same_v<WT, bf16>) {
      gemv_bf16_dp(w, ldw, x, ldx, y, ldy, in, T, o_begin, o_end);
      return;
    }
#endif
    std::size_t o = o_begin;
    float s[kGemvRows];
    for (; o + kGemvRows <= o_end; o += kGemvRows)
      for (std::size_t t = 0; t < T; ++t) {
        dot_rows<kGemvRows>(w + o * ldw, ldw, x + t * ldx, in, s);
        for (std::size_t r = 0; r < kGemvRows; ++r) y[t * ldy + o + r] = s[r];
      }
    for (; o < o_end; ++o)
      for (std::size_t t = 0; t < T; ++t) {
        dot_rows<1>(w + o * ldw, ldw, x + t * ldx, in, s);
        y[t * ldy + o] = s[0];
      }
  }

#if defined(__AVX512BF16__) && defined(__AVX512F__)
  // bf16 GEMV with vdpbf16ps: lane j of acc += w[2j] * x[2j] + w[2j+1] * x[2j+1], products of two
  // bf16 exact in float. x = hi + mid + lo (each bf16, the residual below 2^-24 |x|), three dot
  // products per weight load; subnormal x parts (|x| < 1e-38) are flushed by the instruction.
  static void gemv_bf16_dp(const bf16* w, std::size_t ldw, const float* x, std::size_t ldx,
                           float* y, std::size_t ldy, std::size_t in, std::size_t T,
                           std::size_t o_begin, std::size_t o_end) {
    thread_local detail::ScratchBuffer scratch;
    bf16* parts = reinterpret_cast<bf16*>(scratch.get((3 * in + 1) / 2 + 16));
    constexpr std::size_t kStep = 32;
    const std::size_t n32 = in / kStep * kStep;
    for (std::size_t t = 0; t < T; ++t) {
      const float* xr = x + t * ldx;
      for (std::size_t i = 0; i < in; ++i) {
        const bf16 hi = bf16::from_float(xr[i]);
        const float r1 = xr[i] - hi.to_float();
        const bf16 mid = bf16::from_float(r1);
        parts[i] = hi;
        parts[in + i] = mid;
        parts[2 * in + i] = bf16::from_float(r1 - mid.to_float());
      }
      auto ld = [](const void* p) { return (__m512bh)_mm512_loadu_si512(p); };
      std::size_t o = o_begin;
      for (; o < o_end; o += 4) {
        const std::size_t R = std::min<std::size_t>(4, o_end - o);
        __m512 acc[4][3];
        for (auto& a : acc) a[0] = a[1] = a[2] = _mm512_setzero_ps();
        for (std::size_t i = 0; i < n32; i += kStep) {
          const __m512bh h = ld(parts + i), m = ld(parts + in + i), l = ld(parts + 2 * in + i);
          for (std::size_t r = 0; r < R; ++r) {
            const __m512bh wv = ld(w + (o + r) * ldw + i);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], wv, h);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], wv, m);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], wv, l);
          }
        }
        for (std::size_t r = 0; r < R; ++r) {
          float s =
              _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], _mm512_add_ps(acc[r][1], acc[r][2])));
          for (std::size_t i = n32; i < in; ++i) s += w[(o + r) * ldw + i].to_float() * xr[i];
          y[t * ldy + o + r] = s;
        }
      }
    }
  }
#endif

  // ---- prefill GEMM ---------------------------------------------------------------------------
  // Register tile: MR rows of X times NR rows of W, one accumulator batch per pair, summed along
  // `in`. MR * NR accumulators + MR x batches + 1 w batch must fit the register file (16 on
  // SSE2/AVX2, 32 on AVX-512).
  static constexpr std::size_t MR = kAvx512 ? 4 : 3;
  static constexpr std::size_t NR = kAvx512 ? 6 : 4;
  static constexpr std::size_t KC = 512;      // W micro-panel NR x KC + X micro-panel MR x KC in L1
  static constexpr std::size_t MC = 32 * MR;  // X block MC x KC in L2
  static constexpr std::size_t NC = kGemmRowGrain;  // packed W block NC x KC (float) in L2

  // y[m*ldy + n] (+)= dot(x row m, w row n) over kc elements, for m < M, n < N.
  template <std::size_t M, std::size_t N>
  static void tile(const float* x, std::size_t ldx, const float* w, std::size_t ldw, float* y,
                   std::size_t ldy, std::size_t kc, bool accumulate) {
    B acc[M][N];
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t n = 0; n < N; ++n) acc[m][n] = B(0.f);
    std::size_t k = 0;
    for (; k + L <= kc; k += L) {
      B xv[M];
      for (std::size_t m = 0; m < M; ++m) xv[m] = B::load_unaligned(x + m * ldx + k);
      for (std::size_t n = 0; n < N; ++n) {
        const B wv = B::load_unaligned(w + n * ldw + k);
        for (std::size_t m = 0; m < M; ++m) acc[m][n] = xsimd::fma(xv[m], wv, acc[m][n]);
      }
    }
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t n = 0; n < N; ++n) {
        float s = reduce_add(acc[m][n]);
        for (std::size_t j = k; j < kc; ++j) s += x[m * ldx + j] * w[n * ldw + j];
        float& d = y[m * ldy + n];
        d = accumulate ? d + s : s;
      }
  }

  using TileFn = void (*)(const float*, std::size_t, const float*, std::size_t, float*, std::size_t,
                          std::size_t, bool);
  template <std::size_t... I>
  static constexpr std::array<TileFn, sizeof...(I)> make_tiles(std::index_sequence<I...>) {
    return {&tile<I / NR + 1, I % NR + 1>...};
  }
  // kTiles[(m-1)*NR + (n-1)] handles an m x n tile (edges of the blocks use the smaller ones).
  static constexpr auto kTiles = make_tiles(std::make_index_sequence<MR * NR>{});

  // Converts rows [0, nc) x columns [0, kc) of W (row stride ldw) to float, row stride kc.
  template <class WT>
  static void pack_w(const WT* w, std::size_t ldw, std::size_t nc, std::size_t kc, float* dst) {
    for (std::size_t r = 0; r < nc; ++r) {
      const WT* src = w + r * ldw;
      float* d = dst + r * kc;
      std::size_t k = 0;
      for (; k + L <= kc; k += L) load_w(src + k).store_unaligned(d + k);
      for (; k < kc; ++k) d[k] = to_float(src[k]);
    }
  }

  template <class WT>
  static void gemm(const WT* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
                   std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                   std::size_t o_end) {
    if (in == 0) {
      for (std::size_t t = 0; t < T; ++t)
        std::fill(y + t * ldy + o_begin, y + t * ldy + o_end, 0.f);
      return;
    }
    thread_local detail::ScratchBuffer scratch;
    float* wp = scratch.get(NC * KC);
    for (std::size_t pc = 0; pc < in; pc += KC) {
      const std::size_t kc = std::min(KC, in - pc);
      for (std::size_t jc = o_begin; jc < o_end; jc += NC) {
        const std::size_t nc = std::min(NC, o_end - jc);
        pack_w(w + jc * ldw + pc, ldw, nc, kc, wp);  // (nc, kc)
        for (std::size_t ic = 0; ic < T; ic += MC) {
          const std::size_t mc = std::min(MC, T - ic);
          for (std::size_t jr = 0; jr < nc; jr += NR) {
            const std::size_t nr = std::min(NR, nc - jr);
            for (std::size_t ir = 0; ir < mc; ir += MR) {
              const std::size_t mr = std::min(MR, mc - ir);
              kTiles[(mr - 1) * NR + (nr - 1)](x + (ic + ir) * ldx + pc, ldx, wp + jr * kc, kc,
                                               y + (ic + ir) * ldy + jc + jr, ldy, kc, pc > 0);
            }
          }
        }
      }
    }
  }

  template <class WT>
  static void matmul_rows(const WT* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
                          std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                          std::size_t o_end) {
    if (T >= kGemmMinRows)
      gemm(w, ldw, x, ldx, y, ldy, in, T, o_begin, o_end);
    else
      gemv(w, ldw, x, ldx, y, ldy, in, T, o_begin, o_end);
  }
};

template <class Arch>
BlasKernels make_blas_kernels() {
  using I = BlasImpl<Arch>;
  return {&I::template matmul_rows<float>, &I::template matmul_rows<bf16>,
          &I::template matmul_rows<f16>};
}

}  // namespace tmoe::cpu
