// tmoe/backend/cpu/attention.hpp: online-softmax ("flash") attention for one query row over a
// range of cached keys, built from the AttentionKernels family.
//
// For one query q and keys j in [j0, j1), processed in tiles of kAttnTile keys:
//   s_j  = scale * (q1 . K1_j + q2 . K2_j)             (K2 optional: MLA's shared rope key)
//   m'   = max(m, max_j s_j);  c = exp(m - m')
//   l    = c * l + sum_j exp(s_j - m')
//   acc  = c * acc + sum_j exp(s_j - m') V_j
//   out  = acc / l
// so the T x T score matrix is never materialized: per query we hold kAttnTile scores and one
// DV-wide accumulator. All arithmetic float32; exp via xsimd. Key/value rows are contiguous with
// a row stride (ld*), so one head's cache [capacity, D] is scanned linearly.
//
// flash_attend_rows runs the same recurrence for a block of up to kAttnBlockRows query rows that
// read the same keys (prefill: the query heads of one KV head over several tokens, or all MLA
// heads of a token block over the shared latent cache), each row with its own key range
// [lo_r, hi_r) (causal / sliding window). Per key tile the scores are a small matrix product
// (scores_rows: RS rows x 4 keys per register tile, so each key load serves RS rows) and the
// value update another (accumulate_rows: 6 rows x 2 batches of values, each value load serving
// 6 rows), instead of one row at a time re-reading every key and value row from L2 (measured
// ~4x less efficient per FLOP than the GEMM on the V2-Lite prefill, docs/performance.md). The
// scale is applied to the scores, not to q (rounding differs from flash_attend_row's).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include "tmoe/backend/cpu/simd.hpp"
#include "tmoe/config.hpp"

namespace tmoe::cpu {

inline constexpr std::size_t kAttnTile = 64;

struct AttentionKernels {
  // s[j] (+)= q . k[j * ldk : j * ldk + d] for j in [0, n).
  void (*scores)(const float* q, const float* k, std::size_t ldk, std::size_t n, std::size_t d,
                 float* s, bool accumulate);
  // One online-softmax step over n scores (already scaled): updates running max *m, running
  // sum *l and acc (dv) with the rows v[j * ldv], j in [0, n). Overwrites s with probabilities.
  void (*softmax_accumulate)(float* s, std::size_t n, const float* v, std::size_t ldv,
                             std::size_t dv, float* acc, float* m, float* l);
  // Block kernels (flash_attend_rows). s[r * lds + j] (+)= q_r . k_j for r < m, j < n: query
  // rows ldq apart, key rows ldk apart, d wide.
  void (*scores_rows)(const float* q, std::size_t ldq, std::size_t m, const float* k,
                      std::size_t ldk, std::size_t n, std::size_t d, float* s, std::size_t lds,
                      bool accumulate);
  // One online-softmax step of one row over n raw scores: s[j] *= scale for j in [lo, hi), the
  // rest masked; updates *m and *l, overwrites s with the probabilities (0 where masked) and
  // returns the factor c the row's accumulator must be multiplied by.
  float (*softmax_tile)(float* s, std::size_t n, std::size_t lo, std::size_t hi, float scale,
                        float* m, float* l);
  // acc[r * lda + i] = c[r] * acc[r * lda + i] + sum_j p[r * ldp + j] v[j * ldv + i] for r < m,
  // i < dv, j < n.
  void (*accumulate_rows)(const float* p, std::size_t ldp, std::size_t m, const float* v,
                          std::size_t ldv, std::size_t n, std::size_t dv, const float* c,
                          float* acc, std::size_t lda);
};

template <class Arch>
struct AttentionImpl {
  using B = fbatch<Arch>;
  static constexpr std::size_t L = B::size;

  // L keys at a time: one accumulator per key, reduced together by haddp (lane r = sum of
  // accumulator r), so the horizontal reduction costs one transpose-add per L keys.
  static void scores(const float* q, const float* k, std::size_t ldk, std::size_t n, std::size_t d,
                     float* s, bool accumulate) {
    std::size_t j = 0;
    const std::size_t dv = d - d % L;
    for (; j + L <= n; j += L) {
      B acc[L];
      for (std::size_t r = 0; r < L; ++r) acc[r] = B(0.f);
      for (std::size_t i = 0; i < dv; i += L) {
        const B qv = B::load_unaligned(q + i);
        for (std::size_t r = 0; r < L; ++r)
          acc[r] = xsimd::fma(qv, B::load_unaligned(k + (j + r) * ldk + i), acc[r]);
      }
      alignas(64) float sums[L];
      // xsimd 8.1's haddp gives wrong sums for 16-lane AVX-512 batches (seen on a Sapphire
      // Rapids-class Xeon): reduce each accumulator on its own there.
      if constexpr (L <= 8) {
        xsimd::haddp(acc).store_aligned(sums);
      } else {
        for (std::size_t r = 0; r < L; ++r) sums[r] = reduce_add(acc[r]);
      }
      for (std::size_t r = 0; r < L; ++r) {
        float v = sums[r];
        for (std::size_t i = dv; i < d; ++i) v += q[i] * k[(j + r) * ldk + i];
        s[j + r] = accumulate ? s[j + r] + v : v;
      }
    }
    for (; j < n; ++j) {
      const float* kr = k + j * ldk;
      B a0(0.f);
      std::size_t i = 0;
      for (; i + L <= d; i += L)
        a0 = xsimd::fma(B::load_unaligned(q + i), B::load_unaligned(kr + i), a0);
      float r = reduce_add(a0);
      for (; i < d; ++i) r += q[i] * kr[i];
      s[j] = accumulate ? s[j] + r : r;
    }
  }

  // The online-softmax update shared by softmax_accumulate and softmax_tile: s[j] = exp(s[j] - mx)
  // for j in [lo, hi), *l = c * *l + sum_j s[j], *m = mx (the new running max, >= the old);
  // returns c = exp(old max - mx), 0 when there was none.
  static TMOE_INLINE float exp_rescale(float* s, std::size_t lo, std::size_t hi, float mx, float* m,
                                       float* l) {
    const float c = (*m == -std::numeric_limits<float>::infinity()) ? 0.f : std::exp(*m - mx);
    std::size_t j = lo;
    float sum = 0.f;
    const B bm(mx);
    for (; j + L <= hi; j += L) {
      const B p = xsimd::exp(B::load_unaligned(s + j) - bm);
      p.store_unaligned(s + j);
      sum += reduce_add(p);
    }
    for (; j < hi; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    *l = *l * c + sum;
    *m = mx;
    return c;
  }

  static void softmax_accumulate(float* s, std::size_t n, const float* v, std::size_t ldv,
                                 std::size_t dv, float* acc, float* m, float* l) {
    float mx = *m;
    for (std::size_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
    const float c = exp_rescale(s, 0, n, mx, m, l);
    // acc = c * acc + sum_j p_j v_j, four value rows per pass over acc.
    std::size_t i = 0;
    for (; i + L <= dv; i += L) {
      B a = B::load_unaligned(acc + i) * B(c);
      for (std::size_t r = 0; r < n; ++r)
        a = xsimd::fma(B(s[r]), B::load_unaligned(v + r * ldv + i), a);
      a.store_unaligned(acc + i);
    }
    for (; i < dv; ++i) {
      float a = acc[i] * c;
      for (std::size_t r = 0; r < n; ++r) a += s[r] * v[r * ldv + i];
      acc[i] = a;
    }
  }

  // ---- block kernels (flash_attend_rows) --------------------------------------------------------
  // scores_rows' register tile: RS query rows x KS keys, RS * KS == L accumulators; for L <= 8
  // one haddp sums them all (lane r*KS + c = row r, key c), 16-lane batches reduce one by one
  // (xsimd 8.1's haddp is wrong there, see scores).
  static constexpr std::size_t KS = 4;
  static constexpr std::size_t RS = L / KS;

  static TMOE_INLINE void scores_tile(const float* q, std::size_t ldq, const float* k,
                                      std::size_t ldk, std::size_t d, float* s, std::size_t lds,
                                      bool accumulate) {
    B acc[L];
    for (std::size_t i = 0; i < L; ++i) acc[i] = B(0.f);
    const std::size_t dv = d - d % L;
    for (std::size_t i = 0; i < dv; i += L) {
      B kv[KS];
      for (std::size_t c = 0; c < KS; ++c) kv[c] = B::load_unaligned(k + c * ldk + i);
      for (std::size_t r = 0; r < RS; ++r) {
        const B qv = B::load_unaligned(q + r * ldq + i);
        for (std::size_t c = 0; c < KS; ++c)
          acc[r * KS + c] = xsimd::fma(qv, kv[c], acc[r * KS + c]);
      }
    }
    alignas(64) float sums[L];
    if constexpr (L <= 8) {
      xsimd::haddp(acc).store_aligned(sums);
    } else {
      for (std::size_t i = 0; i < L; ++i) sums[i] = reduce_add(acc[i]);
    }
    for (std::size_t r = 0; r < RS; ++r)
      for (std::size_t c = 0; c < KS; ++c) {
        float v = sums[r * KS + c];
        for (std::size_t i = dv; i < d; ++i) v += q[r * ldq + i] * k[c * ldk + i];
        float& out = s[r * lds + c];
        out = accumulate ? out + v : v;
      }
  }

  static void scores_rows(const float* q, std::size_t ldq, std::size_t m, const float* k,
                          std::size_t ldk, std::size_t n, std::size_t d, float* s, std::size_t lds,
                          bool accumulate) {
    std::size_t r = 0;
    for (; r + RS <= m; r += RS) {
      std::size_t j = 0;
      for (; j + KS <= n; j += KS)
        scores_tile(q + r * ldq, ldq, k + j * ldk, ldk, d, s + r * lds + j, lds, accumulate);
      if (j < n)
        for (std::size_t rr = r; rr < r + RS; ++rr)
          scores(q + rr * ldq, k + j * ldk, ldk, n - j, d, s + rr * lds + j, accumulate);
    }
    for (; r < m; ++r) scores(q + r * ldq, k, ldk, n, d, s + r * lds, accumulate);
  }

  static float softmax_tile(float* s, std::size_t n, std::size_t lo, std::size_t hi, float scale,
                            float* m, float* l) {
    hi = hi < n ? hi : n;
    lo = lo < hi ? lo : hi;
    float mx = *m;
    for (std::size_t j = lo; j < hi; ++j) {
      s[j] *= scale;
      mx = s[j] > mx ? s[j] : mx;
    }
    for (std::size_t j = 0; j < lo; ++j) s[j] = 0.f;
    for (std::size_t j = hi; j < n; ++j) s[j] = 0.f;
    if (mx == -std::numeric_limits<float>::infinity()) {  // no key of this row so far
      for (std::size_t j = lo; j < hi; ++j) s[j] = 0.f;
      return 1.f;
    }
    return exp_rescale(s, lo, hi, mx, m, l);
  }

  // NR rows x (2 batches) of acc per pass over the n value rows: each value load serves NR rows.
  template <std::size_t NR>
  static void accumulate_tile(const float* p, std::size_t ldp, const float* v, std::size_t ldv,
                              std::size_t n, std::size_t dv, const float* c, float* acc,
                              std::size_t lda) {
    std::size_t i = 0;
    for (; i + 2 * L <= dv; i += 2 * L) {
      B a0[NR], a1[NR];
      for (std::size_t r = 0; r < NR; ++r) {
        const B cr(c[r]);
        a0[r] = B::load_unaligned(acc + r * lda + i) * cr;
        a1[r] = B::load_unaligned(acc + r * lda + i + L) * cr;
      }
      for (std::size_t j = 0; j < n; ++j) {
        const B v0 = B::load_unaligned(v + j * ldv + i),
                v1 = B::load_unaligned(v + j * ldv + i + L);
        for (std::size_t r = 0; r < NR; ++r) {
          const B pr(p[r * ldp + j]);
          a0[r] = xsimd::fma(pr, v0, a0[r]);
          a1[r] = xsimd::fma(pr, v1, a1[r]);
        }
      }
      for (std::size_t r = 0; r < NR; ++r) {
        a0[r].store_unaligned(acc + r * lda + i);
        a1[r].store_unaligned(acc + r * lda + i + L);
      }
    }
    for (; i < dv; ++i)
      for (std::size_t r = 0; r < NR; ++r) {
        float a = acc[r * lda + i] * c[r];
        for (std::size_t j = 0; j < n; ++j) a += p[r * ldp + j] * v[j * ldv + i];
        acc[r * lda + i] = a;
      }
  }

  static constexpr std::size_t AR = 6;  // accumulate_tile rows: 12 accumulators + 2 value loads

  static void accumulate_rows(const float* p, std::size_t ldp, std::size_t m, const float* v,
                              std::size_t ldv, std::size_t n, std::size_t dv, const float* c,
                              float* acc, std::size_t lda) {
    std::size_t r = 0;
    for (; r + AR <= m; r += AR)
      accumulate_tile<AR>(p + r * ldp, ldp, v, ldv, n, dv, c + r, acc + r * lda, lda);
    const float* pr = p + r * ldp;
    float* ar = acc + r * lda;
    run_remainder<AR>(m - r,
                      [&]<int N>() { accumulate_tile<N>(pr, ldp, v, ldv, n, dv, c + r, ar, lda); });
  }
};

template <class Arch>
AttentionKernels make_attention_kernels() {
  using I = AttentionImpl<Arch>;
  return {&I::scores, &I::softmax_accumulate, &I::scores_rows, &I::softmax_tile,
          &I::accumulate_rows};
}

// Keys of one attention row: part 1 (k1, width dk1, stride ld1), optional part 2 (k2, width dk2,
// stride ld2; MLA's rope key) and values (v, width DV, stride ldv). Rows are indexed by the
// absolute cache position j.
struct AttnKeys {
  const float* k1;
  std::size_t ld1;
  const float* k2;
  std::size_t ld2;
  const float* v;
  std::size_t ldv;
};

// Running state of one online softmax: max m and sum l of exp(s - m); the accumulator
// (DV floats, sum_j exp(s_j - m) v_j) is kept by the caller.
struct AttnPartial {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.f;
};

// acc (DV) = unnormalized sum_j exp(s_j - m) v_j over j in [j0, j1), with
// s_j = scale * (q1 . k1_j + q2 . k2_j); returns (m, l). DK1 / DK2 / DV are compile-time (reached
// through tmoe::dispatch) and size the on-stack query copies.
template <std::size_t DK1, std::size_t DK2, std::size_t DV>
AttnPartial flash_attend_partial(const AttentionKernels& k, const float* q1, const float* q2,
                                 const AttnKeys& keys, std::size_t j0, std::size_t j1, float scale,
                                 float* acc) {
  alignas(64) float s[kAttnTile];
  alignas(64) float q1s[DK1];
  alignas(64) float q2s[DK2 > 0 ? DK2 : 1];
  // Fold the scale into the query once (scale * (q.k) == (scale*q).k up to rounding).
  for (std::size_t i = 0; i < DK1; ++i) q1s[i] = q1[i] * scale;
  if constexpr (DK2 > 0)
    for (std::size_t i = 0; i < DK2; ++i) q2s[i] = q2[i] * scale;
  for (std::size_t i = 0; i < DV; ++i) acc[i] = 0.f;
  AttnPartial p;
  for (std::size_t t = j0; t < j1; t += kAttnTile) {
    const std::size_t n = (j1 - t) < kAttnTile ? (j1 - t) : kAttnTile;
    k.scores(q1s, keys.k1 + t * keys.ld1, keys.ld1, n, DK1, s, false);
    if constexpr (DK2 > 0) k.scores(q2s, keys.k2 + t * keys.ld2, keys.ld2, n, DK2, s, true);
    k.softmax_accumulate(s, n, keys.v + t * keys.ldv, keys.ldv, DV, acc, &p.m, &p.l);
  }
  return p;
}

// out (DV) = softmax_j(scale * (q1 . k1_j + q2 . k2_j)) v_j over j in [j0, j1).
template <std::size_t DK1, std::size_t DK2, std::size_t DV>
void flash_attend_row(const AttentionKernels& k, const float* q1, const float* q2,
                      const AttnKeys& keys, std::size_t j0, std::size_t j1, float scale,
                      float* out) {
  alignas(64) float acc[DV];
  const AttnPartial p = flash_attend_partial<DK1, DK2, DV>(k, q1, q2, keys, j0, j1, scale, acc);
  const float inv = p.l > 0.f ? 1.0f / p.l : 0.f;
  for (std::size_t i = 0; i < DV; ++i) out[i] = acc[i] * inv;
}

// Split-K ("flash decoding") merge of n partial results over disjoint key ranges:
//   m = max_i m_i;  out = sum_i exp(m_i - m) acc_i / sum_i exp(m_i - m) l_i
inline void merge_attention_partials(const AttnPartial* parts, const float* accs, std::size_t n,
                                     std::size_t dv, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = parts[i].m > m ? parts[i].m : m;
  float l = 0.f;
  for (std::size_t d = 0; d < dv; ++d) out[d] = 0.f;
  for (std::size_t i = 0; i < n; ++i) {
    if (parts[i].l == 0.f) continue;
    const float c = std::exp(parts[i].m - m);
    l += c * parts[i].l;
    for (std::size_t d = 0; d < dv; ++d) out[d] += c * accs[i * dv + d];
  }
  const float inv = l > 0.f ? 1.0f / l : 0.f;
  for (std::size_t d = 0; d < dv; ++d) out[d] *= inv;
}

// Most query rows of one flash_attend_rows call.
inline constexpr std::size_t kAttnBlockRows = 32;

// For each row r < m (m <= kAttnBlockRows): out_r (DV floats, rows ldo apart) =
// softmax_j(scale * (q1_r . k1_j + q2_r . k2_j)) v_j over j in [lo[r], hi[r]) (all zeros when
// the range is empty); q1 rows ld1 apart (DK1 wide), q2 rows ld2 apart (DK2 wide, unused when
// DK2 == 0). The rows read the same keys: key tiles cover [min lo, max hi), each row masked to
// its own range. out is the accumulator.
template <std::size_t DK1, std::size_t DK2, std::size_t DV>
void flash_attend_rows(const AttentionKernels& k, const float* q1, std::size_t ld1, const float* q2,
                       std::size_t ld2, std::size_t m, const AttnKeys& keys, const std::size_t* lo,
                       const std::size_t* hi, float scale, float* out, std::size_t ldo) {
  TMOE_ASSERT(m <= kAttnBlockRows);
  alignas(64) float s[kAttnBlockRows * kAttnTile];
  float mr[kAttnBlockRows], lr[kAttnBlockRows], cr[kAttnBlockRows];
  std::size_t j0 = ~std::size_t{0}, j1 = 0;
  for (std::size_t r = 0; r < m; ++r) {
    mr[r] = -std::numeric_limits<float>::infinity(), lr[r] = 0.f;
    for (std::size_t i = 0; i < DV; ++i) out[r * ldo + i] = 0.f;
    if (lo[r] < hi[r]) j0 = lo[r] < j0 ? lo[r] : j0, j1 = hi[r] > j1 ? hi[r] : j1;
  }
  for (std::size_t t = j0; t < j1; t += kAttnTile) {
    const std::size_t n = (j1 - t) < kAttnTile ? (j1 - t) : kAttnTile;
    k.scores_rows(q1, ld1, m, keys.k1 + t * keys.ld1, keys.ld1, n, DK1, s, kAttnTile, false);
    if constexpr (DK2 > 0)
      k.scores_rows(q2, ld2, m, keys.k2 + t * keys.ld2, keys.ld2, n, DK2, s, kAttnTile, true);
    for (std::size_t r = 0; r < m; ++r) {
      const std::size_t a = lo[r] > t ? lo[r] - t : 0, b = hi[r] > t ? hi[r] - t : 0;
      cr[r] = k.softmax_tile(s + r * kAttnTile, n, a, b, scale, &mr[r], &lr[r]);
    }
    k.accumulate_rows(s, kAttnTile, m, keys.v + t * keys.ldv, keys.ldv, n, DV, cr, out, ldo);
  }
  for (std::size_t r = 0; r < m; ++r) {
    const float inv = lr[r] > 0.f ? 1.0f / lr[r] : 0.f;
    for (std::size_t i = 0; i < DV; ++i) out[r * ldo + i] *= inv;
  }
}

}  // namespace tmoe::cpu
