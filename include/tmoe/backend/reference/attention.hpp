// tmoe/backend/reference/attention.hpp: scalar ground truth for GQA and MLA (naive form) over a
// whole sequence starting at position 0: projections via reference::matmul, RoPE via
// reference::apply_rope, the full (T x T) causal score matrix and softmax in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/backend/reference/norms.hpp"
#include "tmoe/backend/reference/rope.hpp"
#include "tmoe/layers/attention_gqa.hpp"
#include "tmoe/layers/attention_mla.hpp"

namespace tmoe::reference {

// out[t, h*Dv:(h+1)*Dv] = sum_j softmax_j(scale * q[t,h] . k[j,h/group]) v[j,h/group] over
// j in (t - window, t] (window 0 = all j <= t). q (T, H*Dq), k (T, Hkv*Dq), v (T, Hkv*Dv).
inline void attention(MatrixView<const float> q, MatrixView<const float> k,
                      MatrixView<const float> v, std::size_t H, std::size_t Hkv, std::size_t Dq,
                      std::size_t Dv, std::size_t window, float scale, MatrixView<float> out) {
  const std::size_t T = q.rows(), group = H / Hkv;
  std::vector<double> s(T);
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t g = h / group, lo = (window > 0 && t + 1 > window) ? t + 1 - window : 0;
      double m = -INFINITY, sum = 0;
      for (std::size_t j = lo; j <= t; ++j) {
        double d = 0;
        for (std::size_t i = 0; i < Dq; ++i)
          d += double(q(t, h * Dq + i)) * double(k(j, g * Dq + i));
        s[j] = d * scale;
        m = std::max(m, s[j]);
      }
      for (std::size_t j = lo; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (std::size_t i = 0; i < Dv; ++i) {
        double o = 0;
        for (std::size_t j = lo; j <= t; ++j) o += s[j] * double(v(j, g * Dv + i));
        out(t, h * Dv + i) = float(o / sum);
      }
    }
}

template <class WT>
void gqa_attention(const GqaConfig& cfg, const GqaWeights<WT>& w, const RopeConfig& rope,
                   MatrixView<const float> x, MatrixView<float> y) {
  const std::size_t T = x.rows(), H = cfg.n_heads, Hkv = cfg.n_kv_heads, D = cfg.head_dim;
  Matrix<float> q(T, H * D), k(T, Hkv * D), v(T, Hkv * D), ctx(T, H * D);
  matmul<WT>(w.q, x, q.view(), w.q_bias);
  matmul<WT>(w.k, x, k.view(), w.k_bias);
  matmul<WT>(w.v, x, v.view(), w.v_bias);
  apply_rope(rope, q.view(), H, D, 0, 0);
  apply_rope(rope, k.view(), Hkv, D, 0, 0);
  const float scale =
      cfg.softmax_scale != 0.f ? cfg.softmax_scale : float(1.0 / std::sqrt(double(D)));
  attention(q.cview(), k.cview(), v.cview(), H, Hkv, D, D, cfg.sliding_window, scale, ctx.view());
  matmul<WT>(w.o, ctx.cview(), y);
}

// MLA in the naive (HF) form for the whole sequence.
template <class WT>
void mla_attention(const MlaConfig& cfg, const MlaWeights<WT>& w, const RopeConfig& rope,
                   MatrixView<const float> x, MatrixView<float> y) {
  const std::size_t T = x.rows(), H = cfg.n_heads, Dn = cfg.qk_nope_head_dim,
                    Dr = cfg.qk_rope_head_dim, Dv = cfg.v_head_dim, R = cfg.kv_lora_rank;
  const std::size_t Dq = Dn + Dr;
  Matrix<float> q(T, H * Dq), kv(T, R + Dr), c(T, R), u(T, H * (Dn + Dv));
  if (cfg.q_lora_rank) {
    Matrix<float> cq(T, cfg.q_lora_rank);
    matmul<WT>(w.q_a, x, cq.view());
    rms_norm<WT>(cq.cview(), w.q_a_norm.data(), cq.view(), cfg.rms_norm_eps);
    matmul<WT>(w.q_b, cq.cview(), q.view());
  } else {
    matmul<WT>(w.q, x, q.view());
  }
  matmul<WT>(w.kv_a, x, kv.view());
  const MatrixView<const float> c_raw(kv.data(), DExtents<2>(T, R),
                                      {static_cast<std::ptrdiff_t>(R + Dr), 1});  // (T, R)
  rms_norm<WT>(c_raw, w.kv_a_norm.data(), c.view(), cfg.rms_norm_eps);
  apply_rope(rope, q.view(), H, Dq, Dn, 0);
  apply_rope(rope, kv.view(), 1, R + Dr, R, 0);
  matmul<WT>(w.kv_b, c.cview(), u.view());
  // Expand to per-head keys [k_nope ; k_pe] and values.
  Matrix<float> k(T, H * Dq), v(T, H * Dv), ctx(T, H * Dv);
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t i = 0; i < Dn; ++i) k(t, h * Dq + i) = u(t, h * (Dn + Dv) + i);
      for (std::size_t i = 0; i < Dr; ++i) k(t, h * Dq + Dn + i) = kv(t, R + i);
      for (std::size_t i = 0; i < Dv; ++i) v(t, h * Dv + i) = u(t, h * (Dn + Dv) + Dn + i);
    }
  float scale = cfg.softmax_scale;
  if (scale == 0.f)
    scale = float(1.0 / std::sqrt(double(Dq)) * rope_frequencies(rope).softmax_scale_factor);
  attention(q.cview(), k.cview(), v.cview(), H, H, Dq, Dv, 0, scale, ctx.view());
  matmul<WT>(w.o, ctx.cview(), y);
}

}  // namespace tmoe::reference
