// tmoe/backend/cpu/blas.hpp: dense matrix products for Linear layers on the CPU.
//
//   matmul(pool, W, X, Y, bias):  Y[t, o] = sum_i X[t, i] * W[o, i] + bias[o]
//     W: (out, in) row-major, float / bf16 / f16, exactly as PyTorch checkpoints store it
//     X: (T, in) float, Y: (T, out) float, bias: (out) float or nullptr
//
// Two kernels behind one entry point (BlasKernels::matmul_rows_*, chosen by T):
//  - T < kGemmMinRows: the decode GEMV. Memory bound, so every weight byte is read exactly once:
//    kGemvRows rows of W at a time share each load of x, weights are widened to float inside the
//    SIMD loop, float32 accumulation. bf16: a 32-bit lane holds a pair of weights; shifting it
//    left by 16 gives the even one as a float, masking the low half gives the odd one, against x
//    deinterleaved once per call. f16: F16C vcvtph2ps on AVX2 and above (scalar on SSE2). On
//    avx512_vnni_bf16 the bf16 GEMV uses vdpbf16ps with x split into three bf16 terms (x = hi + mid
//    + lo, exact to ~2^-24 relative), so the result keeps float32 accuracy while the weights are
//    never widened.
//  - T >= kGemmMinRows: the prefill GEMM. Cache-blocked (KC along `in`, NC rows of W, MC rows of
//    X) with an MR x 2L register tile of outer products (6 x 16 on AVX2): per step along `in`,
//    two batches of a packed (transposed) W column and MR broadcasts of X, accumulators along
//    `out`, so a tile row is stored as contiguous floats with no horizontal sums. A block of W
//    (nc x kc) is converted to float and transposed once into a packed per-thread buffer
//    (micro-panels, see pack_w()) and reused by every row of X; X is packed once per call
//    (gemm_pack_x, shared by the threads; matmul_rows packs it itself).
//    Eigen's GEMM was not used: it would be compiled into every per-ISA translation unit under
//    the same symbol names (docs/performance.md).
//
// The per-ISA kernels live in BlasKernels (a family of the KernelTable). Rows [o_begin, o_end)
// of W are one chunk of work; ops.hpp splits them across the pool (the GEMM through
// gemm_row_chunks below: chunks that shrink towards the end).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

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

// The prefill GEMM over X packed once for all threads (gemm_pack_x): rows [o_begin, o_end) of W.
template <class WT>
using GemmPackedFn = void (*)(const WT* w, std::size_t ldw, const float* xp, float* y,
                              std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                              std::size_t o_end);

struct BlasKernels {
  // Any T: GEMV for T < kGemmMinRows, else the GEMM (packing X itself).
  MatmulRowsFn<float> matmul_rows_f32;
  MatmulRowsFn<bf16> matmul_rows_bf16;
  MatmulRowsFn<f16> matmul_rows_f16;
  // GEMM in two phases: floats of packed X for (T, in); pack part `part` of `parts` of X into xp
  // (the parts together cover it); then the products over that packed X.
  std::size_t (*gemm_x_size)(std::size_t T, std::size_t in);
  void (*gemm_pack_x)(const float* x, std::size_t ldx, std::size_t T, std::size_t in, float* xp,
                      std::size_t part, std::size_t parts);
  GemmPackedFn<float> gemm_packed_f32;
  GemmPackedFn<bf16> gemm_packed_bf16;
  GemmPackedFn<f16> gemm_packed_f16;
};

// From this many rows of X on, matmul runs the blocked GEMM instead of T GEMV passes.
inline constexpr std::size_t kGemmMinRows = 6;
// Rows of W a GEMM chunk is a multiple of (two 16-row micro-panels of the AVX2 tile): the
// smallest chunk, so the most one thread can be left waiting for at the end of a GEMM. 32 rows
// cost nothing measurable per chunk against 64 or 256 on one core (X re-read from L3 per chunk;
// docs/performance.md) and halve that wait against 64.
inline constexpr std::size_t kGemmRowGrain = 32;

// Runs fn(begin, end) over chunks of the `out` rows of W on the pool, largest first: each chunk
// is a quarter of what is left per thread, a multiple of kGemmRowGrain, at least that and at most
// kGemmMaxChunk rows (so that a chunk's packed W depth block, 256 rows x KC floats = 256 KiB,
// stays in L2 beside the X block); the chunks shrink to kGemmRowGrain rows at the end. The pool
// hands them out in order, so a thread that lost its core for a while (a shared machine) leaves
// the others small chunks to even out the finish instead of a 1/8 share. Each chunk packs its
// own rows of W; X is shared.
inline constexpr std::size_t kGemmMaxChunk = 256;

template <class F>
void gemm_row_chunks(ThreadPool& pool, std::size_t out, F&& fn) {
  thread_local std::vector<std::size_t> caller_bounds;
  std::vector<std::size_t>& bounds = caller_bounds;  // the workers must see this thread's copy
  bounds.assign(1, 0);
  const auto split = 2 * static_cast<std::size_t>(pool.size());
  for (std::size_t b = 0; b < out;) {
    std::size_t c =
        std::clamp((out - b) / split / kGemmRowGrain * kGemmRowGrain, kGemmRowGrain, kGemmMaxChunk);
    if (out - b < c + kGemmRowGrain) c = out - b;  // no sliver of less than a grain at the end
    bounds.push_back(b += c);
  }
  pool.run(bounds.size() - 1, [&](std::size_t i, int) { fn(bounds[i], bounds[i + 1]); });
}

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
    const WT* next = w + R * ldw;
    for (; i + 2 * L <= n; i += 2 * L) {
      if constexpr (R > 1) prefetch_span<R * 2 * L * sizeof(WT)>(next + R * i);
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
    if constexpr (std::is_same_v<WT, bf16> && kHasPairWiden) {
      gemv_bf16_pairs(w, ldw, x, ldx, y, ldy, in, T, o_begin, o_end);
      return;
    }
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

  // ---- bf16 GEMV on pairs: 2L weights per integer load ------------------------------------------
  // A 32-bit lane holding bf16 weights (w[2j], w[2j+1]) gives both as floats with one instruction
  // each: w[2j] = lane << 16, w[2j+1] = lane & 0xffff0000. x is deinterleaved to match once per
  // call (xd[blk][0..L) = even elements, xd[blk][L..2L) = odd), so the dot product needs no
  // shuffle at all: one load, one shift, one and, two FMAs per 2L weights.
#if defined(__AVX512F__)
  static constexpr bool kHasPairWiden = kAvx512 || (kAvx2 && L == 8) || kSse2;
#elif defined(__AVX2__)
  static constexpr bool kHasPairWiden = (kAvx2 && L == 8) || kSse2;
#elif defined(__SSE2__)
  static constexpr bool kHasPairWiden = kSse2;
#else
  static constexpr bool kHasPairWiden = false;
#endif

  static TMOE_INLINE void widen_pairs(const bf16* p, B& even, B& odd) {
    if constexpr (false) {
    }
#if defined(__AVX512F__)
    else if constexpr (kAvx512) {
      const __m512i v = _mm512_loadu_si512(p);
      even = B(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
      odd = B(_mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536))));
    }
#endif
#if defined(__AVX2__)
    else if constexpr (kAvx2 && L == 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      even = B(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      odd = B(_mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536))));
    }
#endif
#if defined(__SSE2__)
    else if constexpr (kSse2) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      even = B(_mm_castsi128_ps(_mm_slli_epi32(v, 16)));
      odd = B(_mm_castsi128_ps(_mm_and_si128(v, _mm_set1_epi32(-65536))));
    }
#endif
    else {
      alignas(64) float e[L], o[L];
      for (std::size_t j = 0; j < L; ++j)
        e[j] = p[2 * j].to_float(), o[j] = p[2 * j + 1].to_float();
      even = B::load_aligned(e);
      odd = B::load_aligned(o);
    }
  }

  static void gemv_bf16_pairs(const bf16* w, std::size_t ldw, const float* x, std::size_t ldx,
                              float* y, std::size_t ldy, std::size_t in, std::size_t T,
                              std::size_t o_begin, std::size_t o_end) {
    constexpr std::size_t S = 2 * L;  // weights per step
    const std::size_t nb = in / S * S;
    thread_local detail::ScratchBuffer scratch;
    float* xd = scratch.get(T * nb + 1);  // (T, nb), deinterleaved
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t i = 0; i < nb; i += S)
        for (std::size_t j = 0; j < L; ++j) {
          xd[t * nb + i + j] = x[t * ldx + i + 2 * j];
          xd[t * nb + i + L + j] = x[t * ldx + i + 2 * j + 1];
        }
    // Rows outer, T inner: a group of rows is read from memory once and from cache T - 1 times.
    for (std::size_t o = o_begin; o < o_end; o += kGemvRows) {
      const std::size_t R = std::min(kGemvRows, o_end - o);
      const bf16* wr = w + o * ldw;
      for (std::size_t t = 0; t < T; ++t) {
        float s[kGemvRows];
        if (R == kGemvRows)
          dot_pairs<kGemvRows>(wr, ldw, xd + t * nb, nb, s);
        else
          for (std::size_t r = 0; r < R; ++r)
            dot_pairs<1>(wr + r * ldw, ldw, xd + t * nb, nb, s + r);
        for (std::size_t r = 0; r < R; ++r) {
          for (std::size_t i = nb; i < in; ++i) s[r] += wr[r * ldw + i].to_float() * x[t * ldx + i];
          y[t * ldy + o + r] = s[r];
        }
      }
    }
  }

  template <std::size_t R>
  static TMOE_INLINE void dot_pairs(const bf16* w, std::size_t ldw, const float* xd, std::size_t nb,
                                    float* out) {
    B a[R], b[R];
    for (std::size_t r = 0; r < R; ++r) a[r] = b[r] = B(0.f);
    const bf16* next = w + R * ldw;
    for (std::size_t i = 0; i < nb; i += 2 * L) {
      if constexpr (R > 1) prefetch_span<R * 2 * L * sizeof(bf16)>(next + R * i);
      const B xe = B::load_unaligned(xd + i), xo = B::load_unaligned(xd + i + L);
      for (std::size_t r = 0; r < R; ++r) {
        B we, wo;
        widen_pairs(w + r * ldw + i, we, wo);
        a[r] = xsimd::fma(we, xe, a[r]);
        b[r] = xsimd::fma(wo, xo, b[r]);
      }
    }
    for (std::size_t r = 0; r < R; ++r) out[r] = reduce_add(a[r] + b[r]);
  }

#if defined(__AVX512BF16__) && defined(__AVX512F__)
  // bf16 GEMV with vdpbf16ps: lane j of acc += w[2j] * x[2j] + w[2j+1] * x[2j+1], products of two
  // bf16 exact in float. x = hi + mid + lo (each bf16, the residual below 2^-24 |x|), three dot
  // products per weight load; subnormal x parts (|x| < 1e-38) are flushed by the instruction.
  static void gemv_bf16_dp(const bf16* w, std::size_t ldw, const float* x, std::size_t ldx,
                           float* y, std::size_t ldy, std::size_t in, std::size_t T,
                           std::size_t o_begin, std::size_t o_end) {
    thread_local detail::ScratchBuffer scratch;
    // (T, 3, in): hi, mid, lo parts of every row of x.
    bf16* parts = reinterpret_cast<bf16*>(scratch.get((3 * T * in + 1) / 2 + 16));
    constexpr std::size_t kStep = 32;
    const std::size_t n32 = in / kStep * kStep;
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t i = 0; i < in; ++i) {
        const float v = x[t * ldx + i];
        const bf16 hi = bf16::from_float(v);
        const float r1 = v - hi.to_float();
        const bf16 mid = bf16::from_float(r1);
        bf16* pt = parts + 3 * t * in;
        pt[i] = hi;
        pt[in + i] = mid;
        pt[2 * in + i] = bf16::from_float(r1 - mid.to_float());
      }
    auto ld = [](const void* p) { return (__m512bh)_mm512_loadu_si512(p); };
    // Rows outer, T inner: a group of rows is read from memory once.
    for (std::size_t o = o_begin; o < o_end; o += 4) {
      const std::size_t R = std::min<std::size_t>(4, o_end - o);
      for (std::size_t t = 0; t < T; ++t) {
        const bf16* pt = parts + 3 * t * in;
        __m512 acc[4][3];
        for (auto& a : acc) a[0] = a[1] = a[2] = _mm512_setzero_ps();
        for (std::size_t i = 0; i < n32; i += kStep) {
          const __m512bh h = ld(pt + i), m = ld(pt + in + i), l = ld(pt + 2 * in + i);
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
          for (std::size_t i = n32; i < in; ++i)
            s += w[(o + r) * ldw + i].to_float() * x[t * ldx + i];
          y[t * ldy + o + r] = s;
        }
      }
    }
  }
#endif

  // ---- prefill GEMM ---------------------------------------------------------------------------
  // Register tile: MR rows of X times NR = 2L rows of W (outputs y[t .. t+MR, o .. o+NR)), as
  // MR x 2 accumulator batches along `out`: per depth step k, two batches of W (column k of NR
  // rows) and MR broadcasts of X[t+m, k], 2 MR FMAs; no horizontal sums, each accumulator row is
  // a contiguous run of y. 6 x 16 on AVX2 (12 accumulators + 2 w + 1 broadcast = 15 of 16
  // registers), 12 x 32 on AVX-512 (24 + 3 of 32), 6 x 8 on SSE2.
  //
  // Both operands are packed so that the tile reads two linear streams:
  //   W micro-panel: wp[k * NR + r] = W[o + r, k] (transposed; zeros past the last row),
  //   X micro-panel: xp[k * MR + m] = X[t + m, k] (zeros past the last row).
  static constexpr std::size_t NR = 2 * L;
  static constexpr std::size_t MR = kAvx512 ? 12 : 6;
  static constexpr std::size_t KC = 256;      // depth block: a W micro-panel (KC x NR) in L1
  static constexpr std::size_t MC = 40 * MR;  // X block (MC x KC) in L2
  static constexpr std::size_t NC = 2048;     // packed W block (NC x KC, 2 MiB) in L3

  // y[m*ldy + n] (+)= sum_k xp[k*MR + m] * wp[k*NR + n] for m < mr, n < nr.
  static void tile(const float* TMOE_RESTRICT xp, const float* TMOE_RESTRICT wp, std::size_t kc,
                   float* y, std::size_t ldy, std::size_t mr, std::size_t nr, bool accumulate) {
    B acc0[MR], acc1[MR];
    for (std::size_t m = 0; m < MR; ++m) acc0[m] = acc1[m] = B(0.f);
      // The tile's rows of y were last touched a whole depth block ago (usually out of L2; with a
      // power-of-two ldy they also share cache sets): fetched now, they arrive during the k loop
      // instead of stalling the epilogue (8% of the 1024^3 GEMM's samples before, 2% after).
#if defined(__GNUC__)
    for (std::size_t m = 0; m < mr; ++m) {
      __builtin_prefetch(y + m * ldy, 1);
      __builtin_prefetch(y + m * ldy + nr - 1, 1);
    }
#endif
    // Depth steps unrolled by 4: the loop's pointer and counter updates come once per 48 FMAs
    // instead of once per 12 (docs/performance.md: the tile alone gains on Zen 3).
#if defined(__GNUC__)  // GCC and Clang
#pragma GCC unroll 4
#endif
    for (std::size_t k = 0; k < kc; ++k) {
      const B w0 = B::load_aligned(wp + k * NR), w1 = B::load_aligned(wp + k * NR + L);
      for (std::size_t m = 0; m < MR; ++m) {
        const B xv(xp[k * MR + m]);
        acc0[m] = xsimd::fma(xv, w0, acc0[m]);
        acc1[m] = xsimd::fma(xv, w1, acc1[m]);
      }
    }
    if (mr == MR && nr == NR) {
      for (std::size_t m = 0; m < MR; ++m) {
        float* d = y + m * ldy;
        if (accumulate) {
          acc0[m] += B::load_unaligned(d);
          acc1[m] += B::load_unaligned(d + L);
        }
        acc0[m].store_unaligned(d);
        acc1[m].store_unaligned(d + L);
      }
      return;
    }
    alignas(64) float t[NR];
    for (std::size_t m = 0; m < mr; ++m) {
      acc0[m].store_aligned(t);
      acc1[m].store_aligned(t + L);
      float* d = y + m * ldy;
      for (std::size_t n = 0; n < nr; ++n) d[n] = accumulate ? d[n] + t[n] : t[n];
    }
  }

#if defined(__AVX2__)
  // 8 weights from p as floats (AVX2 width, also inside the AVX-512 translation units).
  static TMOE_INLINE __m256 load8(const float* p) {
    return _mm256_loadu_ps(p);
  }
  static TMOE_INLINE __m256 load8(const bf16* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static TMOE_INLINE __m256 load8(const f16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // In-register transpose of the 8 x 8 block r[0..8).
  static TMOE_INLINE void transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
  }
#endif

  // Packs rows [0, rows) x columns [0, kc) of W (row stride ld) into transposed micro-panels of
  // NR rows (layout above), widening to float; rows past `rows` are zero.
  template <class T>
  static void pack_w(const T* a, std::size_t ld, std::size_t rows, std::size_t kc, float* dst) {
    for (std::size_t r0 = 0; r0 < rows; r0 += NR, dst += kc * NR) {
      const std::size_t nr = std::min(NR, rows - r0);
      std::size_t k = 0;
#if defined(__AVX2__)
      if (nr == NR)  // 8 x 8 blocks through registers
        for (; k + 8 <= kc; k += 8)
          for (std::size_t g = 0; g < NR; g += 8) {
            __m256 r[8];
            for (std::size_t j = 0; j < 8; ++j) r[j] = load8(a + (r0 + g + j) * ld + k);
            transpose8(r);
            for (std::size_t j = 0; j < 8; ++j) _mm256_store_ps(dst + (k + j) * NR + g, r[j]);
          }
#endif
      for (; k < kc; ++k)
        for (std::size_t r = 0; r < NR; ++r)
          dst[k * NR + r] = r < nr ? to_float(a[(r0 + r) * ld + k]) : 0.f;
    }
  }

  // Packed X: depth block p (KC columns), row panel r (MR rows) at
  // p * x_block_stride(T) + r * MR * kc_p; rows past T are zero.
  static std::size_t x_block_stride(std::size_t T) {
    return (T + MR - 1) / MR * MR * KC;
  }
  static std::size_t x_size(std::size_t T, std::size_t in) {
    return (in + KC - 1) / KC * x_block_stride(T);
  }
  static void pack_x(const float* x, std::size_t ldx, std::size_t T, std::size_t in, float* xp,
                     std::size_t part, std::size_t parts) {
    const std::size_t panels = (T + MR - 1) / MR;
    const std::size_t r0 = part * panels / parts, r1 = (part + 1) * panels / parts;
    for (std::size_t p = 0, pc = 0; pc < in; ++p, pc += KC) {
      const std::size_t kc = std::min(KC, in - pc);
      for (std::size_t r = r0; r < r1; ++r) {
        float* dst = xp + p * x_block_stride(T) + r * MR * kc;
        const std::size_t mr = std::min(MR, T - r * MR);
        const float* src = x + r * MR * ldx + pc;
#if defined(__AVX2__)
        if constexpr (kAvx2 && L == 8 && MR == 6) {
          if (mr == MR) {  // 6 x 8 blocks through an 8 x 8 register transpose (2 zero rows)
            std::size_t k = 0;
            const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
            for (; k + 8 <= kc; k += 8) {
              __m256 v[8];
              for (std::size_t m = 0; m < MR; ++m) v[m] = _mm256_loadu_ps(src + m * ldx + k);
              v[6] = v[7] = _mm256_setzero_ps();
              transpose8(v);
              // Column j of the block is 6 floats at dst + (k + j) * 6: each full store's two
              // extra lanes are overwritten by the next one, the last store is masked.
              for (std::size_t j = 0; j < 7; ++j) _mm256_storeu_ps(dst + (k + j) * MR, v[j]);
              _mm256_maskstore_ps(dst + (k + 7) * MR, six, v[7]);
            }
            for (; k < kc; ++k)
              for (std::size_t m = 0; m < MR; ++m) dst[k * MR + m] = src[m * ldx + k];
            continue;
          }
        }
#endif
        for (std::size_t m = 0; m < MR; ++m)
          if (m < mr)
            for (std::size_t k = 0; k < kc; ++k) dst[k * MR + m] = src[m * ldx + k];
          else
            for (std::size_t k = 0; k < kc; ++k) dst[k * MR + m] = 0.f;
      }
    }
  }

  template <class WT>
  static void gemm_packed(const WT* w, std::size_t ldw, const float* xp, float* y, std::size_t ldy,
                          std::size_t in, std::size_t T, std::size_t o_begin, std::size_t o_end) {
    if (in == 0) {
      for (std::size_t t = 0; t < T; ++t)
        std::fill(y + t * ldy + o_begin, y + t * ldy + o_end, 0.f);
      return;
    }
    thread_local detail::ScratchBuffer scratch;
    float* wp = scratch.get(NC * KC);  // (NC, KC) panels
    // Equal column blocks of at most NC rows (no small remainder block re-reading all of X).
    const std::size_t n_blocks = (o_end - o_begin + NC - 1) / NC;
    const std::size_t nc_step = ((o_end - o_begin + n_blocks - 1) / n_blocks + NR - 1) / NR * NR;
    for (std::size_t jc = o_begin; jc < o_end; jc += nc_step) {
      const std::size_t nc = std::min(nc_step, o_end - jc);
      for (std::size_t p = 0, pc = 0; pc < in; ++p, pc += KC) {
        const std::size_t kc = std::min(KC, in - pc);
        const float* xblock = xp + p * x_block_stride(T);
        pack_w(w + jc * ldw + pc, ldw, nc, kc, wp);
        for (std::size_t ic = 0; ic < T; ic += MC) {  // X block (MC, kc) stays in L2
          const std::size_t mc = std::min(MC, T - ic);
          for (std::size_t jr = 0; jr < nc; jr += NR)  // W micro-panel (kc, NR) stays in L1
            for (std::size_t ir = 0; ir < mc; ir += MR)
              tile(xblock + (ic + ir) * kc, wp + jr * kc, kc, y + (ic + ir) * ldy + jc + jr, ldy,
                   std::min(MR, mc - ir), std::min(NR, nc - jr), pc > 0);
        }
      }
    }
  }

  template <class WT>
  static void gemm(const WT* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
                   std::size_t ldy, std::size_t in, std::size_t T, std::size_t o_begin,
                   std::size_t o_end) {
    thread_local detail::ScratchBuffer scratch;
    float* xp = scratch.get(x_size(T, in));
    pack_x(x, ldx, T, in, xp, 0, 1);
    gemm_packed(w, ldw, xp, y, ldy, in, T, o_begin, o_end);
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
  return {&I::template matmul_rows<float>,
          &I::template matmul_rows<bf16>,
          &I::template matmul_rows<f16>,
          &I::x_size,
          &I::pack_x,
          &I::template gemm_packed<float>,
          &I::template gemm_packed<bf16>,
          &I::template gemm_packed<f16>};
}

}  // namespace tmoe::cpu
