// tmoe/layers/attention_mla.hpp: DeepSeek Multi-head Latent Attention (V2 / V3 / R1), in the
// naive (HF) form and the absorbed (DeepSeek inference) form, with or without q-LoRA.
//
// Per token x (section 4 of r1-architecture.md), H heads, Dn = qk_nope_head_dim,
// Dr = qk_rope_head_dim, Dv = v_head_dim, R = kv_lora_rank:
//   q   = q_b(RMSNorm(q_a(x)))  or  q_proj(x) without q-LoRA     (H, Dn + Dr): [q_nope ; q_pe]
//   kv  = kv_a(x) (R + Dr);  c = RMSNorm(kv[0:R]);  k_pe = kv[R:R+Dr] (one key shared by heads)
//   RoPE(pos) on every q_pe and on k_pe only (R1: interleaved pairs).
//   naive:    [k_nope ; v] = kv_b(c) (H, Dn + Dv); s = q_nope.k_nope + q_pe.k_pe
//   absorbed: W = kv_b viewed (H, Dn + Dv, R); q_lat = W_UK^T q_nope (R);
//             s = q_lat.c + q_pe.k_pe; ctx = sum_j p_j c_j (R); o = W_UV ctx (Dv)
//   p = softmax(s * softmax_scale), softmax_scale = (Dn + Dr)^-1/2 * mscale(s, mscale_all_dim)^2
//   (YaRN; the rope's softmax_scale_factor); y = o_proj(concat_h o_h).
// Both forms are equal in real arithmetic; in float32 they differ by rounding (tests bound it).
// Cache (float32): naive holds k_nope (H, cap, Dn), v (H, cap, Dv), k_pe (cap, Dr), i.e. what HF
// caches; absorbed holds only the normalized latent c (cap, R) and the roped k_pe (cap, Dr):
// R + Dr = 576 floats per token per layer for R1. Dn, Dv over kHeadDims, Dr over kRopeDims,
// R over kLatentRanks (core/compiled_sets.hpp). The absorbed form reads kv_b's rows directly and
// so needs a float / bf16 / f16 kv_b.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "tmoe/backend/cpu/attention.hpp"
#include "tmoe/core/compiled_sets.hpp"
#include "tmoe/core/dispatch.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/norms.hpp"
#include "tmoe/layers/rope.hpp"

namespace tmoe {

enum class MlaForm { naive, absorbed };

struct MlaConfig {
  std::size_t hidden = 0;
  std::size_t n_heads = 0;
  std::size_t q_lora_rank = 0;  // 0 = no q-LoRA (V2-Lite: a single q_proj)
  std::size_t kv_lora_rank = 0;
  std::size_t qk_nope_head_dim = 0;
  std::size_t qk_rope_head_dim = 0;
  std::size_t v_head_dim = 0;
  float rms_norm_eps = 1e-6f;  // q_a_layernorm and kv_a_layernorm
  float softmax_scale = 0.f;   // 0 = (Dn + Dr)^-1/2 * rope.frequencies().softmax_scale_factor
};

template <LinearFormat F, class NW = F>
struct MlaWeights {
  using weight_view = typename LinearTraits<F>::weight_view;
  weight_view q_a = empty_view<weight_view>();  // (q_lora_rank, d)      with q-LoRA
  VectorView<const NW> q_a_norm = empty_view<VectorView<const NW>>();  // (q_lora_rank)
  weight_view q_b = empty_view<weight_view>();                         // (H*(Dn+Dr), q_lora_rank)
  weight_view q = empty_view<weight_view>();     // (H*(Dn+Dr), d)        without q-LoRA
  weight_view kv_a = empty_view<weight_view>();  // (R + Dr, d)           kv_a_proj_with_mqa
  VectorView<const NW> kv_a_norm = empty_view<VectorView<const NW>>();  // (R)
  weight_view kv_b = empty_view<weight_view>();                         // (H*(Dn+Dv), R)
  weight_view o = empty_view<weight_view>();                            // (d, H*Dv)
};

class MlaCache {
 public:
  MlaCache() = default;
  MlaCache(MlaForm form, const MlaConfig& c, std::size_t capacity)
      : form_(form), cap_(capacity), pe_(capacity, c.qk_rope_head_dim) {
    if (form == MlaForm::absorbed) {
      latent_ = Matrix<float>(capacity, c.kv_lora_rank);
    } else {
      k_nope_ = Matrix<float>(c.n_heads * capacity, c.qk_nope_head_dim);
      v_ = Matrix<float>(c.n_heads * capacity, c.v_head_dim);
    }
  }
  MlaForm form() const { return form_; }
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return cap_; }
  void clear() { size_ = 0; }
  void truncate(std::size_t n) {
    check(n <= size_, "mla_cache", "cannot truncate to ", n, ", holds ", size_);
    size_ = n;
  }
  std::size_t reserve(std::size_t n, std::string_view op) {
    check(size_ + n <= cap_, op, "KV cache full: capacity ", cap_, " positions, holds ", size_,
          ", cannot add ", n);
    const std::size_t p = size_;
    size_ += n;
    return p;
  }
  // Rows are positions; per-head blocks (naive) start at row h * capacity.
  float* latent(std::size_t pos) { return latent_.row(pos); }
  float* k_pe(std::size_t pos) { return pe_.row(pos); }
  float* k_nope(std::size_t h, std::size_t pos) { return k_nope_.row(h * cap_ + pos); }
  float* v(std::size_t h, std::size_t pos) { return v_.row(h * cap_ + pos); }
  // Bytes of cache per position (all heads), for reports.
  std::size_t bytes_per_position() const {
    return sizeof(float) * (pe_.cols() + (form_ == MlaForm::absorbed
                                              ? latent_.cols()
                                              : (k_nope_.rows() / std::max<std::size_t>(cap_, 1)) *
                                                    (k_nope_.cols() + v_.cols())));
  }

 private:
  MlaForm form_ = MlaForm::absorbed;
  std::size_t cap_ = 0, size_ = 0;
  Matrix<float> pe_{std::size_t{0}, std::size_t{0}};      // (cap, Dr)
  Matrix<float> latent_{std::size_t{0}, std::size_t{0}};  // (cap, R)       absorbed
  Matrix<float> k_nope_{std::size_t{0}, std::size_t{0}},
      v_{std::size_t{0}, std::size_t{0}};  // (H*cap, Dn), (H*cap, Dv)  naive
};

template <LinearFormat F, class NW = F>
class MlaAttention {
 public:
  MlaAttention() = default;
  // rope: the qk_rope_head_dim rotary embedding (R1: YaRN, interleaved); must outlive the layer.
  MlaAttention(const MlaConfig& cfg, const MlaWeights<F, NW>& w, const Rope& rope, MlaForm form)
      : cfg_(cfg),
        form_(form),
        q_a_(w.q_a),
        q_b_(w.q_b),
        q_(w.q),
        kv_a_(w.kv_a),
        kv_b_(w.kv_b),
        o_(w.o),
        rope_(&rope) {
    const char* op = "mla_attention";
    const std::size_t H = cfg.n_heads, Dn = cfg.qk_nope_head_dim, Dr = cfg.qk_rope_head_dim,
                      Dv = cfg.v_head_dim, R = cfg.kv_lora_rank, d = cfg.hidden;
    check(kHeadDims::contains(Dn) && kHeadDims::contains(Dv), op, "qk_nope_head_dim ", Dn,
          " / v_head_dim ", Dv, " not in ", kHeadDims::to_string());
    check(kRopeDims::contains(Dr), op, "qk_rope_head_dim ", Dr, " not in ", kRopeDims::to_string());
    check(form == MlaForm::naive || kLatentRanks::contains(R), op, "kv_lora_rank ", R, " not in ",
          kLatentRanks::to_string());
    check(rope.dim() == Dr, op, "rope dim ", rope.dim(), " != qk_rope_head_dim ", Dr);
    auto shape = [&](const Linear<F>& l, std::size_t o, std::size_t i, const char* name) {
      check(l.out_features() == o && l.in_features() == i, op, name, " is (", l.out_features(),
            ", ", l.in_features(), "), expected (", o, ", ", i, ")");
    };
    if (cfg.q_lora_rank > 0) {
      shape(q_a_, cfg.q_lora_rank, d, "q_a_proj");
      shape(q_b_, H * (Dn + Dr), cfg.q_lora_rank, "q_b_proj");
      check(w.q_a_norm.size() == cfg.q_lora_rank, op, "q_a_layernorm has ", w.q_a_norm.size(),
            " values, expected ", cfg.q_lora_rank);
      q_a_norm_ = RMSNorm<NW>(w.q_a_norm, cfg.rms_norm_eps);
    } else {
      shape(q_, H * (Dn + Dr), d, "q_proj");
    }
    shape(kv_a_, R + Dr, d, "kv_a_proj_with_mqa");
    shape(kv_b_, H * (Dn + Dv), R, "kv_b_proj");
    shape(o_, d, H * Dv, "o_proj");
    check(w.kv_a_norm.size() == R, op, "kv_a_layernorm has ", w.kv_a_norm.size(),
          " values, expected ", R);
    kv_a_norm_ = RMSNorm<NW>(w.kv_a_norm, cfg.rms_norm_eps);
    if (form == MlaForm::absorbed) {
      if constexpr (std::is_same_v<typename LinearTraits<F>::weight_view, MatrixView<const F>>)
        kv_b_w_ = w.kv_b;
      else if constexpr (kDenseRows)
        LinearTraits<F>::with_dense_rows(w.kv_b, [](auto) {});  // fails unless rows are dense
      else
        fail(op, "the absorbed form needs a float, bf16 or f16 kv_b_proj");
    }
    if (cfg_.softmax_scale == 0.f)
      cfg_.softmax_scale =
          1.0f / std::sqrt(float(Dn + Dr)) * rope.frequencies().softmax_scale_factor;
  }

  const MlaConfig& config() const { return cfg_; }
  MlaForm form() const { return form_; }
  MlaCache make_cache(std::size_t capacity) const { return MlaCache(form_, cfg_, capacity); }

  // y (T, d) = MLA(x (T, d)) at positions cache.size() .. + T - 1; appends T positions.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, MlaCache& cache,
               const cpu::KernelTable& k = cpu::kernels()) const {
    const char* op = "mla_attention";
    const std::size_t T = x.rows(), H = cfg_.n_heads, Dn = cfg_.qk_nope_head_dim,
                      Dr = cfg_.qk_rope_head_dim, Dv = cfg_.v_head_dim, R = cfg_.kv_lora_rank;
    const std::size_t Dq = Dn + Dr;
    check(cache.form() == form_, op, "cache form does not match the layer's");
    check(y.rows() == T && y.cols() == cfg_.hidden, op, "y is (", y.rows(), ", ", y.cols(),
          "), expected (", T, ", ", cfg_.hidden, ")");
    const std::size_t pos0 = reserve_positions(cache, T, *rope_, op);
    if (q_buf_.rows() < T) {
      q_buf_ = Matrix<float>(T, H * Dq), kv_buf_ = Matrix<float>(T, R + Dr);
      c_buf_ = Matrix<float>(T, R), ctx_ = Matrix<float>(T, H * Dv);
      if (cfg_.q_lora_rank) cq_ = Matrix<float>(T, cfg_.q_lora_rank);
      if (form_ == MlaForm::naive) u_ = Matrix<float>(T, H * (Dn + Dv));
    }
    auto q = q_buf_.view().row_range(0, T), kv = kv_buf_.view().row_range(0, T),
         c = c_buf_.view().row_range(0, T), ctx = ctx_.view().row_range(0, T);
    // Decode: x quantized once for the two matrices that read it (q_a or q, and kv_a).
    if (cfg_.q_lora_rank) {
      auto cq = cq_.view().row_range(0, T);
      xq_.prepare(pool, x, {&q_a_, &kv_a_}, k);
      xq_.forward(pool, q_a_, x, cq, k);
      q_a_norm_.forward(pool, cq, cq, k);
      q_b_.forward(pool, cq, q, k);
    } else {
      xq_.prepare(pool, x, {&q_, &kv_a_}, k);
      xq_.forward(pool, q_, x, q, k);
    }
    xq_.forward(pool, kv_a_, x, kv, k);
    for (std::size_t t = 0; t < T; ++t) kv_a_norm_.row(k, kv.row(t), c.row(t));
    rope_->apply(q, H, Dq, Dn, pos0);
    rope_->apply(kv, 1, R + Dr, R, pos0);
    for (std::size_t t = 0; t < T; ++t)
      std::copy(kv.row(t) + R, kv.row(t) + R + Dr, cache.k_pe(pos0 + t));

    if (form_ == MlaForm::naive) {
      auto u = u_.view().row_range(0, T);
      kv_b_.forward(pool, c, u, k);
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t h = 0; h < H; ++h) {
          const float* uh = u.row(t) + h * (Dn + Dv);
          std::copy(uh, uh + Dn, cache.k_nope(h, pos0 + t));
          std::copy(uh + Dn, uh + Dn + Dv, cache.v(h, pos0 + t));
        }
      dispatch<kHeadDims>(op, "qk_nope_head_dim", Dn, [&](auto dn) {
        dispatch<kRopeDims>(op, "qk_rope_head_dim", Dr, [&](auto dr) {
          dispatch<kHeadDims>(op, "v_head_dim", Dv, [&](auto dv) {
            constexpr std::size_t kDn = decltype(dn)::value, kDr = decltype(dr)::value,
                                  kDv = decltype(dv)::value;
            if (T > 1) {  // prefill: one head over kAttnBlockRows tokens per work item
              constexpr std::size_t kB = cpu::kAttnBlockRows;
              const std::size_t nblk = (T + kB - 1) / kB;
              const auto ldq = static_cast<std::size_t>(q.stride(0)),
                         ldo = static_cast<std::size_t>(ctx.stride(0));
              pool.parallel_for(H * nblk, 1, [&](std::size_t b, std::size_t e, int) {
                std::size_t lo[kB], hi[kB];
                for (std::size_t it = b; it < e; ++it) {
                  const std::size_t h = it / nblk, t0 = it % nblk * kB, m = std::min(kB, T - t0);
                  for (std::size_t i = 0; i < m; ++i) lo[i] = 0, hi[i] = pos0 + t0 + i + 1;
                  const float* qh = q.row(t0) + h * Dq;
                  const cpu::AttnKeys keys{cache.k_nope(h, 0), kDn, cache.k_pe(0), kDr,
                                           cache.v(h, 0),      kDv};
                  cpu::flash_attend_rows<kDn, kDr, kDv>(k.attn, qh, ldq, qh + kDn, ldq, m, keys, lo,
                                                        hi, cfg_.softmax_scale,
                                                        ctx.row(t0) + h * kDv, ldo);
                }
              });
              return;
            }
            pool.parallel_for(
                T * H, 1,
                [&](std::size_t b, std::size_t e, int) {
                  for (std::size_t it = b; it < e; ++it) {
                    const std::size_t t = it / H, h = it % H;
                    const float* qh = q.row(t) + h * Dq;
                    const cpu::AttnKeys keys{cache.k_nope(h, 0), kDn, cache.k_pe(0), kDr,
                                             cache.v(h, 0),      kDv};
                    cpu::flash_attend_row<kDn, kDr, kDv>(k.attn, qh, qh + kDn, keys, 0,
                                                         pos0 + t + 1, cfg_.softmax_scale,
                                                         ctx.row(t) + h * kDv);
                  }
                },
                4);
          });
        });
      });
    } else {
      if constexpr (std::is_same_v<typename LinearTraits<F>::weight_view, MatrixView<const F>>)
        absorbed_attention(kv_b_w_, pool, q, c, ctx, cache, pos0, k);
      else if constexpr (kDenseRows)
        LinearTraits<F>::with_dense_rows(kv_b_.weight(), [&](auto kvb) {
          absorbed_attention(kvb, pool, q, c, ctx, cache, pos0, k);
        });
    }
    o_.forward(pool, ctx, y, k);
  }

 private:
  // A run-time-typed format (AnyFormat) hands out kv_b rows as MatrixView<const E> this way.
  static constexpr bool kDenseRows = requires(const typename LinearTraits<F>::weight_view& w) {
    LinearTraits<F>::with_dense_rows(w, [](auto) {});
  };

  // kv_b_w: kv_b_proj (H * (Dn + Dv), R) as rows of float, bf16 or f16.
  template <class E>
  void absorbed_attention(MatrixView<const E> kv_b_w, ThreadPool& pool, MatrixView<float> q,
                          MatrixView<float> c, MatrixView<float> ctx, MlaCache& cache,
                          std::size_t pos0, const cpu::KernelTable& k) const {
    const char* op = "mla_attention";
    const std::size_t T = q.rows(), H = cfg_.n_heads, Dn = cfg_.qk_nope_head_dim,
                      Dr = cfg_.qk_rope_head_dim, Dv = cfg_.v_head_dim, R = cfg_.kv_lora_rank;
    for (std::size_t t = 0; t < T; ++t) std::copy(c.row(t), c.row(t) + R, cache.latent(pos0 + t));
    const auto axpy = cpu::axpy_fn<E>(k.vec);
    const auto dot = cpu::dot_fn<E>(k.vec);
    dispatch<kLatentRanks>(op, "kv_lora_rank", R, [&](auto r) {
      dispatch<kRopeDims>(op, "qk_rope_head_dim", Dr, [&](auto dr) {
        constexpr std::size_t kR = decltype(r)::value, kDr = decltype(dr)::value;
        if (T > 1) {
          // Prefill: one head over blocks of kAttnBlockRows tokens per work item, three small
          // register-tiled products per block instead of per-row vector loops:
          //   q_lat (m x R) = q_nope (m x Dn) W_UK_h (Dn x R)            (accumulate_rows)
          //   lat_ctx (m x R) = attention over the shared latent cache   (flash_attend_rows)
          //   o (m x Dv) = lat_ctx W_UV_h^T                               (scores_rows)
          // W_UK_h / W_UV_h (kv_b rows of head h) in float: as stored for a float kv_b, else
          // widened once per head and thread (work items run head-major).
          constexpr std::size_t kB = cpu::kAttnBlockRows;
          const std::size_t nblk = (T + kB - 1) / kB, wsz = (Dn + Dv) * kR;
          const auto nthreads = static_cast<std::size_t>(pool.size());
          if constexpr (!std::is_same_v<E, float>)
            if (w_float_.size() < nthreads * wsz) w_float_.resize(nthreads * wsz);
          w_head_.assign(nthreads, ~std::size_t{0});  // no head widened yet in this call
          const auto ldq = static_cast<std::size_t>(q.stride(0)),
                     ldo = static_cast<std::size_t>(ctx.stride(0));
          pool.parallel_for(H * nblk, 1, [&](std::size_t b, std::size_t e, int thread) {
            alignas(64) float q_lat[kB * kR], lat_ctx[kB * kR];
            std::size_t lo[kB], hi[kB];
            float ones[kB];
            std::fill(ones, ones + kB, 1.f);
            for (std::size_t it = b; it < e; ++it) {
              const std::size_t h = it / nblk, t0 = it % nblk * kB, m = std::min(kB, T - t0);
              const float* w_uk;  // Dn + Dv rows of R floats, kR apart (float kv_b: its stride)
              std::size_t ldw = kR;
              if constexpr (std::is_same_v<E, float>) {
                w_uk = kv_b_w.row(h * (Dn + Dv));
                ldw = static_cast<std::size_t>(kv_b_w.stride(0));
              } else {
                float* wf = w_float_.data() + static_cast<std::size_t>(thread) * wsz;
                if (w_head_[thread] != h) {
                  std::fill(wf, wf + wsz, 0.f);  // widened exactly: 0 + 1 * w
                  for (std::size_t rr = 0; rr < Dn + Dv; ++rr)
                    axpy(1.f, kv_b_w.row(h * (Dn + Dv) + rr), wf + rr * kR, kR);
                  w_head_[thread] = h;
                }
                w_uk = wf;
              }
              const float* qh = q.row(t0) + h * (Dn + kDr);
              std::fill(q_lat, q_lat + m * kR, 0.f);
              k.attn.accumulate_rows(qh, ldq, m, w_uk, ldw, Dn, kR, ones, q_lat, kR);
              for (std::size_t i = 0; i < m; ++i) lo[i] = 0, hi[i] = pos0 + t0 + i + 1;
              const cpu::AttnKeys keys{cache.latent(0), kR, cache.k_pe(0), kDr,
                                       cache.latent(0), kR};
              cpu::flash_attend_rows<kR, kDr, kR>(k.attn, q_lat, kR, qh + Dn, ldq, m, keys, lo, hi,
                                                  cfg_.softmax_scale, lat_ctx, kR);
              k.attn.scores_rows(lat_ctx, kR, m, w_uk + Dn * ldw, ldw, Dv, kR, ctx.row(t0) + h * Dv,
                                 ldo, false);
            }
          });
          return;
        }
        pool.parallel_for(
            T * H, 1,
            [&](std::size_t b, std::size_t e, int) {
              alignas(64) float q_lat[kR];
              alignas(64) float lat_ctx[kR];
              for (std::size_t it = b; it < e; ++it) {
                const std::size_t t = it / H, h = it % H;
                const float* qh = q.row(t) + h * (Dn + kDr);
                // q_lat[c] = sum_d q_nope[d] W_UK[h, d, c]: Dn rows of kv_b, scaled and summed.
                std::fill(q_lat, q_lat + kR, 0.f);
                for (std::size_t dd = 0; dd < Dn; ++dd)
                  axpy(qh[dd], kv_b_w.row(h * (Dn + Dv) + dd), q_lat, kR);
                const cpu::AttnKeys keys{cache.latent(0), kR, cache.k_pe(0), kDr,
                                         cache.latent(0), kR};
                cpu::flash_attend_row<kR, kDr, kR>(k.attn, q_lat, qh + Dn, keys, 0, pos0 + t + 1,
                                                   cfg_.softmax_scale, lat_ctx);
                // o[d] = W_UV[h, d, :] . ctx
                float* o = ctx.row(t) + h * Dv;
                for (std::size_t dd = 0; dd < Dv; ++dd)
                  o[dd] = dot(kv_b_w.row(h * (Dn + Dv) + Dn + dd), lat_ctx, kR);
              }
            },
            4);
      });
    });
  }

  MlaConfig cfg_{};
  MlaForm form_ = MlaForm::absorbed;
  Linear<F> q_a_, q_b_, q_, kv_a_, kv_b_, o_;
  mutable SharedQ8Input xq_;
  RMSNorm<NW> q_a_norm_, kv_a_norm_;
  typename LinearTraits<F>::weight_view kv_b_w_ =
      empty_view<typename LinearTraits<F>::weight_view>();
  const Rope* rope_ = nullptr;
  mutable Matrix<float> q_buf_{std::size_t{0}, std::size_t{0}},
      kv_buf_{std::size_t{0}, std::size_t{0}}, c_buf_{std::size_t{0}, std::size_t{0}},
      ctx_{std::size_t{0}, std::size_t{0}}, cq_{std::size_t{0}, std::size_t{0}},
      u_{std::size_t{0}, std::size_t{0}};
  mutable std::vector<float> w_float_;  // prefill: per thread, W_UK_h and W_UV_h widened
  mutable std::vector<std::size_t> w_head_;  // prefill: the head whose W_UK_h / W_UV_h each
                                             // thread's part of w_float_ holds
};

}  // namespace tmoe
