// tmoe/backend/cpu/quant_kernels.hpp: the QuantKernels family of the KernelTable: dot products of
// quantized weight rows (quant/formats.hpp) with activations, weights decoded inside the SIMD loop.
//
//   Q8_0, Q4_0, Q4_K, Q6_K, Int8Row: activations quantized per 32 to BlockQ8Act; integer dot
//     products per 32 (AVX2: _mm256_maddubs_epi16 + _mm256_madd_epi16; AVX-512 VNNI TU:
//     _mm256_dpbusd_epi32), one float FMA per 32 with the product of the two block scales.
//     Offsets (Q6_K's 32, Q4_K's min) are applied through the activation block sums:
//     sum_i (q_i - 32) a_i = sum_i q_i a_i - 32 sum_i a_i; Q4_0 and Q8_0 use the sign trick
//     |w| * (sign(w) a) to keep maddubs' unsigned operand non-negative. No int16 overflow: maddubs
//     pairs stay below 2 * 63 * 127 (unsigned codes) or 2 * 128 * 127 (sign trick).
//     The GEMV runs Q4_0 and Q8_0 four rows at a time (dot4: one activation load and one F16C
//     conversion of the four weight scales per block; Q4_0 with its unsigned codes and 8 * sum(a)
//     subtracted from the block's integer sum, no sign trick).
//     Q4_K builds its 8 sub-block scales as one float vector per super-block (6-bit unpack by
//     32-bit masks) and broadcasts each with a lane permute.
//     With the 8-row interleaved copy (QuantMatrixView::packed, quant/formats.hpp repack_x8),
//     Q4_0, Q8_0, Q4_K and Q6_K run dot_x8 / dot_x8_q4k / dot_x8_q6k instead: 4 bytes of each
//     of 8 rows per load against 4 broadcast activation bytes, the 8 rows' integer sums in the 8
//     lanes, one F16C conversion and one FMA per 8 row-blocks (Q4_K: the 6-bit scale applied in
//     the integer pair-add, one FMA per sub-block, d and dmin once per super-block; Q6_K: the two
//     16-element scales in int32, one FMA per 32-element block), no horizontal sums;
//     Q4_0 / Q8_0 two groups (16 rows) per pass sharing the broadcasts, a software prefetch
//     kX8PrefetchBytes ahead. Per row the float terms are the plain kernels', summed in another
//     order (see docs/quantization.md for the bound against the plain kernels).
//   NF4: float activations; codes decoded with two 8-entry permutes and a blend on bit 3.
//   Fp8Block: float activations. The GEMV runs two rows per pass (dot_fp8_pair, each x vector
//     loaded once for both) with a shuffle-free decode: byte k of each 32-bit lane shifted to the
//     top, srai 4 and a mask give f32 bits S.0000EEEE.MMM0.. = the weight times 2^-120 (exact
//     for normals and subnormals), against x prepared once per call (prep_fp8_x: 32 columns
//     transposed 8 x 4 to match the lanes, times 2^e with e from max |x| so that products stay
//     clear of f32 subnormals); 2^(120 - e) is folded into the 128-column block's scale.
//     Single rows and the partial last block decode e4m3 as f16 (S.EEEE.MMM ->
//     S.0EEEE.MMM0000000, value / 256) widened by F16C. The bit tricks alone would decode the
//     e4m3 NaN pattern (S.1111.111) as a number, so each 32-byte load also folds
//     max(byte | 0x80) into a flag vector (two integer ops) and a row holding a NaN weight gives
//     NaN, as in the reference.
//     rows_fp8_block_table is the same product with a 256-entry float table and gathers, kept to
//     measure the two decodes against each other (bench_quant).
// The portable TU runs scalar loops with the same arithmetic (integer block sums, float
// accumulation). rows<F> tiles output rows x tokens (16 x 32) and calls the row dot product.
// gemm<F> (prefill, T >= kQuantGemmMinT): 16 rows x 256 columns of W at a time dequantized to
// float (SIMD for Q8_0 / Q4_0 / Q4_K / Q6_K / Fp8Block, dequantize_block otherwise), packed and
// multiplied by the float GEMM's register tile (blas.hpp), so each weight is decoded once per call,
// not once per token. Q4_0 with the interleaved copy skips it (QuantKernels::x8_int_prefill,
// cpu::int_prefill), and so does Q8_0 under AVX-512 VNNI (x8_int_prefill_q8_0; on AVX2 its integer
// tile measured slower than this GEMM on 2 quiet cores, so there Q8_0 takes it only for
// 1 < T < kQuantGemmMinT): rows<F> runs gemm_x8_tile for T > 1 (gemm_x16_tile under VNNI, two
// groups per vector, see TMOE_QUANT_X16 below), one group of 8 rows x kX8TileTokens tokens per
// pass on the Q8 activations, each weight load and nibble split shared by the tile's tokens; per
// row and token the same integer block sums and float steps as dot_x8 (the decode result bit for
// bit); one core, T = 128: Q4_0 1.8x, Q8_0 1.4x the float GEMM's FLOP/s (bench_cputime), pp512
// Qwen-1.5B Q4_0 2.1x, Q8_0 1.06x (docs/performance.md, "Integer prefill"). Q4_K and Q6_K with
// their copies do the same under VNNI (x8_int_prefill_q4_k / _q6_k: gemm_x16_q4k_tile /
// gemm_x16_q6k_tile, the decode's bits; 2 threads, T = 512: 2.5x / 1.7x the float GEMM's FLOP/s,
// docs/performance.md "K-quant prefill on the integer units, Q6_K interleaved").
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tmoe/backend/cpu/blas.hpp"
#include "tmoe/backend/cpu/simd.hpp"
#include "tmoe/quant/formats.hpp"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define TMOE_QUANT_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define TMOE_QUANT_X16 1
#endif
#endif

namespace tmoe::cpu {

// The activations of one matmul: T rows of float x (row stride ldx) and, for the integer formats,
// their Q8 blocks (row stride ldq blocks, ceil(cols / 32) blocks per row, zero padded).
struct QuantActs {
  const float* x = nullptr;
  std::size_t ldx = 0;
  const quant::BlockQ8Act* q = nullptr;
  std::size_t ldq = 0;
  // Per Q8 block b of row t (index t * ldq + b): qd = d, qdsum = d * (sum[0] + sum[1]) (contiguous
  // copies so that the K-quant kernels load 8 of them with one instruction).
  const float* qd = nullptr;
  const float* qdsum = nullptr;
  std::size_t T = 0;
};

// y[t * ldy + o] = dot(row o of w, activation t) for o in [o_begin, o_end), t in [0, T).
template <class F>
using QuantRowsFn = void (*)(const quant::QuantMatrixView<F>& w, const QuantActs& a, float* y,
                             std::size_t ldy, std::size_t o_begin, std::size_t o_end);

// The prefill GEMM (T >= kQuantGemmMinT): rows [o_begin, o_end) of w times T float activations
// packed by BlasKernels::gemm_pack_x.
template <class F>
using QuantGemmFn = void (*)(const quant::QuantMatrixView<F>& w, const float* xp, std::size_t T,
                             float* y, std::size_t ldy, std::size_t o_begin, std::size_t o_end);

// From this many tokens on, matmul_quant runs the dequantizing GEMM instead of per-token dots
// (measured one core, 1024 x 7168: even at T = 16, Q4_K 15% slower there; 1.2-1.7x faster at 32).
inline constexpr std::size_t kQuantGemmMinT = 24;

struct QuantKernels {
  // Quantizes x[0 .. n) to ceil(n / 32) activation blocks (the last one zero padded).
  void (*quantize_act)(const float* x, std::size_t n, quant::BlockQ8Act* out);
  QuantRowsFn<quant::Q8_0> rows_q8_0;
  QuantRowsFn<quant::Q4_0> rows_q4_0;
  QuantRowsFn<quant::Q4_K> rows_q4_k;
  QuantRowsFn<quant::Q6_K> rows_q6_k;
  QuantRowsFn<quant::NF4> rows_nf4;
  QuantRowsFn<quant::Int8Row> rows_int8_row;
  QuantRowsFn<quant::Fp8Block> rows_fp8_block;
  QuantRowsFn<quant::Fp8Block> rows_fp8_block_table;
  QuantGemmFn<quant::Q8_0> gemm_q8_0;
  QuantGemmFn<quant::Q4_0> gemm_q4_0;
  QuantGemmFn<quant::Q4_K> gemm_q4_k;
  QuantGemmFn<quant::Q6_K> gemm_q6_k;
  QuantGemmFn<quant::NF4> gemm_nf4;
  QuantGemmFn<quant::Int8Row> gemm_int8_row;
  QuantGemmFn<quant::Fp8Block> gemm_fp8_block;
  // Whether rows_q4_0 / rows_q8_0 run the integer multi-token kernel (gemm_x8_tile) on the 8-row
  // interleaved copy: then matmul_quant runs them for prefill too (T >= kQuantGemmMinT) instead of
  // gemm_q4_0 / gemm_q8_0 when w.packed is set.
  bool x8_int_prefill = false;
  // The same for rows_q8_0 (AVX-512 VNNI: gemm_x16_tile, one vpdpbusd per 64 weight bytes and
  // token, measured faster than the float GEMM; on AVX2 the sign trick's tile is slower).
  bool x8_int_prefill_q8_0 = false;
  // The same for rows_q4_k (AVX-512 VNNI: gemm_x16_q4k_tile; elsewhere the float GEMM).
  bool x8_int_prefill_q4_k = false;
  // The same for rows_q6_k (AVX-512 VNNI: gemm_x16_q6k_tile).
  bool x8_int_prefill_q6_k = false;
};

template <class Arch>
struct QuantImpl {
  using Act = quant::BlockQ8Act;

  // Shared by every ISA: d = max|x| / 127, q = round_half_even(x * (1 / d)); the float ops are
  // the reference's, so activation blocks are bit-identical across ISAs.
  static void quantize_act(const float* x, std::size_t n, Act* out) {
    std::size_t b = 0;
#if defined(TMOE_QUANT_AVX2)
    b = quantize_act_avx2(x, n, out);
#endif
    for (; b * 32 < n; ++b) {
      float v[32];
      const std::size_t m = std::min<std::size_t>(32, n - b * 32);
      for (std::size_t j = 0; j < 32; ++j) v[j] = j < m ? x[b * 32 + j] : 0.f;
      float amax = 0;
      for (float f : v) amax = std::max(amax, f < 0 ? -f : f);
      const float d = amax / 127.f;
      const float id = d != 0.f ? 1.0f / d : 0.0f;
      Act& a = out[b];
      a.d = d;
      int s0 = 0, s1 = 0;
      for (int j = 0; j < 32; ++j) {
        float p = v[j] * id;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        // p rounded to float here: with FMA enabled, GCC contracted v * id + 12582912 into one
        // fused op (product unrounded) and near-ties rounded otherwise than the reference.
        __asm__("" : "+x"(p));
#endif
        const float f = p + 12582912.f;  // round half even, |v * id| <= 127.5
        const int q = static_cast<int>(std::bit_cast<std::uint32_t>(f) & 0x007fffffu) - 0x00400000;
        a.qs[j] = static_cast<std::int8_t>(q);
        (j < 16 ? s0 : s1) += q;
      }
      a.sum[0] = static_cast<std::int16_t>(s0);
      a.sum[1] = static_cast<std::int16_t>(s1);
    }
  }

#if defined(TMOE_QUANT_AVX2)
  // quantize_act's whole blocks, 8 lanes at a time (the scalar loop above ran ~1.45 ns per
  // float, BM_quantize_act; ~4 % of the calling thread's decode samples on Qwen-1.5B Q4_0, with
  // the other threads waiting); returns the blocks done. Every step is the scalar loop's: amax
  // by max(|v|, amax) (a NaN element is skipped as std::max skips it), d and id in scalar,
  // p = v * id rounded to float before + 1.5 * 2^23, the same bit trick; only the order of the
  // exact max and of the integer sums differs.
  static std::size_t quantize_act_avx2(const float* x, std::size_t n, Act* out) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256i mant = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    std::size_t b = 0;
    for (; b * 32 + 32 <= n; ++b) {
      __m256 v[4], m = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
        m = _mm256_max_ps(_mm256_and_ps(v[i], abs_mask), m);
      }
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      const float amax = _mm_cvtss_f32(h);
      const float d = amax / 127.f;
      const float id = d != 0.f ? 1.0f / d : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
      for (int i = 0; i < 4; ++i) {
        __m256 p = _mm256_mul_ps(v[i], vid);
#if defined(__GNUC__)
        __asm__("" : "+x"(p));  // rounded here, not fused with the add (see the scalar loop)
#endif
        const __m256i f = _mm256_castps_si256(_mm256_add_ps(p, magic));
        q[i] = _mm256_sub_epi32(_mm256_and_si256(f, mant), bias);
      }
      // |q| <= 127: the saturating packs are exact; they interleave 4-element runs per 128-bit
      // lane, which the permutation puts back in order.
      const __m256i q8 = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])),
          order);
      Act& a = out[b];
      a.d = d;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.qs), q8);
      a.sum[0] = static_cast<std::int16_t>(hsum(_mm256_add_epi32(q[0], q[1])));
      a.sum[1] = static_cast<std::int16_t>(hsum(_mm256_add_epi32(q[2], q[3])));
    }
    return b;
  }
  static TMOE_INLINE float half(std::uint16_t bits) {
    return _cvtsh_ss(bits);
  }
  // 8 int32 partial sums of u (unsigned bytes) times s (signed bytes).
  static TMOE_INLINE __m256i dot_us(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
  }
  // Like dot_us, with lanes of elements 0..15 times sc0 and of 16..31 times sc1.
  static TMOE_INLINE __m256i dot_us_scaled(__m256i u, __m256i s, int sc0, int sc1) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
                              _mm256_set_m128i(_mm_set1_epi32(sc1), _mm_set1_epi32(sc0)));
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                             _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(sc1)),
                                              _mm_set1_epi16(static_cast<short>(sc0))));
#endif
  }
  static TMOE_INLINE __m256i load32(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  }
  static TMOE_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static TMOE_INLINE int hsum(__m256i v) {
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
  }
  static TMOE_INLINE __m256i lane0(int v) {
    return _mm256_setr_epi32(v, 0, 0, 0, 0, 0, 0, 0);
  }
#else
  static TMOE_INLINE float half(std::uint16_t bits) {
    return f16::from_bits(bits).to_float();
  }
#endif

  // ---- Q8_0 ----------------------------------------------------------------------------------
  static float dot(const quant::BlockQ8_0* w, const Act* a, std::size_t nb) {
#if defined(TMOE_QUANT_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    std::size_t b = 0;
    auto one = [&](std::size_t i, __m256& acc) {
      const __m256i wq = load32(w[i].qs), aq = load32(a[i].qs);
      const __m256i p = dot_us(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(half(w[i].d.bits) * a[i].d), acc);
    };
    for (; b + 2 <= nb; b += 2) {
      one(b, acc0);
      one(b + 1, acc1);
    }
    if (b < nb) one(b, acc0);
    return hsum(_mm256_add_ps(acc0, acc1));
#else
    float s = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      int q = 0;
      for (int j = 0; j < 32; ++j) q += w[i].qs[j] * a[i].qs[j];
      s += half(w[i].d.bits) * a[i].d * static_cast<float>(q);
    }
    return s;
#endif
  }

  // ---- Q4_0 ----------------------------------------------------------------------------------
  static float dot(const quant::BlockQ4_0* w, const Act* a, std::size_t nb) {
#if defined(TMOE_QUANT_AVX2)
    const __m256i m4 = _mm256_set1_epi8(15), k8 = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    auto one = [&](std::size_t i, __m256& acc) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i].qs));
      // q - 8 in [-8, 7]; |q - 8| * sign(q - 8) a keeps maddubs' unsigned operand non-negative.
      const __m256i q =
          _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4), k8);
      const __m256i p = dot_us(_mm256_sign_epi8(q, q), _mm256_sign_epi8(load32(a[i].qs), q));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(half(w[i].d.bits) * a[i].d), acc);
    };
    std::size_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      one(b, acc0);
      one(b + 1, acc1);
    }
    if (b < nb) one(b, acc0);
    return hsum(_mm256_add_ps(acc0, acc1));
#else
    float s = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      int q = 0;
      for (int j = 0; j < 16; ++j)
        q += ((w[i].qs[j] & 15) - 8) * a[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
      s += half(w[i].d.bits) * a[i].d * static_cast<float>(q);
    }
    return s;
#endif
  }

  // ---- Q4_K ----------------------------------------------------------------------------------
  // qd, qdsum: the activation blocks' d and d * sum (QuantActs). Per super-block:
  //   sum_s [ d sc_s d_a,s * sum_{i in s} q_i a_i ] - dmin * sum_s m_s * d_a,s * sum_{i in s} a_i
  static float dot(const quant::BlockQ4_K* w, const Act* a, const float* qd, const float* qdsum,
                   std::size_t nb, [[maybe_unused]] const quant::BlockQ4_K* next = nullptr) {
#if defined(TMOE_QUANT_AVX2)
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    __m256 macc = _mm256_setzero_ps();
    for (std::size_t i = 0; i < nb; ++i, a += 8, qd += 8, qdsum += 8) {
      if (next) prefetch_span<sizeof(quant::BlockQ4_K)>(next + i);
      const quant::BlockQ4_K& x = w[i];
      std::uint32_t u[3];
      std::memcpy(u, x.scales, 12);
      // 6-bit scales and mins of sub-blocks 0..3 (low 6 bits of bytes 0..3 / 4..7) and 4..7
      // (nibbles of bytes 8..11 plus the top 2 bits of bytes 0..3 / 4..7), one byte each.
      const std::uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
      const std::uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
      const std::uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
      const __m256 vsc =
          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32(int(sc_lo), int(sc_hi), 0, 0)));
      const __m256 vm =
          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32(int(m_lo), int(m_hi), 0, 0)));
      macc = _mm256_fmadd_ps(_mm256_mul_ps(vm, _mm256_set1_ps(half(x.dmin.bits))),
                             _mm256_loadu_ps(qdsum), macc);
      const __m256 vs =
          _mm256_mul_ps(_mm256_mul_ps(vsc, _mm256_set1_ps(half(x.d.bits))), _mm256_loadu_ps(qd));
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = load32(x.qs + 32 * c);
        const __m256i lo = _mm256_and_si256(raw, m4),
                      hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        const __m256i p0 = dot_us(lo, load32(a[2 * c].qs)),
                      p1 = dot_us(hi, load32(a[2 * c + 1].qs));
        acc[(2 * c) & 3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0),
                                           _mm256_permutevar8x32_ps(vs, _mm256_set1_epi32(2 * c)),
                                           acc[(2 * c) & 3]);
        acc[(2 * c + 1) & 3] = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(p1), _mm256_permutevar8x32_ps(vs, _mm256_set1_epi32(2 * c + 1)),
            acc[(2 * c + 1) & 3]);
      }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) -
           hsum(macc);
#else
    (void)qd;
    (void)qdsum;
    float total = 0;
    for (std::size_t i = 0; i < nb; ++i, a += 8) {
      const quant::BlockQ4_K& x = w[i];
      const float d = half(x.d.bits), dmin = half(x.dmin.bits);
      for (int c = 0; c < 4; ++c) {
        int s0, m0, s1, m1, q0 = 0, q1 = 0;
        quant::q4k_scale_min(x.scales, 2 * c, s0, m0);
        quant::q4k_scale_min(x.scales, 2 * c + 1, s1, m1);
        for (int l = 0; l < 32; ++l) {
          q0 += (x.qs[32 * c + l] & 15) * a[2 * c].qs[l];
          q1 += (x.qs[32 * c + l] >> 4) * a[2 * c + 1].qs[l];
        }
        total += d * s0 * a[2 * c].d * static_cast<float>(q0) +
                 d * s1 * a[2 * c + 1].d * static_cast<float>(q1);
        total -= dmin * (static_cast<float>(m0 * (a[2 * c].sum[0] + a[2 * c].sum[1])) * a[2 * c].d +
                         static_cast<float>(m1 * (a[2 * c + 1].sum[0] + a[2 * c + 1].sum[1])) *
                             a[2 * c + 1].d);
      }
    }
    return total;
#endif
  }

  // ---- Q6_K ----------------------------------------------------------------------------------
  static float dot(const quant::BlockQ6_K* w, const Act* a, std::size_t nb,
                   [[maybe_unused]] const quant::BlockQ6_K* next = nullptr) {
#if defined(TMOE_QUANT_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (std::size_t i = 0; i < nb; ++i, a += 8) {
      if (next) prefetch_span<sizeof(quant::BlockQ6_K)>(next + i);
      const quant::BlockQ6_K& x = w[i];
      const float d = half(x.d.bits);
      for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = load32(x.ql + 64 * h), ql1 = load32(x.ql + 64 * h + 32);
        const __m256i qh = load32(x.qh + 32 * h);
        const __m256i q[4] = {q6k_code<0>(ql0, qh), q6k_code<1>(ql1, qh), q6k_code<2>(ql0, qh),
                              q6k_code<3>(ql1, qh)};
        for (int g = 0; g < 4; ++g) {
          const Act& ab = a[4 * h + g];
          const int s0 = x.scales[8 * h + 2 * g], s1 = x.scales[8 * h + 2 * g + 1];
          __m256i p = dot_us_scaled(q[g], load32(ab.qs), s0, s1);
          p = _mm256_sub_epi32(p, lane0(32 * (s0 * ab.sum[0] + s1 * ab.sum[1])));
          __m256& acc = (g & 1) ? acc1 : acc0;
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ab.d), acc);
        }
      }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
#else
    float s = 0;
    for (std::size_t i = 0; i < nb; ++i, a += 8) {
      const float d = half(w[i].d.bits);
      for (int blk = 0; blk < 8; ++blk) {
        int q = 0;
        for (int l = 0; l < 32; ++l) {
          const int e = 32 * blk + l;
          q += w[i].scales[e / 16] * (quant::QuantTraits<quant::Q6_K>::code(w[i], e) - 32) *
               a[blk].qs[l];
        }
        s += d * a[blk].d * static_cast<float>(q);
      }
    }
    return s;
#endif
  }

#if defined(TMOE_QUANT_AVX2)
  // Four rows of Q4_0 / Q8_0 against one activation row: each activation block is loaded once
  // for the four. Q4_0 uses the unsigned codes q (0..15) as maddubs' unsigned operand and
  // subtracts 8 * sum(a) from lane 0 of the block's int32 sums (exact integers, as the sign
  // trick); the scales d_w * d_a are formed for the four rows with one F16C conversion.
  template <class Blk>
  static void dot4(const Blk* w0, std::size_t ldb, const Act* a, std::size_t nb, float* out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    // The next four rows (prefetch_span) follow these in memory when ldb == nb.
    const Blk* next = w0 + 4 * ldb;
    for (std::size_t b = 0; b < nb; ++b) {
      prefetch_span<4 * sizeof(Blk)>(next + 4 * b);
      const __m256i aq = load32(a[b].qs);
      const __m128i dh =
          _mm_setr_epi16(static_cast<short>(w0[b].d.bits), static_cast<short>(w0[ldb + b].d.bits),
                         static_cast<short>(w0[2 * ldb + b].d.bits),
                         static_cast<short>(w0[3 * ldb + b].d.bits), 0, 0, 0, 0);
      const __m128 s4 = _mm_mul_ps(_mm_cvtph_ps(dh), _mm_set1_ps(a[b].d));
      const __m256 s8 = _mm256_set_m128(s4, s4);
      if constexpr (std::is_same_v<Blk, quant::BlockQ4_0>) {
        const __m256i c8 =
            _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * (a[b].sum[0] + a[b].sum[1])));
        for (int r = 0; r < 4; ++r) {
          const __m256i raw = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(w0[r * ldb + b].qs)));
          const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(raw, shift), m4);
          const __m256i p =
              _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, aq), ones), c8);
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                   _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(r)), acc[r]);
        }
      } else {
        for (int r = 0; r < 4; ++r) {
          const __m256i wq = load32(w0[r * ldb + b].qs);
          const __m256i p = dot_us(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                   _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(r)), acc[r]);
        }
      }
    }
    // Four horizontal sums at once.
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }

  // acc + 8 int32 sums of 4 products of u (unsigned bytes) and s (signed bytes) each.
  static TMOE_INLINE __m256i dot_us_acc(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
  }
  // 4 activation bytes at p in every 32-bit lane.
  static TMOE_INLINE __m256i bcast4(const std::int8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }

  // How far ahead of the block being read the 8-row kernels prefetch (prefetch_span, one block's
  // bytes per block step; pf = the pass's first block + this). With one stream per pass (units
  // of 4 groups, quant::X8Order), Zen 5, 2 threads, the Qwen-1.5B decode matrices
  // (docs/performance.md, "One stream per decode pass"): 4 KiB beat 1 KiB by 4-8 % where the
  // machine reads ~80 GB/s and tied where it reads ~46; 8 KiB no better. (With a group's blocks
  // contiguous and 4 streams per pass, 1 KiB had beaten 512 B, 2 KiB and 4 KiB on Zen 3.)
  static constexpr std::size_t kX8PrefetchBytes = 4096;

  // Where an interleaved kernel finds its consecutive groups' blocks (quant::X8Order): group j's
  // block b at w[at(j, b)]. Inside a unit the groups' blocks alternate (group 1, block unit);
  // after the last whole unit each group's blocks are contiguous (group nb, block 1).
  struct X8Step {
    std::size_t group, block;
    TMOE_INLINE std::size_t at(std::size_t j, std::size_t b) const { return j * group + b * block; }
  };
  static X8Step x8_step(const quant::X8Order& o, std::size_t g) {
    return {o.group_stride(g), o.block_stride(g)};
  }
  // Prefetches the n groups' block b, pf + at(j, b) * Bytes (pf: the first group's first block +
  // kX8PrefetchBytes): one span when the groups' blocks are adjacent (inside a unit).
  template <std::size_t Bytes, int N>
  static TMOE_INLINE void prefetch_x8(const char* pf, X8Step s, std::size_t b) {
    if (s.group == 1) {
      prefetch_span<N * Bytes>(pf + s.at(0, b) * Bytes);
    } else {
      for (int j = 0; j < N; ++j) prefetch_span<Bytes>(pf + s.at(j, b) * Bytes);
    }
  }

  // Eight interleaved rows (quant::RepackedX8<F>, formats.hpp) against one activation row:
  // y[r] for r < 8. Lane r of the int32 vector is row r's exact integer block sum, so per row
  // the float arithmetic is, block by block in order,
  //   acc_r = fma(float(isum_r), float(d_r) * d_a, acc_r)
  // (the portable kernel's order; the 4-row kernel dot4 above sums 8 lanes per row instead, so
  // the two differ by float rounding only, docs/quantization.md states the bound).
  //   Q4_0: unsigned codes q (0..15) times the activation bytes (maddubs pairs |.| <= 2 * 15 * 127,
  //     eight of them summed in int16 stay <= 30480 < 2^15), minus 8 * sum(a) per block.
  //   Q8_0: the sign trick |w| * (sign(w) a) as in dot(BlockQ8_0), int32 per chunk.
  // NG consecutive groups (8 NG rows, y[0 .. 8 NG)) share each activation block's broadcasts and
  // scale; group j's block b at w[st.at(j, b)]. Per row the arithmetic is the same for any NG.
  template <class F, int NG = 1>
  static void dot_x8(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* a,
                     std::size_t nb, float* y, const char* pf = nullptr) {
    using Blk = typename quant::RepackedX8<F>::Block;
    __m256 acc[NG];
    for (int j = 0; j < NG; ++j) acc[j] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b) {
      if (pf) prefetch_x8<sizeof(Blk), NG>(pf, st, b);
      const Act& ab = a[b];
      __m256i isum[NG];
      if constexpr (std::is_same_v<F, quant::Q4_0>) {
        const __m256i m4 = _mm256_set1_epi8(15);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        for (int j = 0; j < NG; ++j) isum[j] = _mm256_setzero_si256();
        for (int k = 0; k < 4; ++k) {
          const __m256i alo = bcast4(ab.qs + 4 * k), ahi = bcast4(ab.qs + 16 + 4 * k);
          for (int j = 0; j < NG; ++j) {
            const __m256i raw = load32(w[st.at(j, b)].qs + 32 * k);
            isum[j] = dot_us_acc(isum[j], _mm256_and_si256(raw, m4), alo);
            isum[j] = dot_us_acc(isum[j], _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), ahi);
          }
        }
#else
        __m256i s16[NG];
        for (int j = 0; j < NG; ++j) s16[j] = _mm256_setzero_si256();
        for (int k = 0; k < 4; ++k) {
          const __m256i alo = bcast4(ab.qs + 4 * k), ahi = bcast4(ab.qs + 16 + 4 * k);
          for (int j = 0; j < NG; ++j) {
            const __m256i raw = load32(w[st.at(j, b)].qs + 32 * k);
            s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(_mm256_and_si256(raw, m4), alo));
            s16[j] = _mm256_add_epi16(
                s16[j], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), ahi));
          }
        }
        for (int j = 0; j < NG; ++j) isum[j] = _mm256_madd_epi16(s16[j], _mm256_set1_epi16(1));
#endif
        const __m256i c8 = _mm256_set1_epi32(8 * (ab.sum[0] + ab.sum[1]));
        for (int j = 0; j < NG; ++j) isum[j] = _mm256_sub_epi32(isum[j], c8);
      } else {
        for (int j = 0; j < NG; ++j) isum[j] = _mm256_setzero_si256();
        for (int k = 0; k < 8; ++k) {
          const __m256i ak = bcast4(ab.qs + 4 * k);
          for (int j = 0; j < NG; ++j) {
            const __m256i wq = load32(w[st.at(j, b)].qs + 32 * k);
            isum[j] = dot_us_acc(isum[j], _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(ak, wq));
          }
        }
      }
      const __m256 da = _mm256_set1_ps(ab.d);
      for (int j = 0; j < NG; ++j) {
        const __m256 s = _mm256_mul_ps(
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[st.at(j, b)].d))),
            da);
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), s, acc[j]);
      }
    }
    for (int j = 0; j < NG; ++j) _mm256_storeu_ps(y + 8 * j, acc[j]);
  }

  // A group's tokens [0, T) in tiles of NT, the rest in one narrower tile:
  // tile.template operator()<N>(t0, pf) for each, pf (the prefetch pointer of the group's
  // weights) only on the first: the later tiles find the weights cached.
  template <std::size_t NT, class Tile>
  static TMOE_INLINE void over_tokens(std::size_t T, const char* pf, Tile&& tile) {
    std::size_t t = 0;
    for (; t + NT <= T; t += NT, pf = nullptr) tile.template operator()<int{NT}>(t, pf);
    run_remainder<NT>(T - t, [&]<int N>() { tile.template operator()<N>(t, pf); });
  }

#if defined(TMOE_QUANT_X16)
  // ---- 16 rows per vector (AVX-512 VNNI): two consecutive 8-row groups in one zmm ------------
  // Group g's 32-byte chunk in the low half, group g + 1's in the high half, so one vpdpbusd
  // serves 16 rows. The integer block sum of each row is exactly dot_x8's, with one step fewer:
  //   Q4_0: unsigned codes q (0..15) times the activation bytes, minus 8 * sum(a);
  //   Q8_0: w + 128 (w xor 0x80, as unsigned bytes) times the activation bytes, minus
  //     128 * sum(a) (vpdpbusd adds four products per lane in int32 without an int16 stage, so
  //     there is no saturation: |sum| <= 32 * 255 * 128 per block),
  // then the same float steps as dot_x8 (s = float(d_w) * d_a, acc = fma(float(isum), s, acc)),
  // so every output is dot_x8's bit for bit. Two accumulators per block (low / high nibbles,
  // even / odd chunks) halve the dependency chain of the block's vpdpbusd.
  static TMOE_INLINE __m512i load2x32(const void* lo, const void* hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load32(lo)), load32(hi), 1);
  }
  static TMOE_INLINE __m512i bcast4z(const std::int8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static TMOE_INLINE void pin(__m512i& v) {
#if defined(__GNUC__)
    __asm__("" : "+v"(v));
#endif
  }
  // The 16 rows' scales of one block of groups g and g + 1, as floats.
  template <class Blk>
  static TMOE_INLINE __m512 scales16(const Blk& b0, const Blk& b1) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0.d))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1.d)), 1));
  }
  // sum(a) times the format's code offset (8 for Q4_0, 128 for Q8_0) in every lane.
  template <class F>
  static TMOE_INLINE __m512i code_offset(const Act& ab) {
    constexpr int kOff = std::is_same_v<F, quant::Q4_0> ? 8 : 128;
    return _mm512_set1_epi32(kOff * (ab.sum[0] + ab.sum[1]));
  }
  // The 16 rows' integer sums of one block (groups at w0 and w1) against activation block ab.
  template <class F, class Blk>
  static TMOE_INLINE __m512i isum16(const Blk& w0, const Blk& w1, const Act& ab) {
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    if constexpr (std::is_same_v<F, quant::Q4_0>) {
      // High nibbles in place (16 q: one and instead of a shift and an and per load): per lane
      // s1 sums 16 products 16 q a, |.| <= 16 * 240 * 127, an exact multiple of 16, shifted
      // back once per block.
      const __m512i m4 = _mm512_set1_epi8(15), m4h = _mm512_set1_epi8(-16);
      for (int k = 0; k < 4; ++k) {
        const __m512i raw = load2x32(w0.qs + 32 * k, w1.qs + 32 * k);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(raw, m4), bcast4z(ab.qs + 4 * k));
        s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(raw, m4h), bcast4z(ab.qs + 16 + 4 * k));
      }
      s1 = _mm512_srai_epi32(s1, 4);
    } else {
      const __m512i off = _mm512_set1_epi8(-128);
      for (int k = 0; k < 8; k += 2) {
        s0 =
            _mm512_dpbusd_epi32(s0, _mm512_xor_si512(load2x32(w0.qs + 32 * k, w1.qs + 32 * k), off),
                                bcast4z(ab.qs + 4 * k));
        s1 = _mm512_dpbusd_epi32(
            s1, _mm512_xor_si512(load2x32(w0.qs + 32 * k + 32, w1.qs + 32 * k + 32), off),
            bcast4z(ab.qs + 4 * k + 4));
      }
    }
    return _mm512_sub_epi32(_mm512_add_epi32(s0, s1), code_offset<F>(ab));
  }

  // 16 NZ rows (2 NZ consecutive groups, group j's block b at w[st.at(j, b)]) against one
  // activation row: y[0 .. 16 NZ). Prefetches like dot_x8 (pf: the first group's first block +
  // kX8PrefetchBytes).
  template <class F, int NZ>
  static void dot_x16(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* a,
                      std::size_t nb, float* y, const char* pf) {
    using Blk = typename quant::RepackedX8<F>::Block;
    __m512 acc[NZ];
    for (int z = 0; z < NZ; ++z) acc[z] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b) {
      if (pf) prefetch_x8<sizeof(Blk), 2 * NZ>(pf, st, b);
      const Act& ab = a[b];
      const __m512 da = _mm512_set1_ps(ab.d);
      for (int z = 0; z < NZ; ++z) {
        const Blk& w0 = w[st.at(2 * z, b)];
        const Blk& w1 = w[st.at(2 * z + 1, b)];
        const __m512i isum = isum16<F>(w0, w1, ab);
        acc[z] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(scales16(w0, w1), da), acc[z]);
      }
    }
    for (int z = 0; z < NZ; ++z) _mm512_storeu_ps(y + 16 * z, acc[z]);
  }

  // Prefill, 16 rows (two groups, group j's block b at w[st.at(j, b)]) x NT tokens per pass:
  // gemm_x8_tile's work with each 64-byte weight vector serving the NT tokens; per row and token
  // dot_x16's (= dot_x8's) bits.
  template <class F, int NT>
  static void gemm_x16_tile(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* a,
                            std::size_t lda, std::size_t nb, float* y, std::size_t ldy,
                            const char* pf) {
    using Blk = typename quant::RepackedX8<F>::Block;
    __m512 acc[NT];
    for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b) {
      if (pf) prefetch_x8<sizeof(Blk), 2>(pf, st, b);
      const Blk& w0 = w[st.at(0, b)];
      const Blk& w1 = w[st.at(1, b)];
      __m512i isum[NT];
      for (int j = 0; j < NT; ++j) isum[j] = _mm512_setzero_si512();
      if constexpr (std::is_same_v<F, quant::Q4_0>) {
        const __m512i m4 = _mm512_set1_epi8(15);
        for (int k = 0; k < 4; ++k) {
          const __m512i raw = load2x32(w0.qs + 32 * k, w1.qs + 32 * k);
          const __m512i lo = _mm512_and_si512(raw, m4),
                        hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
          for (int j = 0; j < NT; ++j) {
            const std::int8_t* q = a[j * lda + b].qs;
            isum[j] = _mm512_dpbusd_epi32(isum[j], lo, bcast4z(q + 4 * k));
            isum[j] = _mm512_dpbusd_epi32(isum[j], hi, bcast4z(q + 16 + 4 * k));
            pin(isum[j]);
          }
        }
      } else {
        const __m512i off = _mm512_set1_epi8(-128);
        for (int k = 0; k < 8; ++k) {
          const __m512i wu = _mm512_xor_si512(load2x32(w0.qs + 32 * k, w1.qs + 32 * k), off);
          for (int j = 0; j < NT; ++j) {
            isum[j] = _mm512_dpbusd_epi32(isum[j], wu, bcast4z(a[j * lda + b].qs + 4 * k));
            pin(isum[j]);
          }
        }
      }
      const __m512 wd = scales16(w0, w1);
      for (int j = 0; j < NT; ++j) {
        const Act& ab = a[j * lda + b];
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum[j], code_offset<F>(ab))),
                                 _mm512_mul_ps(wd, _mm512_set1_ps(ab.d)), acc[j]);
      }
    }
    for (int j = 0; j < NT; ++j) _mm512_storeu_ps(y + j * ldy, acc[j]);
  }

  // Tokens per gemm_x16_tile pass (NT accumulators + NT integer sums in the 32 zmm registers).
  static constexpr std::size_t kX16TileTokens = 8;

  // Groups g and g + 1 (16 rows at w, st; y: token 0's 16 outputs) x tokens [0, T).
  template <class F>
  static void gemm_x16_group(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* q,
                             std::size_t ldq, std::size_t T, std::size_t nb, float* y,
                             std::size_t ldy, const char* pf) {
    over_tokens<kX16TileTokens>(T, pf, [&]<int N>(std::size_t t, const char* p) {
      gemm_x16_tile<F, N>(w, st, q + t * ldq, ldq, nb, y + t * ldy, ldy, p);
    });
  }
#endif

  // Prefill on the interleaved copy: one group (8 rows) x NT tokens per pass; each 32-byte weight
  // load (with Q4_0's nibble split, Q8_0's |w|) serves the NT tokens, whose 4-byte activation
  // groups are broadcast from memory. Per row and token the integer block sum and the float steps
  // are dot_x8's, so the result is the decode GEMV's bit for bit:
  //   Q4_0: unsigned codes times activation bytes, the 8 maddubs of a block summed in int16
  //     (<= 8 * 2 * 15 * 127 = 30480 < 2^15), pairs added by madd, minus 8 * sum(a);
  //   Q8_0: the sign trick |w| * (sign(w) a), maddubs pairs <= 2 * 128 * 127, madd to int32 per
  //     4-byte chunk, int32 sums over the block;
  //   then acc = fma(float(isum), float(d_w) * d_a, acc) block by block.
  // a: token 0's blocks, token j's at a + j * lda; y: token j's 8 outputs at y + j * ldy.
  // An empty asm on v: the compiler must have v in a register here. gemm_x8_tile pins its
  // accumulators with it after each chunk; without it GCC 12 hoisted all the tile's maddubs of a
  // block ahead of the adds (integer adds reassociate) and spilled ~20 vectors per block.
  static TMOE_INLINE void pin(__m256i& v) {
#if defined(__GNUC__)
    __asm__("" : "+x"(v));
#endif
  }

  // w: the group's block 0, its block b at w[st.at(0, b)].
  template <class F, int NT>
  static void gemm_x8_tile(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* a,
                           std::size_t lda, std::size_t nb, float* y, std::size_t ldy,
                           const char* pf) {
    using Blk = typename quant::RepackedX8<F>::Block;
    __m256 acc[NT];
    for (int j = 0; j < NT; ++j) acc[j] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (std::size_t b = 0; b < nb; ++b) {
      if (pf) prefetch_x8<sizeof(Blk), 1>(pf, st, b);
      const Blk& wb = w[st.at(0, b)];
      __m256i isum[NT];
      for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
      if constexpr (std::is_same_v<F, quant::Q4_0>) {
        const __m256i m4 = _mm256_set1_epi8(15);
        for (int k = 0; k < 4; ++k) {
          const __m256i raw = load32(wb.qs + 32 * k);
          const __m256i lo = _mm256_and_si256(raw, m4),
                        hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
          for (int j = 0; j < NT; ++j) {
            const std::int8_t* q = a[j * lda + b].qs;
            isum[j] = _mm256_add_epi16(isum[j], _mm256_maddubs_epi16(lo, bcast4(q + 4 * k)));
            isum[j] = _mm256_add_epi16(isum[j], _mm256_maddubs_epi16(hi, bcast4(q + 16 + 4 * k)));
            pin(isum[j]);
          }
        }
        for (int j = 0; j < NT; ++j) {
          const Act& ab = a[j * lda + b];
          // 8 * (sum[0] + sum[1]) in every lane: the two int16 sums broadcast, madd by 8.
          isum[j] = _mm256_sub_epi32(
              _mm256_madd_epi16(isum[j], ones),
              _mm256_madd_epi16(bcast4(reinterpret_cast<const std::int8_t*>(ab.sum)),
                                _mm256_set1_epi16(8)));
        }
      } else {
        for (int k = 0; k < 8; ++k) {
          const __m256i wq = load32(wb.qs + 32 * k), aw = _mm256_sign_epi8(wq, wq);
          for (int j = 0; j < NT; ++j) {
            const __m256i s = _mm256_sign_epi8(bcast4(a[j * lda + b].qs + 4 * k), wq);
            isum[j] =
                _mm256_add_epi32(isum[j], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, s), ones));
            pin(isum[j]);
          }
        }
      }
      const __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.d)));
      for (int j = 0; j < NT; ++j)
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]),
                                 _mm256_mul_ps(wd, _mm256_set1_ps(a[j * lda + b].d)), acc[j]);
    }
    for (int j = 0; j < NT; ++j) _mm256_storeu_ps(y + j * ldy, acc[j]);
  }

  // Tokens per gemm_x8_tile pass: measured one core, 1024 x 7168, T = 128 (bench_cputime
  // qgemm_*_x8, loaded machine): 4 -> 5 +13 % (Q4_0) / +30 % (Q8_0), 6 below 5; processing the
  // columns in chunks of 16-64 blocks (the weights in L1, the activations in L2) gained nothing.
  static constexpr std::size_t kX8TileTokens = 5;

  // One group (8 rows, y: token 0's 8 outputs) x tokens [0, T): tiles of kX8TileTokens, the rest
  // in one narrower tile; pf: prefetch pointer of the first tile (the group's weights come from
  // memory once, the later tiles find them cached).
  template <class F>
  static void gemm_x8_group(const typename quant::RepackedX8<F>::Block* w, X8Step st, const Act* q,
                            std::size_t ldq, std::size_t T, std::size_t nb, float* y,
                            std::size_t ldy, const char* pf) {
    over_tokens<kX8TileTokens>(T, pf, [&]<int N>(std::size_t t, const char* p) {
      gemm_x8_tile<F, N>(w, st, q + t * ldq, ldq, nb, y + t * ldy, ldy, p);
    });
  }

  // Q4_K on the interleaved copy (BlockQ4_Kx8): per 32-element sub-block s the 8 rows' integer
  // sums of unsigned codes times activations, int16 pairs as for Q4_0 (<= 8 * 2 * 15 * 127),
  // multiplied by the 6-bit scale in the pair-adding madd (exact: <= 2 * 30480 * 63 < 2^24), then
  // per row, sub-block by sub-block within a super-block and super-block by super-block,
  //   td = fma(float(sc_s * isum_s), d_a,s, td)   (td = 0 per super-block)
  //   t_k = fma(float(m_k+4), Q_k+4, float(m_k) * Q_k) for k < 4, Q_s = d_a,s * sum(a_s),
  //   tm = (t_0 + t_1) + (t_2 + t_3),   acc = fma(td, d, acc),   macc = fma(tm, dmin, macc)
  //   y = acc - macc
  // (the terms of the plain dot(BlockQ4_K), summed in another order; d and dmin are applied once
  // per super-block). The 64 mins of a super-block are unpacked together with byte operations.
  // The 8 rows' 6-bit mins of super-block x, per sub-block s: ms[s] bytes 0..7 (rows 0..7).
  // mlo byte 8c + r holds m_2c & 15 (low nibble) and m_2c+1 & 15 (high); sc byte 8s + r holds
  // m_s >> 4 in its top two bits. mA = sub-blocks [0 1 | 4 5], mB = [2 3 | 6 7], 8 bytes (rows)
  // each.
  static TMOE_INLINE void q4k_mins(const quant::BlockQ4_Kx8& x, __m128i (&ms)[8]) {
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const __m256i ml = load32(x.mlo), s03 = load32(x.sc), s47 = load32(x.sc + 32);
    const __m256i lo = _mm256_and_si256(ml, m4),
                  hi = _mm256_and_si256(_mm256_srli_epi16(ml, 4), m4);
    const __m256i mA = _mm256_or_si256(
        _mm256_unpacklo_epi64(lo, hi),
        _mm256_and_si256(_mm256_srli_epi16(_mm256_permute2x128_si256(s03, s47, 0x20), 2), m30));
    const __m256i mB = _mm256_or_si256(
        _mm256_unpackhi_epi64(lo, hi),
        _mm256_and_si256(_mm256_srli_epi16(_mm256_permute2x128_si256(s03, s47, 0x31), 2), m30));
    const __m128i m01 = _mm256_castsi256_si128(mA), m45 = _mm256_extracti128_si256(mA, 1);
    const __m128i m23 = _mm256_castsi256_si128(mB), m67 = _mm256_extracti128_si256(mB, 1);
    ms[0] = m01, ms[1] = _mm_unpackhi_epi64(m01, m01), ms[2] = m23,
    ms[3] = _mm_unpackhi_epi64(m23, m23);
    ms[4] = m45, ms[5] = _mm_unpackhi_epi64(m45, m45), ms[6] = m67,
    ms[7] = _mm_unpackhi_epi64(m67, m67);
  }

  // NG consecutive groups (group j's block b at w[st.at(j, b)], its 8 outputs at y + 8 j) in one
  // pass over their stream.
  template <int NG>
  static void dot_x8_q4k(const quant::BlockQ4_Kx8* w, X8Step st, const Act* a, const float* qd,
                         const float* qdsum, std::size_t nb, float* y, const char* pf = nullptr) {
    const __m256i m4 = _mm256_set1_epi8(15);
#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__))
    // Row r's scale as both int16 halves of lane r: sub-block 2c from bytes 0..7 of the 16 scale
    // bytes, 2c + 1 from bytes 8..15 (each 128-bit half holds the 16 bytes).
    const __m256i sel0 = _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, 4,
                                          -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1);
    const __m256i sel1 =
        _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1, 12, -1, 12, -1,
                         13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1);
#endif
    __m256 acc[NG], macc[NG];
    for (int j = 0; j < NG; ++j) acc[j] = macc[j] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b, a += 8, qd += 8, qdsum += 8) {
      if (pf) prefetch_x8<sizeof(quant::BlockQ4_Kx8), NG>(pf, st, b);
      for (int g = 0; g < NG; ++g) {
        const quant::BlockQ4_Kx8& x = w[st.at(g, b)];
        __m256 tm = _mm256_setzero_ps();
        {
          __m128i ms[8];
          q4k_mins(x, ms);
          // Four independent chains (one chain of 8 FMAs cost ~5 % of the kernel in latency).
          __m256 t[4];
          for (int sb = 0; sb < 4; ++sb)
            t[sb] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(ms[sb])),
                                  _mm256_set1_ps(qdsum[sb]));
          for (int sb = 4; sb < 8; ++sb)
            t[sb - 4] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(ms[sb])),
                                        _mm256_set1_ps(qdsum[sb]), t[sb - 4]);
          tm = _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]));
        }
        __m256 td = _mm256_setzero_ps();
        for (int c = 0; c < 4; ++c) {
          const std::uint8_t* q = x.qs + 256 * c;
          const Act &a0 = a[2 * c], &a1 = a[2 * c + 1];
          __m256i ilo, ihi;
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
          ilo = ihi = _mm256_setzero_si256();
          for (int j = 0; j < 8; ++j) {
            const __m256i raw = load32(q + 32 * j);
            ilo = dot_us_acc(ilo, _mm256_and_si256(raw, m4), bcast4(a0.qs + 4 * j));
            ihi = dot_us_acc(ihi, _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
                             bcast4(a1.qs + 4 * j));
          }
          const __m128i scb = _mm_and_si128(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.sc + 16 * c)), _mm_set1_epi8(63));
          ilo = _mm256_mullo_epi32(ilo, _mm256_cvtepu8_epi32(scb));
          ihi = _mm256_mullo_epi32(ihi, _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(scb, scb)));
#else
          __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
          for (int j = 0; j < 8; ++j) {
            const __m256i raw = load32(q + 32 * j);
            s0 = _mm256_add_epi16(
                s0, _mm256_maddubs_epi16(_mm256_and_si256(raw, m4), bcast4(a0.qs + 4 * j)));
            s1 = _mm256_add_epi16(
                s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4),
                                         bcast4(a1.qs + 4 * j)));
          }
          const __m256i scb = _mm256_and_si256(
              _mm256_broadcastsi128_si256(
                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.sc + 16 * c))),
              _mm256_set1_epi8(63));
          ilo = _mm256_madd_epi16(s0, _mm256_shuffle_epi8(scb, sel0));
          ihi = _mm256_madd_epi16(s1, _mm256_shuffle_epi8(scb, sel1));
#endif
          td = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ilo), _mm256_set1_ps(qd[2 * c]), td);
          td = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ihi), _mm256_set1_ps(qd[2 * c + 1]), td);
        }
        acc[g] = _mm256_fmadd_ps(
            td, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.d))), acc[g]);
        macc[g] = _mm256_fmadd_ps(
            tm, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.dmin))),
            macc[g]);
      }
    }
    for (int j = 0; j < NG; ++j) _mm256_storeu_ps(y + 8 * j, _mm256_sub_ps(acc[j], macc[j]));
  }

  // Q6_K's codes (0..63) of activation block 4h + G of a super-block from its ql chunk (16h + m
  // for even G, 16h + 8 + m for odd) and qh chunk (8h + m): 4 elements of each row per lane, as
  // QuantTraits<Q6_K>::code. V: __m256i or __m512i.
  template <int G, class V>
  static TMOE_INLINE V q6k_code(V ql, V qh) {
    if constexpr (sizeof(V) == 32) {
      const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
      const __m256i lo = _mm256_and_si256(G < 2 ? ql : _mm256_srli_epi16(ql, 4), m4);
      const __m256i hi = G == 0   ? _mm256_slli_epi16(qh, 4)
                         : G == 1 ? _mm256_slli_epi16(qh, 2)
                         : G == 2 ? qh
                                  : _mm256_srli_epi16(qh, 2);
      return _mm256_or_si256(lo, _mm256_and_si256(hi, m30));
    } else {
#if defined(TMOE_QUANT_X16)
      const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
      const __m512i lo = _mm512_and_si512(G < 2 ? ql : _mm512_srli_epi16(ql, 4), m4);
      const __m512i hi = G == 0   ? _mm512_slli_epi16(qh, 4)
                         : G == 1 ? _mm512_slli_epi16(qh, 2)
                         : G == 2 ? qh
                                  : _mm512_srli_epi16(qh, 2);
      return _mm512_or_si512(lo, _mm512_and_si512(hi, m30));
#endif
    }
  }
  // f(<G>) for G = 0..3.
  template <class Fn>
  static TMOE_INLINE void for_g4(Fn&& f) {
    f.template operator()<0>(), f.template operator()<1>(), f.template operator()<2>(),
        f.template operator()<3>();
  }

  // Q6_K on the interleaved copy (BlockQ6_Kx8): per activation block 4h + G (sub-blocks s = 8h + 2G
  // and s + 1 of 16 elements) the 8 rows' integer sums of unsigned codes times activation bytes
  // over each half, i0 and i1 (dot_us_acc; maddubs pairs <= 2 * 63 * 127), then per row
  //   p = (i0 - 32 sum_0(a)) sc_s + (i1 - 32 sum_1(a)) sc_s+1   (int32; |p| <= 2 * 16 * 32 * 127 *
  //       128 < 2^24, exact as a float)
  //   acc = fma(float(p), d * d_a, acc) block by block,   y = acc
  // (the terms of the plain dot(BlockQ6_K), summed in another order; one accumulator keeps the
  // prefill tile's registers for its tokens).
  // NG groups in one pass: as dot_x8_q4k.
  template <int NG>
  static void dot_x8_q6k(const quant::BlockQ6_Kx8* w, X8Step st, const Act* a, std::size_t nb,
                         float* y, const char* pf = nullptr) {
    __m256 accs[NG];
    for (int j = 0; j < NG; ++j) accs[j] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b, a += 8) {
      if (pf) prefetch_x8<sizeof(quant::BlockQ6_Kx8), NG>(pf, st, b);
      for (int j = 0; j < NG; ++j) {
        const quant::BlockQ6_Kx8& x = w[st.at(j, b)];
        __m256& acc = accs[j];
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.d)));
        for (int h = 0; h < 2; ++h)
          for_g4([&]<int G>() {
            const Act& ab = a[4 * h + G];
            auto half = [&](int m0) {  // elements 4m .. 4m + 3 for m in m0 .. m0 + 3
              __m256i i = _mm256_setzero_si256();
              for (int m = m0; m < m0 + 4; ++m)
                i = dot_us_acc(i,
                               q6k_code<G>(load32(x.ql + 32 * (16 * h + 8 * (G % 2) + m)),
                                           load32(x.qh + 32 * (8 * h + m))),
                               bcast4(ab.qs + 4 * m));
              return i;
            };
            const __m256i i0 = half(0), i1 = half(4);
            const std::int8_t* sc = x.sc + 8 * (8 * h + 2 * G);
            const __m256i p = _mm256_add_epi32(
                _mm256_mullo_epi32(_mm256_sub_epi32(i0, _mm256_set1_epi32(32 * ab.sum[0])),
                                   _mm256_cvtepi8_epi32(load8(sc))),
                _mm256_mullo_epi32(_mm256_sub_epi32(i1, _mm256_set1_epi32(32 * ab.sum[1])),
                                   _mm256_cvtepi8_epi32(load8(sc + 8))));
            acc =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(d, _mm256_set1_ps(ab.d)), acc);
          });
      }
    }
    for (int j = 0; j < NG; ++j) _mm256_storeu_ps(y + 8 * j, accs[j]);
  }
  // 8 bytes at p in the low half.
  static TMOE_INLINE __m128i load8(const void* p) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  }

#if defined(TMOE_QUANT_X16)
  // Q4_K prefill on the interleaved copy (AVX-512 VNNI): groups g and g + 1 (16 rows; group j's
  // super-block b at w[st.at(j, b)], group g's 32-byte chunks in the low half of each vector) x
  // NT tokens per pass, each 64-byte weight vector serving the NT tokens. Per row and token the
  // arithmetic is dot_x8_q4k's step by step, so every output equals the decode GEMV's bit for
  // bit: the sub-block sums of unsigned codes times activation bytes by vpdpbusd (exact in
  // int32), times the 6-bit scale in float (|isum| <= 32 * 15 * 127 and that times 63 < 2^24, so
  // float(isum) * float(sc) is exact: dot_x8_q4k's float(isum * sc)), then td, the mins' t_k and
  // tm, acc and macc as there. The 16 rows' mins, as floats, are unpacked once per super-block
  // into mf for the NT tokens.
  template <int NT>
  static void gemm_x16_q4k_tile(const quant::BlockQ4_Kx8* w, X8Step st, const Act* a,
                                const float* qd, const float* qdsum, std::size_t lda,
                                std::size_t nb, float* y, std::size_t ldy, const char* pf) {
    __m512 acc[NT], macc[NT];
    for (int j = 0; j < NT; ++j) acc[j] = macc[j] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(15);
    alignas(64) float mf[8][16];
    for (std::size_t b = 0; b < nb; ++b, a += 8, qd += 8, qdsum += 8) {
      if (pf) prefetch_x8<sizeof(quant::BlockQ4_Kx8), 2>(pf, st, b);
      const quant::BlockQ4_Kx8& x0 = w[st.at(0, b)];
      const quant::BlockQ4_Kx8& x1 = w[st.at(1, b)];
      {
        __m128i ms0[8], ms1[8];
        q4k_mins(x0, ms0);
        q4k_mins(x1, ms1);
        for (int s = 0; s < 8; ++s)
          _mm512_store_ps(
              mf[s], _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(ms0[s], ms1[s]))));
      }
      __m512 td[NT];
      for (int j = 0; j < NT; ++j) td[j] = _mm512_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        __m512i ilo[NT], ihi[NT];
        for (int j = 0; j < NT; ++j) ilo[j] = ihi[j] = _mm512_setzero_si512();
        for (int k = 0; k < 8; ++k) {
          const __m512i raw = load2x32(x0.qs + 256 * c + 32 * k, x1.qs + 256 * c + 32 * k);
          const __m512i lo = _mm512_and_si512(raw, m4),
                        hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
          for (int j = 0; j < NT; ++j) {
            const Act* aj = a + j * lda + 2 * c;
            ilo[j] = _mm512_dpbusd_epi32(ilo[j], lo, bcast4z(aj[0].qs + 4 * k));
            ihi[j] = _mm512_dpbusd_epi32(ihi[j], hi, bcast4z(aj[1].qs + 4 * k));
            pin(ilo[j]);
            pin(ihi[j]);
          }
        }
        // Scales of sub-blocks 2c (bytes 0..7 of each group's 16) and 2c + 1 (bytes 8..15).
        const __m128i s0 = _mm_and_si128(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(x0.sc + 16 * c)), _mm_set1_epi8(63));
        const __m128i s1 = _mm_and_si128(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(x1.sc + 16 * c)), _mm_set1_epi8(63));
        const __m512 slo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(s0, s1)));
        const __m512 shi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi64(s0, s1)));
        for (int j = 0; j < NT; ++j) {
          const float* qj = qd + j * lda + 2 * c;
          td[j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ilo[j]), slo),
                                  _mm512_set1_ps(qj[0]), td[j]);
          td[j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ihi[j]), shi),
                                  _mm512_set1_ps(qj[1]), td[j]);
        }
      }
      const __m512 d = scales16(x0, x1);
      const __m512 dmin = _mm512_cvtph_ps(_mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x0.dmin))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(x1.dmin)), 1));
      for (int j = 0; j < NT; ++j) {
        const float* qs = qdsum + j * lda;
        __m512 t[4];
        for (int s = 0; s < 4; ++s)
          t[s] = _mm512_mul_ps(_mm512_load_ps(mf[s]), _mm512_set1_ps(qs[s]));
        for (int s = 4; s < 8; ++s)
          t[s - 4] = _mm512_fmadd_ps(_mm512_load_ps(mf[s]), _mm512_set1_ps(qs[s]), t[s - 4]);
        const __m512 tm = _mm512_add_ps(_mm512_add_ps(t[0], t[1]), _mm512_add_ps(t[2], t[3]));
        acc[j] = _mm512_fmadd_ps(td[j], d, acc[j]);
        macc[j] = _mm512_fmadd_ps(tm, dmin, macc[j]);
      }
    }
    for (int j = 0; j < NT; ++j) _mm512_storeu_ps(y + j * ldy, _mm512_sub_ps(acc[j], macc[j]));
  }

  // Tokens per gemm_x16_q4k_tile pass: bench_quant BM_prefill_x8<Q4_K>/512/1 (4096 x 7168, 2
  // threads, 2 runs each) 3: 1.06, 4: 1.13, 5: 1.16-1.17, 6: 1.18-1.20, 8: 1.18-1.19 TFLOP/s.
  static constexpr std::size_t kX16Q4kTileTokens = 6;

  // Q6_K prefill on the interleaved copy (AVX-512 VNNI): groups g and g + 1 (16 rows, as
  // gemm_x16_q4k_tile) x NT tokens per pass, each 64-byte code vector serving the NT tokens; per
  // row and token dot_x8_q6k's integer sums and float steps, so its bits.
  template <int NT>
  static void gemm_x16_q6k_tile(const quant::BlockQ6_Kx8* w, X8Step st, const Act* a,
                                std::size_t lda, std::size_t nb, float* y, std::size_t ldy,
                                const char* pf) {
    __m512 acc[NT];
    for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b, a += 8) {
      if (pf) prefetch_x8<sizeof(quant::BlockQ6_Kx8), 2>(pf, st, b);
      const quant::BlockQ6_Kx8& x0 = w[st.at(0, b)];
      const quant::BlockQ6_Kx8& x1 = w[st.at(1, b)];
      const __m512 d = scales16(x0, x1);
      for (int h = 0; h < 2; ++h)
        for_g4([&]<int G>() {
          __m512i i0[NT], i1[NT];
          // Elements 4m .. 4m + 3 of the block into i (m0 .. m0 + 3: one half).
          auto half = [&](__m512i(&i)[NT], int m0) {
            for (int j = 0; j < NT; ++j) i[j] = _mm512_setzero_si512();
            for (int m = m0; m < m0 + 4; ++m) {
              const std::size_t l = 32 * (16 * h + 8 * (G % 2) + m), c = 32 * (8 * h + m);
              const __m512i q =
                  q6k_code<G>(load2x32(x0.ql + l, x1.ql + l), load2x32(x0.qh + c, x1.qh + c));
              for (int j = 0; j < NT; ++j) {
                i[j] = _mm512_dpbusd_epi32(i[j], q, bcast4z(a[j * lda + 4 * h + G].qs + 4 * m));
                pin(i[j]);
              }
            }
          };
          half(i0, 0);
          half(i1, 4);
          const int s = 8 * (8 * h + 2 * G);
          const __m512i sc0 =
              _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(load8(x0.sc + s), load8(x1.sc + s)));
          const __m512i sc1 =
              _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(load8(x0.sc + s + 8), load8(x1.sc + s + 8)));
          for (int j = 0; j < NT; ++j) {
            const Act& ab = a[j * lda + 4 * h + G];
            const __m512i p = _mm512_add_epi32(
                _mm512_mullo_epi32(_mm512_sub_epi32(i0[j], _mm512_set1_epi32(32 * ab.sum[0])), sc0),
                _mm512_mullo_epi32(_mm512_sub_epi32(i1[j], _mm512_set1_epi32(32 * ab.sum[1])),
                                   sc1));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, _mm512_set1_ps(ab.d)),
                                     acc[j]);
          }
        });
    }
    for (int j = 0; j < NT; ++j) _mm512_storeu_ps(y + j * ldy, acc[j]);
  }
  // Tokens per gemm_x16_q6k_tile pass: BM_prefill_x8<Q6_K>/512/1 (2 runs each) 4: 722-749, 6:
  // 753-758, 8: 742-769 GFLOP/s.
  static constexpr std::size_t kX16Q6kTileTokens = 6;

  // Groups g and g + 1 of a Q4_K / Q6_K copy (16 rows at w, st; y: token 0's 16 outputs) x
  // tokens [0, T) of a.
  template <class F>
  static void gemm_x16_kq_group(const typename quant::RepackedX8<F>::Block* w, X8Step st,
                                const QuantActs& a, std::size_t nb, float* y, std::size_t ldy,
                                const char* pf) {
    if constexpr (std::is_same_v<F, quant::Q4_K>)
      over_tokens<kX16Q4kTileTokens>(a.T, pf, [&]<int N>(std::size_t t, const char* p) {
        const std::size_t o = t * a.ldq;
        gemm_x16_q4k_tile<N>(w, st, a.q + o, a.qd + o, a.qdsum + o, a.ldq, nb, y + t * ldy, ldy, p);
      });
    else
      over_tokens<kX16Q6kTileTokens>(a.T, pf, [&]<int N>(std::size_t t, const char* p) {
        gemm_x16_q6k_tile<N>(w, st, a.q + t * a.ldq, a.ldq, nb, y + t * ldy, ldy, p);
      });
  }
#endif
#endif

  // ---- Int8Row (one scale per row, applied by the caller) ------------------------------------
  static float dot_i8(const std::int8_t* w, const Act* a, std::size_t cols) {
    const std::size_t nb = cols / 32;
    float s = 0;
    std::size_t b = 0;
#if defined(TMOE_QUANT_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    auto one = [&](std::size_t i, __m256& acc) {
      const __m256i wq = load32(w + 32 * i), aq = load32(a[i].qs);
      const __m256i p = dot_us(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(a[i].d), acc);
    };
    for (; b + 2 <= nb; b += 2) {
      one(b, acc0);
      one(b + 1, acc1);
    }
    if (b < nb) one(b++, acc0);
    s = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; b < nb; ++b) {
      int q = 0;
      for (int j = 0; j < 32; ++j) q += w[32 * b + j] * a[b].qs[j];
      s += a[b].d * static_cast<float>(q);
    }
    if (cols % 32) {
      int q = 0;
      for (std::size_t j = 0; j < cols % 32; ++j) q += w[32 * nb + j] * a[nb].qs[j];
      s += a[nb].d * static_cast<float>(q);
    }
    return s;
  }

  // ---- NF4 (float activations) ---------------------------------------------------------------
  static float dot_nf4(const quant::BlockNF4* w, const float* x, std::size_t nb) {
#if defined(TMOE_QUANT_AVX2)
    const __m256 tlo = _mm256_loadu_ps(quant::kNf4Codebook),
                 thi = _mm256_loadu_ps(quant::kNf4Codebook + 8);
    __m256 acc = _mm256_setzero_ps();
    for (std::size_t i = 0; i < nb; ++i, x += 64) {
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
      for (int k = 0; k < 4; ++k) {
        const __m256i idx = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w[i].qs + 8 * k)));
        const __m256i hi = _mm256_srli_epi32(idx, 4);
        // permutevar8x32 reads index bits 0..2; bit 3 (moved to the sign bit) picks the half.
        const __m256 vlo =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx), _mm256_permutevar8x32_ps(thi, idx),
                             _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
        const __m256 vhi =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, hi), _mm256_permutevar8x32_ps(thi, hi),
                             _mm256_castsi256_ps(_mm256_slli_epi32(idx, 24)));
        b0 = _mm256_fmadd_ps(vlo, _mm256_loadu_ps(x + 8 * k), b0);
        b1 = _mm256_fmadd_ps(vhi, _mm256_loadu_ps(x + 32 + 8 * k), b1);
      }
      acc = _mm256_fmadd_ps(_mm256_add_ps(b0, b1), _mm256_set1_ps(w[i].absmax), acc);
    }
    return hsum(acc);
#else
    float s = 0;
    for (std::size_t i = 0; i < nb; ++i, x += 64) {
      float b = 0;
      for (int j = 0; j < 32; ++j)
        b += quant::kNf4Codebook[w[i].qs[j] & 15] * x[j] +
             quant::kNf4Codebook[w[i].qs[j] >> 4] * x[j + 32];
      s += b * w[i].absmax;
    }
    return s;
#endif
  }

  // ---- FP8 e4m3 with 128 x 128 block scales (float activations) ------------------------------
  template <bool kTable>
  static float dot_fp8(const f8_e4m3* w, const float* srow, const float* x, std::size_t cols) {
    float tail = 0;
#if defined(TMOE_QUANT_AVX2)
    __m256 acc = _mm256_setzero_ps();
    const __m128i keep = _mm_set1_epi16(static_cast<short>(0xbfff));
    const __m128i top = _mm_set1_epi8(static_cast<char>(0x80));
    __m128i nan = _mm_setzero_si128();  // bytewise max of (weight | 0x80): 0xff iff a NaN
#endif
    for (std::size_t c0 = 0; c0 < cols; c0 += 128) {
      const std::size_t n = std::min<std::size_t>(128, cols - c0);
      std::size_t i = 0;
      float t = 0;
#if defined(TMOE_QUANT_AVX2)
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
      const auto* p = reinterpret_cast<const std::uint8_t*>(w + c0);
      auto decode16 = [&](std::size_t j, __m256& v0, __m256& v1) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j));
        if constexpr (kTable) {
          v0 = _mm256_i32gather_ps(fp8_table(), _mm256_cvtepu8_epi32(raw), 4);
          v1 = _mm256_i32gather_ps(fp8_table(), _mm256_cvtepu8_epi32(_mm_srli_si128(raw, 8)), 4);
        } else {
          nan = _mm_max_epu8(nan, _mm_or_si128(raw, top));
          v0 = _mm256_cvtph_ps(
              _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), raw), 1), keep));
          v1 = _mm256_cvtph_ps(
              _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(_mm_setzero_si128(), raw), 1), keep));
        }
      };
      if (n == 128 && !kTable) {  // full block: 32 per step, 4 independent accumulators
        // 256-bit unpacks work per 128-bit lane: unpacklo gives elements 0..7 | 16..23,
        // unpackhi 8..15 | 24..31 (as f16), so x is loaded in that order.
        const __m256i keep2 = _mm256_set1_epi16(static_cast<short>(0xbfff));
        __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
        for (; i < 128; i += 32) {
          const __m256i raw = load32(p + i);
          nan = _mm_max_epu8(nan, _mm_or_si128(_mm_max_epu8(_mm256_castsi256_si128(raw),
                                                            _mm256_extracti128_si256(raw, 1)),
                                               top));
          const __m256i lo = _mm256_and_si256(
              _mm256_srai_epi16(_mm256_unpacklo_epi8(_mm256_setzero_si256(), raw), 1), keep2);
          const __m256i hi = _mm256_and_si256(
              _mm256_srai_epi16(_mm256_unpackhi_epi8(_mm256_setzero_si256(), raw), 1), keep2);
          const float* xi = x + c0 + i;
          b0 =
              _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(lo)), _mm256_loadu_ps(xi), b0);
          b1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(hi)), _mm256_loadu_ps(xi + 8),
                               b1);
          b2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1)),
                               _mm256_loadu_ps(xi + 16), b2);
          b3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1)),
                               _mm256_loadu_ps(xi + 24), b3);
        }
        b0 = _mm256_add_ps(b0, b2);
        b1 = _mm256_add_ps(b1, b3);
      }
      for (; i + 16 <= n; i += 16) {
        __m256 v0, v1;
        decode16(i, v0, v1);
        b0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x + c0 + i), b0);
        b1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + c0 + i + 8), b1);
      }
      const float s = srow[c0 / 128];
      acc = _mm256_fmadd_ps(_mm256_add_ps(b0, b1), _mm256_set1_ps(kTable ? s : s * 256.f), acc);
#else
      const float s = srow[c0 / 128];
#endif
      for (; i < n; ++i) t += w[c0 + i].to_float() * x[c0 + i];
      tail += t * s;
    }
#if defined(TMOE_QUANT_AVX2)
    tail += hsum(acc);
    if (!kTable && _mm_movemask_epi8(_mm_cmpeq_epi8(nan, _mm_set1_epi8(-1))))
      return std::numeric_limits<float>::quiet_NaN();
#endif
    return tail;
  }
#if defined(TMOE_QUANT_AVX2)
  // Two rows against one x (GEMV): full 128-column blocks here, the partial last block by
  // dot_fp8 on the plain x. xp is x prepared by prep_fp8_x (each 32 columns transposed 8 x 4,
  // times 2^e) and xmul = 2^(120 - e).
  // e4m3 -> f32 without a shuffle: each 32-bit lane of a 32-byte load holds 4 weights (columns
  // 4j .. 4j + 3 of the 32). A 16-bit srai 4 puts bytes 1 and 3 (each at the top of a 16-bit
  // half) as S.SSSS.EEEE.MMM.xxxx in their halves; bytes 0 and 2 get there with a 16-bit slli 8
  // first. The high half is then the top of an f32 as it stands, the low half after a 32-bit
  // slli 16, and a mask keeps S.EEEE.MMM as f32's sign, low 4 exponent bits and top 3 mantissa
  // bits: the weight times 2^-120, exact for normals and subnormals (an f32 subnormal for
  // e4m3's). The x scale 2^e puts the products far from f32's subnormal range. Per 32 weights:
  // 5 shifts, 4 ands, 4 FMAs (+ 2 ops of NaN test unless kCheckNan is false: w.nan_free). The
  // 32-bit variant (byte k shifted to the top, 7 shifts) ran ~8% slower, the f16 decode + F16C
  // conversion before it at ~0.7x (docs/quantization.md).
  template <bool kCheckNan>
  static void dot_fp8_pair(const f8_e4m3* w0, const f8_e4m3* w1, const float* s0, const float* s1,
                           const float* x, const float* xp, float xmul, std::size_t cols, float& y0,
                           float& y1, const f8_e4m3* next0, const f8_e4m3* next1) {
    const __m256i top = _mm256_set1_epi8(static_cast<char>(0x80));
    const __m256i fmask = _mm256_set1_epi32(static_cast<int>(0x87f00000u));
    const std::size_t nfull = cols / 128;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256i nan0 = _mm256_setzero_si256(), nan1 = _mm256_setzero_si256();  // as in dot_fp8
    auto as_f32 = [&](__m256i r) { return _mm256_castsi256_ps(_mm256_and_si256(r, fmask)); };
    for (std::size_t kb = 0; kb < nfull; ++kb) {
      const auto* p0 = reinterpret_cast<const std::uint8_t*>(w0 + kb * 128);
      const auto* p1 = reinterpret_cast<const std::uint8_t*>(w1 + kb * 128);
      prefetch_span<128>(next0 + kb * 128);  // the next pair of rows
      prefetch_span<128>(next1 + kb * 128);
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), c0 = _mm256_setzero_ps(),
             c1 = _mm256_setzero_ps();
      for (std::size_t i = 0; i < 128; i += 32) {
        const float* xi = xp + kb * 128 + i;
        const __m256 x0 = _mm256_loadu_ps(xi), x1 = _mm256_loadu_ps(xi + 8),
                     x2 = _mm256_loadu_ps(xi + 16), x3 = _mm256_loadu_ps(xi + 24);
        const __m256i r0 = load32(p0 + i), r1 = load32(p1 + i);
        if constexpr (kCheckNan) {
          nan0 = _mm256_max_epu8(nan0, _mm256_or_si256(r0, top));
          nan1 = _mm256_max_epu8(nan1, _mm256_or_si256(r1, top));
        }
        const __m256i h0 = _mm256_srai_epi16(r0, 4), h1 = _mm256_srai_epi16(r1, 4);
        const __m256i l0 = _mm256_srai_epi16(_mm256_slli_epi16(r0, 8), 4),
                      l1 = _mm256_srai_epi16(_mm256_slli_epi16(r1, 8), 4);
        a0 = _mm256_fmadd_ps(as_f32(_mm256_slli_epi32(l0, 16)), x0, a0);
        a1 = _mm256_fmadd_ps(as_f32(_mm256_slli_epi32(h0, 16)), x1, a1);
        a0 = _mm256_fmadd_ps(as_f32(l0), x2, a0);
        a1 = _mm256_fmadd_ps(as_f32(h0), x3, a1);
        c0 = _mm256_fmadd_ps(as_f32(_mm256_slli_epi32(l1, 16)), x0, c0);
        c1 = _mm256_fmadd_ps(as_f32(_mm256_slli_epi32(h1, 16)), x1, c1);
        c0 = _mm256_fmadd_ps(as_f32(l1), x2, c0);
        c1 = _mm256_fmadd_ps(as_f32(h1), x3, c1);
      }
      acc0 = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(s0[kb] * xmul), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_add_ps(c0, c1), _mm256_set1_ps(s1[kb] * xmul), acc1);
    }
    const __m256i ff = _mm256_set1_epi8(-1);
    y0 = _mm256_movemask_epi8(_mm256_cmpeq_epi8(nan0, ff)) ? std::numeric_limits<float>::quiet_NaN()
                                                           : hsum(acc0);
    y1 = _mm256_movemask_epi8(_mm256_cmpeq_epi8(nan1, ff)) ? std::numeric_limits<float>::quiet_NaN()
                                                           : hsum(acc1);
    if (cols % 128) {
      const std::size_t c = nfull * 128;
      y0 += dot_fp8<false>(w0 + c, s0 + nfull, x + c, cols - c);
      y1 += dot_fp8<false>(w1 + c, s1 + nfull, x + c, cols - c);
    }
  }

  // xp[0 .. cols rounded down to 128) = x for dot_fp8_pair: within each 32 columns,
  // xp[8k + j] = x[4j + k] * 2^e, e chosen so that max |x| * 2^e is about 2^100 (e = 0 when x
  // holds an Inf or NaN, or is all zero). Returns 2^(120 - e), the factor of each block's sum.
  static float prep_fp8_x(const float* x, std::size_t cols, float* xp) {
    const std::size_t n = cols / 128 * 128;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mv = _mm256_setzero_ps();
    for (std::size_t i = 0; i < n; i += 8)  // max_ps(m, NaN) keeps the NaN
      mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask), mv);
    alignas(32) float mm[8];
    _mm256_store_ps(mm, mv);
    float m = 0;
    for (float v : mm) m = std::isnan(v) ? v : std::max(m, v);
    int e = 0;
    if (m > 0 && std::isfinite(m)) e = std::clamp(100 - std::ilogb(m), 0, 127);
    const __m256 f = _mm256_set1_ps(std::ldexp(1.0f, e));
    for (std::size_t c = 0; c < n; c += 32) {
      // rows (x0..3 | x16..19), (x4..7 | x20..23), (x8..11 | x24..27), (x12..15 | x28..31),
      // then a 4 x 4 transpose in each 128-bit lane: out k = (x[k], x[4 + k], ..., x[28 + k]).
      const __m256 v0 = _mm256_loadu_ps(x + c), v1 = _mm256_loadu_ps(x + c + 8),
                   v2 = _mm256_loadu_ps(x + c + 16), v3 = _mm256_loadu_ps(x + c + 24);
      const __m256 r0 = _mm256_permute2f128_ps(v0, v2, 0x20),
                   r1 = _mm256_permute2f128_ps(v0, v2, 0x31),
                   r2 = _mm256_permute2f128_ps(v1, v3, 0x20),
                   r3 = _mm256_permute2f128_ps(v1, v3, 0x31);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                   t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      _mm256_storeu_ps(xp + c, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0x44), f));
      _mm256_storeu_ps(xp + c + 8, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0xee), f));
      _mm256_storeu_ps(xp + c + 16, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0x44), f));
      _mm256_storeu_ps(xp + c + 24, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0xee), f));
    }
    return std::ldexp(1.0f, 120 - e);
  }
#endif

  static const float* fp8_table() {
    static const auto table = [] {
      struct T {
        float v[256];
      } t{};
      for (int b = 0; b < 256; ++b)
        t.v[b] = f8_e4m3::from_bits(static_cast<std::uint8_t>(b)).to_float();
      return t;
    }();
    return table.v;
  }

  // ---- prefill GEMM: weights dequantized to float, the float GEMM's register tile -------------
  // For T >= kQuantGemmMinT tokens (matmul_quant): a block of NR rows x KC columns of W is
  // dequantized once into float (L1), transposed into the float GEMM's packed panels
  // (BlasImpl::pack_w) and multiplied with every token through BlasImpl::tile, X packed once
  // per call (BlasKernels::gemm_pack_x). Activations stay float (no Q8 rounding); the weights'
  // decode costs O(out * in) per call instead of O(T * out * in).
  using G = BlasImpl<Arch>;
  static_assert(G::KC % 256 == 0, "the GEMM depth block must hold whole super-blocks");

  // out[0 .. n) = dequantized columns [c0, c0 + n) of row o; c0 is a multiple of KC (so of the
  // block size), n a multiple of the block size or the rest of the row.
  // Rows inside the interleaved copy's groups (w.packed) are read from the copy (quant::unpack_x8,
  // the same blocks): after loading, decode and prefill touch only the copy, and the stored
  // blocks' pages (a mapped file's) can leave memory instead of doubling the resident weights.
  template <class F>
  static void dequant_segment(const quant::QuantMatrixView<F>& w, std::size_t o, std::size_t c0,
                              std::size_t n, float* out) {
    if constexpr (quant::kRepackX8<F>) {
      if (w.packed && o < w.rows / 8 * 8) {
        const std::size_t b0 = c0 / F::kBlockSize, nb = (n + F::kBlockSize - 1) / F::kBlockSize;
        const quant::X8Order order = quant::x8_order(w);
        const std::size_t bs = order.block_stride(o / 8);  // the row group's blocks
        const auto* pk = static_cast<const typename quant::RepackedX8<F>::Block*>(w.packed) +
                         order.first(o / 8) + b0 * bs;
        typename F::Block blk[kUnpackBatch];
        for (std::size_t b = 0; b < nb; b += kUnpackBatch) {
          const std::size_t m = std::min(kUnpackBatch, nb - b);
          for (std::size_t i = 0; i < m; ++i) blk[i] = quant::unpack_x8<F>(pk[(b + i) * bs], o % 8);
          dequant_blocks<F>(blk, m, out + b * F::kBlockSize);
        }
        return;
      }
    }
    const auto* row = w.row(o);
    if constexpr (std::is_same_v<F, quant::Int8Row>) {
      const float s = w.scales[o];
      for (std::size_t c = 0; c < n; ++c) out[c] = s * static_cast<float>(row[c0 + c]);
    } else if constexpr (std::is_same_v<F, quant::Fp8Block>) {
      const float* s = w.scales + (o / 128) * w.scale_stride;
      std::size_t c = 0;
#if defined(TMOE_QUANT_AVX2)
      // 16 at a time with the f16 bit trick (dot_fp8); c0 is a multiple of 256, so a group of 16
      // never straddles a 128-column scale block. Groups holding a NaN pattern go the scalar way.
      const __m128i keep = _mm_set1_epi16(static_cast<short>(0xbfff));
      const __m128i top = _mm_set1_epi8(static_cast<char>(0x80)), ff = _mm_set1_epi8(-1);
      for (; c + 16 <= n; c += 16) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c0 + c));
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(raw, top), ff))) {
          for (std::size_t j = c; j < c + 16; ++j)
            out[j] = row[c0 + j].to_float() * s[(c0 + j) / 128];
          continue;
        }
        const __m256 sc = _mm256_set1_ps(s[(c0 + c) / 128] * 256.f);
        const __m128i lo =
            _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), raw), 1), keep);
        const __m128i hi =
            _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(_mm_setzero_si128(), raw), 1), keep);
        _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_cvtph_ps(lo), sc));
        _mm256_storeu_ps(out + c + 8, _mm256_mul_ps(_mm256_cvtph_ps(hi), sc));
      }
#endif
      for (; c < n; ++c) out[c] = row[c0 + c].to_float() * s[(c0 + c) / 128];
    } else {
      const std::size_t b0 = c0 / F::kBlockSize, nb = (n + F::kBlockSize - 1) / F::kBlockSize;
      dequant_blocks<F>(row + b0, nb, out);
    }
  }

  // out[0 .. nb * kBlockSize) = the nb blocks at row, dequantized (block formats).
  static constexpr std::size_t kUnpackBatch = 8;
  template <class F>
  static void dequant_blocks(const typename F::Block* row, std::size_t nb, float* out) {
#if defined(TMOE_QUANT_AVX2)
    if constexpr (std::is_same_v<F, quant::Q8_0>) {
      for (std::size_t b = 0; b < nb; ++b, out += 32) {
        const __m256 d = _mm256_set1_ps(half(row[b].d.bits));
        for (int j = 0; j < 32; j += 8) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row[b].qs + j));
          _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
      }
      return;
    } else if constexpr (std::is_same_v<F, quant::Q4_0>) {
      const __m128i m4 = _mm_set1_epi8(15), k8 = _mm_set1_epi8(8);
      for (std::size_t b = 0; b < nb; ++b, out += 32) {
        const __m256 d = _mm256_set1_ps(half(row[b].d.bits));
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[b].qs));
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m4), k8);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), k8);
        auto put = [&](__m128i q, float* p) {
          _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
          _mm256_storeu_ps(
              p + 8,
              _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), d));
        };
        put(lo, out);
        put(hi, out + 16);
      }
      return;
    } else if constexpr (std::is_same_v<F, quant::Q4_K>) {
      // Sub-block 2c: low nibbles of qs[32c .. 32c + 32), sub-block 2c + 1: high nibbles.
      for (std::size_t b = 0; b < nb; ++b, out += 256) {
        const quant::BlockQ4_K& x = row[b];
        const float d = half(x.d.bits), dmin = half(x.dmin.bits);
        for (int sb = 0; sb < 8; ++sb) {
          int sc, m;
          quant::q4k_scale_min(x.scales, sb, sc, m);
          const __m256 vd = _mm256_set1_ps(d * static_cast<float>(sc)),
                       vm = _mm256_set1_ps(dmin * static_cast<float>(m));
          const std::uint8_t* q = x.qs + 32 * (sb / 2);
          for (int j = 0; j < 32; j += 8) {
            __m256i v =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j)));
            v = sb % 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15));
            _mm256_storeu_ps(out + 32 * sb + j, _mm256_fmsub_ps(_mm256_cvtepi32_ps(v), vd, vm));
          }
        }
      }
      return;
    } else if constexpr (std::is_same_v<F, quant::Q6_K>) {
      // Codes of 32 consecutive elements as in dot(BlockQ6_K): q[g] covers 128h + 32g .. + 32.
      const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
      for (std::size_t b = 0; b < nb; ++b, out += 256) {
        const quant::BlockQ6_K& x = row[b];
        const float d = half(x.d.bits);
        for (int h = 0; h < 2; ++h) {
          const __m256i ql0 = load32(x.ql + 64 * h), ql1 = load32(x.ql + 64 * h + 32);
          const __m256i qh = load32(x.qh + 32 * h);
          alignas(32) std::uint8_t q[4][32];
          _mm256_store_si256(reinterpret_cast<__m256i*>(q[0]),
                             _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                             _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)));
          _mm256_store_si256(reinterpret_cast<__m256i*>(q[1]),
                             _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                             _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)));
          _mm256_store_si256(reinterpret_cast<__m256i*>(q[2]),
                             _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                             _mm256_and_si256(qh, m30)));
          _mm256_store_si256(reinterpret_cast<__m256i*>(q[3]),
                             _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)));
          for (int g = 0; g < 4; ++g)
            for (int j = 0; j < 32; j += 8) {
              const int e = 128 * h + 32 * g + j;
              const __m256 sc = _mm256_set1_ps(d * static_cast<float>(x.scales[e / 16]));
              const __m256i v = _mm256_sub_epi32(
                  _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q[g] + j))),
                  _mm256_set1_epi32(32));
              _mm256_storeu_ps(out + e, _mm256_mul_ps(_mm256_cvtepi32_ps(v), sc));
            }
        }
      }
      return;
    }
#endif
    for (std::size_t b = 0; b < nb; ++b)
      quant::QuantTraits<F>::dequantize_block(row[b], out + b * F::kBlockSize);
  }

  // y[t * ldy + o] for o in [o_begin, o_end), t < T, from X packed by BlasKernels::gemm_pack_x.
  template <class F>
  static void gemm(const quant::QuantMatrixView<F>& w, const float* xp, std::size_t T, float* y,
                   std::size_t ldy, std::size_t o_begin, std::size_t o_end) {
    constexpr std::size_t KC = G::KC, NR = G::NR, MR = G::MR, MC = G::MC, NC = G::NC;
    const std::size_t in = w.cols;
    if (in == 0) {
      for (std::size_t t = 0; t < T; ++t)
        std::fill(y + t * ldy + o_begin, y + t * ldy + o_end, 0.f);
      return;
    }
    thread_local detail::ScratchBuffer scratch_w, scratch_rows;
    float* wp = scratch_w.get(NC * KC);       // packed W block (nc, kc)
    float* rows = scratch_rows.get(NR * KC);  // NR dequantized rows (nr, kc)
    const std::size_t n_blocks = (o_end - o_begin + NC - 1) / NC;
    const std::size_t nc_step = ((o_end - o_begin + n_blocks - 1) / n_blocks + NR - 1) / NR * NR;
    for (std::size_t jc = o_begin; jc < o_end; jc += nc_step) {
      const std::size_t nc = std::min(nc_step, o_end - jc);
      for (std::size_t p = 0, pc = 0; pc < in; ++p, pc += KC) {
        const std::size_t kc = std::min(KC, in - pc);
        for (std::size_t jr = 0; jr < nc; jr += NR) {
          const std::size_t nr = std::min(NR, nc - jr);
          for (std::size_t r = 0; r < nr; ++r)
            dequant_segment(w, jc + jr + r, pc, kc, rows + r * kc);
          G::pack_w(rows, kc, nr, kc, wp + jr * kc);
        }
        const float* xblock = xp + p * G::x_block_stride(T);
        for (std::size_t ic = 0; ic < T; ic += MC) {
          const std::size_t mc = std::min(MC, T - ic);
          for (std::size_t jr = 0; jr < nc; jr += NR)
            for (std::size_t ir = 0; ir < mc; ir += MR)
              G::tile(xblock + (ic + ir) * kc, wp + jr * kc, kc, y + (ic + ir) * ldy + jc + jr, ldy,
                      std::min(MR, mc - ir), std::min(NR, nc - jr), pc > 0);
        }
      }
    }
  }

#if defined(TMOE_QUANT_AVX2)
  // G consecutive groups (8 G rows) against one activation row: dot_x16 for pairs of groups under
  // AVX-512 VNNI, dot_x8 otherwise (the same bits either way).
  template <class F, int G>
  static TMOE_INLINE void dot_groups(const typename quant::RepackedX8<F>::Block* w, X8Step st,
                                     const Act* a, std::size_t nb, float* y, const char* pf) {
#if defined(TMOE_QUANT_X16)
    if constexpr (G % 2 == 0) {
      dot_x16<F, G / 2>(w, st, a, nb, y, pf);
      return;
    }
#endif
    dot_x8<F, G>(w, st, a, nb, y, pf);
  }
#endif

  // ---- matrix driver: tiles of 16 output rows x 32 tokens -------------------------------------
  // With an interleaved copy (w.packed, Q4_0 / Q8_0 / Q4_K / Q6_K), the whole 8-row groups inside
  // [o_begin, o_end) run dot_x8; rows outside them (range edges, the rows % 8 tail) run the
  // per-row kernels on w.blocks.
  template <class F, bool kTable = false>
  static void rows(const quant::QuantMatrixView<F>& w, const QuantActs& a, float* y,
                   std::size_t ldy, std::size_t o_begin, std::size_t o_end) {
#if defined(TMOE_QUANT_AVX2)
    if constexpr (quant::kRepackX8<F>) {
      const std::size_t g0 = (o_begin + 7) / 8, g1 = std::min(o_end, w.rows) / 8;
      if (w.packed && g0 < g1) {
        rows_plain<F, kTable>(w, a, y, ldy, o_begin, 8 * g0);
        const auto* pk = static_cast<const typename quant::RepackedX8<F>::Block*>(w.packed);
        const std::size_t nb = w.blocks_per_row();
        const quant::X8Order order = quant::x8_order(w);
        // Groups per pass from group g: a whole unit where [g, g + unit) is one inside the range
        // (Q4_0 / Q8_0: 4 groups, one contiguous stream, with AVX-512 VNNI as two 16-row
        // vectors; Q4_K / Q6_K: 2 groups, one 16-row vector under VNNI), else pairs (their
        // activation broadcasts shared; inside a unit from an even group) or single groups.
        auto groups_at = [&](std::size_t g) -> std::size_t {
          if (order.in_unit(g) && g % order.unit == 0 && g + order.unit <= g1) return order.unit;
          const bool pair = g + 2 <= g1 && (!order.in_unit(g) || g % 2 == 0);
          return pair ? 2 : 1;
        };
        static_assert(quant::kX8Unit<F> == 2 || quant::kX8Unit<F> == 4, "passes of 1, 2, 4 groups");
        // One prefetch per block kX8PrefetchBytes ahead of the pass's stream (first token only,
        // the later ones find the lines cached). A unit's stream runs on into the next unit's;
        // groups stored one after another (the groups after the last whole unit) start a
        // new stream per group, so each pass there also prefetches the heads of the groups the
        // next pass reads, from here to the end of the range's first pass for the first one
        // (when a group is longer than two such heads).
        constexpr std::size_t kHead = kX8PrefetchBytes;
        const std::size_t group_bytes = nb * sizeof(typename quant::RepackedX8<F>::Block);
        auto prefetch_heads = [&](std::size_t ga, std::size_t gb) {
          if (group_bytes <= 2 * kHead) return;
          for (std::size_t h = ga; h < std::min(gb, g1); ++h)
            if (!order.in_unit(h))
              prefetch_span<kHead>(reinterpret_cast<const char*>(pk + order.first(h)));
        };
        prefetch_heads(g0, g0 + 2);
        auto pf_of = [&](std::size_t g) {
          return reinterpret_cast<const char*>(pk + order.first(g)) + kX8PrefetchBytes;
        };
        if constexpr (!quant::kX8KQuant<F>)
          if (a.T > 1) {
            // Several tokens: gemm_x8_tile (the same bits per row and token as dot_x8); with
            // AVX-512 VNNI pairs of groups through gemm_x16_tile (the same bits again).
            for (std::size_t g = g0; g < g1;) {
#if defined(TMOE_QUANT_X16)
              if (groups_at(g) >= 2) {
                gemm_x16_group<F>(pk + order.first(g), x8_step(order, g), a.q, a.ldq, a.T, nb,
                                  y + 8 * g, ldy, pf_of(g));
                g += 2;
                continue;
              }
#endif
              gemm_x8_group<F>(pk + order.first(g), x8_step(order, g), a.q, a.ldq, a.T, nb,
                               y + 8 * g, ldy, pf_of(g));
              ++g;
            }
            rows_plain<F, kTable>(w, a, y, ldy, 8 * g1, o_end);
            return;
          }
        for (std::size_t g = g0; g < g1;) {
          const std::size_t n = groups_at(g);
          prefetch_heads(g + n, g + 2 * n);
          const auto* wg = pk + order.first(g);
          const X8Step st = x8_step(order, g);
#if defined(TMOE_QUANT_X16)
          // Q4_K / Q6_K under VNNI: a unit's pair of groups (one stream) through
          // gemm_x16_q4k / q6k_tile, every T (the same bits as dot_x8_q4k / q6k per token).
          if constexpr (quant::kX8KQuant<F>)
            if (n == 2) {
              gemm_x16_kq_group<F>(wg, st, a, nb, y + 8 * g, ldy, pf_of(g));
              g += n;
              continue;
            }
#endif
          for (std::size_t t = 0; t < a.T; ++t) {
            const char* pf = t == 0 ? pf_of(g) : nullptr;
            float* yt = y + t * ldy + 8 * g;
            const Act* at = a.q + t * a.ldq;
            if constexpr (std::is_same_v<F, quant::Q4_K>) {
              const float *qd = a.qd + t * a.ldq, *qs = a.qdsum + t * a.ldq;
              if (n == 2)
                dot_x8_q4k<2>(wg, st, at, qd, qs, nb, yt, pf);
              else
                dot_x8_q4k<1>(wg, st, at, qd, qs, nb, yt, pf);
            } else if constexpr (std::is_same_v<F, quant::Q6_K>) {
              if (n == 2)
                dot_x8_q6k<2>(wg, st, at, nb, yt, pf);
              else
                dot_x8_q6k<1>(wg, st, at, nb, yt, pf);
            } else if (n == 4) {
              dot_groups<F, 4>(wg, st, at, nb, yt, pf);
            } else if (n == 2) {
              dot_groups<F, 2>(wg, st, at, nb, yt, pf);
            } else {
              dot_groups<F, 1>(wg, st, at, nb, yt, pf);
            }
          }
          g += n;
        }
        rows_plain<F, kTable>(w, a, y, ldy, 8 * g1, o_end);
        return;
      }
    }
#endif
    rows_plain<F, kTable>(w, a, y, ldy, o_begin, o_end);
  }

  template <class F, bool kTable>
  static void rows_plain(const quant::QuantMatrixView<F>& w, const QuantActs& a, float* y,
                         std::size_t ldy, std::size_t o_begin, std::size_t o_end) {
    constexpr std::size_t kRowTile = 16, kTokenTile = 32;
#if defined(TMOE_QUANT_AVX2)
    // Fp8Block: x prepared once per call for dot_fp8_pair (up to kFp8PairMaxT tokens; more
    // run dot_fp8 row by row: only the table variant and direct calls get there, prefill
    // takes the GEMM).
    constexpr std::size_t kFp8PairMaxT = 32;
    [[maybe_unused]] const float* xp = nullptr;
    [[maybe_unused]] float xmul[kFp8PairMaxT] = {};
    if constexpr (std::is_same_v<F, quant::Fp8Block> && !kTable) {
      if (a.T <= kFp8PairMaxT && o_end - o_begin >= 2) {
        thread_local detail::ScratchBuffer scratch;
        float* p = scratch.get(a.T * w.cols);
        for (std::size_t t = 0; t < a.T; ++t)
          xmul[t] = prep_fp8_x(a.x + t * a.ldx, w.cols, p + t * w.cols);
        xp = p;
      }
    }
#endif
    for (std::size_t ob = o_begin; ob < o_end; ob += kRowTile) {
      const std::size_t oe = std::min(o_end, ob + kRowTile);
      for (std::size_t tb = 0; tb < a.T; tb += kTokenTile) {
        const std::size_t te = std::min(a.T, tb + kTokenTile);
        std::size_t o = ob;
#if defined(TMOE_QUANT_AVX2)
        if constexpr (std::is_same_v<F, quant::Fp8Block> && !kTable)
          for (; xp && o + 2 <= oe; o += 2)
            for (std::size_t t = tb; t < te; ++t)
              (w.nan_free ? &dot_fp8_pair<false>
                          : &dot_fp8_pair<true>)(w.row(o), w.row(o + 1),
                                                 w.scales + (o / 128) * w.scale_stride,
                                                 w.scales + ((o + 1) / 128) * w.scale_stride,
                                                 a.x + t * a.ldx, xp + t * w.cols, xmul[t], w.cols,
                                                 y[t * ldy + o], y[t * ldy + o + 1],
                                                 w.row(o) + 2 * w.row_stride,
                                                 w.row(o) + 3 * w.row_stride);
        if constexpr (std::is_same_v<F, quant::Q4_0> || std::is_same_v<F, quant::Q8_0>)
          for (; o + 4 <= oe; o += 4)
            for (std::size_t t = tb; t < te; ++t) {
              float s[4];
              dot4(w.row(o), w.row_stride, a.q + t * a.ldq, w.blocks_per_row(), s);
              for (int r = 0; r < 4; ++r) y[t * ldy + o + r] = s[r];
            }
#endif
        for (; o < oe; ++o)
          for (std::size_t t = tb; t < te; ++t) y[t * ldy + o] = dot_row<F, kTable>(w, o, a, t);
      }
    }
  }

  template <class F, bool kTable>
  static TMOE_INLINE float dot_row(const quant::QuantMatrixView<F>& w, std::size_t o,
                                   const QuantActs& a, std::size_t t) {
    if constexpr (std::is_same_v<F, quant::Int8Row>)
      return w.scales[o] * dot_i8(w.row(o), a.q + t * a.ldq, w.cols);
    else if constexpr (std::is_same_v<F, quant::Fp8Block>)
      return dot_fp8<kTable>(w.row(o), w.scales + (o / 128) * w.scale_stride, a.x + t * a.ldx,
                             w.cols);
    else if constexpr (std::is_same_v<F, quant::NF4>)
      return dot_nf4(w.row(o), a.x + t * a.ldx, w.blocks_per_row());
    else if constexpr (std::is_same_v<F, quant::Q4_K>)
      return dot(w.row(o), a.q + t * a.ldq, a.qd + t * a.ldq, a.qdsum + t * a.ldq,
                 w.blocks_per_row(), w.row(o) + w.row_stride);
    else if constexpr (std::is_same_v<F, quant::Q6_K>)
      return dot(w.row(o), a.q + t * a.ldq, w.blocks_per_row(), w.row(o) + w.row_stride);
    else
      return dot(w.row(o), a.q + t * a.ldq, w.blocks_per_row());
  }
};

template <class Arch>
QuantKernels make_quant_kernels() {
  using I = QuantImpl<Arch>;
  QuantKernels k;
  k.quantize_act = &I::quantize_act;
  k.rows_q8_0 = &I::template rows<quant::Q8_0>;
  k.rows_q4_0 = &I::template rows<quant::Q4_0>;
  k.rows_q4_k = &I::template rows<quant::Q4_K>;
  k.rows_q6_k = &I::template rows<quant::Q6_K>;
  k.rows_nf4 = &I::template rows<quant::NF4>;
  k.rows_int8_row = &I::template rows<quant::Int8Row>;
  k.rows_fp8_block = &I::template rows<quant::Fp8Block>;
  k.rows_fp8_block_table = &I::template rows<quant::Fp8Block, true>;
  k.gemm_q8_0 = &I::template gemm<quant::Q8_0>;
  k.gemm_q4_0 = &I::template gemm<quant::Q4_0>;
  k.gemm_q4_k = &I::template gemm<quant::Q4_K>;
  k.gemm_q6_k = &I::template gemm<quant::Q6_K>;
  k.gemm_nf4 = &I::template gemm<quant::NF4>;
  k.gemm_int8_row = &I::template gemm<quant::Int8Row>;
  k.gemm_fp8_block = &I::template gemm<quant::Fp8Block>;
#if defined(TMOE_QUANT_AVX2)
  k.x8_int_prefill = true;
#endif
#if defined(TMOE_QUANT_X16)
  k.x8_int_prefill_q8_0 = true;
  k.x8_int_prefill_q4_k = true;
  k.x8_int_prefill_q6_k = true;
#endif
  return k;
}

}  // namespace tmoe::cpu
