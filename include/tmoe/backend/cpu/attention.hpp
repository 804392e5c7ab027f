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

  static void softmax_accumulate(float* s, std::size_t n, const float* v, std::size_t ldv,
                                 std::size_t dv, float* acc, float* m, float* l) {
    float mx = *m;
    for (std::size_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
    const float c = (*m == -std::numeric_limits<float>::infinity()) ? 0.f : std::exp(*m - mx);
    std::size_t j = 0;
    float sum = 0.f;
    const B bm(mx);
    for (; j + L <= n; j += L) {
      const B p = xsimd::exp(B::load_unaligned(s + j) - bm);
      p.store_unaligned(s + j);
      sum += reduce_add(p);
    }
    for (; j < n; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    *l = *l * c + sum;
    *m = mx;
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
};

template <class Arch>
AttentionKernels make_attention_kernels() {
  using I = AttentionImpl<Arch>;
  return {&I::scores, &I::softmax_accumulate};
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

}  // namespace tmoe::cpu
