// tmoe/layers/attention_gqa.hpp: grouped-query attention (Qwen2 / Llama / Mixtral style) with a
// preallocated KV cache.
//
//   q = x Wq^T (+bq) (T, H*D); k = x Wk^T (+bk), v = x Wv^T (+bv) (T, Hkv*D)
//   RoPE on q and k (dims [0, rope.dim()) of every head) at positions pos0 .. pos0+T-1,
//   pos0 = tokens already in the cache; k, v appended to the cache;
//   query head h attends with kv head h / (H / Hkv) to cached positions j <= its own position
//   (causal) and, with a sliding window W > 0, only j > position - W;
//   scores * softmax_scale (default D^-1/2), softmax, weighted V; y = ctx Wo^T (o_proj, no bias).
// The attention core is the online-softmax kernel of backend/cpu/attention.hpp: no T x T scores,
// one D-wide accumulator per (token, head) work item, items split over the pool (decode: one per
// head; prefill: one per token and head). A decode step with fewer heads than 2x the pool's
// threads also splits each head's keys into chunks and merges the partial softmaxes (flash
// decoding). D is compile-time over kHeadDims (core/compiled_sets.hpp).
//
// KvCache stores float32 (the activations' type: no rounding on the way in, simple SIMD scans),
// head-major: k and v are (Hkv, capacity, D) so one head's keys are one contiguous block.
// Writing past capacity is a tmoe::Error naming the capacity.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <tuple>
#include <utility>
#include <vector>

#include "tmoe/backend/cpu/attention.hpp"
#include "tmoe/core/compiled_sets.hpp"
#include "tmoe/core/dispatch.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/rope.hpp"

namespace tmoe {

class KvCache {
 public:
  KvCache() = default;
  KvCache(std::size_t n_kv_heads, std::size_t head_dim, std::size_t capacity)
      : n_kv_(n_kv_heads),
        hd_(head_dim),
        cap_(capacity),
        k_(n_kv_heads * capacity, head_dim),
        v_(n_kv_heads * capacity, head_dim) {}

  std::size_t size() const { return size_; }
  std::size_t capacity() const { return cap_; }
  std::size_t n_kv_heads() const { return n_kv_; }
  std::size_t head_dim() const { return hd_; }
  void clear() { size_ = 0; }
  // Forget everything after the first n positions (e.g. to rewind a rejected draft).
  void truncate(std::size_t n) {
    check(n <= size_, "kv_cache", "cannot truncate to ", n, ", holds ", size_);
    size_ = n;
  }

  float* k(std::size_t h, std::size_t pos) { return k_.row(h * cap_ + pos); }
  float* v(std::size_t h, std::size_t pos) { return v_.row(h * cap_ + pos); }
  const float* k(std::size_t h, std::size_t pos) const { return k_.row(h * cap_ + pos); }
  const float* v(std::size_t h, std::size_t pos) const { return v_.row(h * cap_ + pos); }

  // Reserves n more positions; throws when they do not fit. Returns the first new position.
  std::size_t reserve(std::size_t n, std::string_view op) {
    check(size_ + n <= cap_, op, "KV cache full: capacity ", cap_, " positions, holds ", size_,
          ", cannot add ", n);
    const std::size_t p = size_;
    size_ += n;
    return p;
  }

 private:
  std::size_t n_kv_ = 0, hd_ = 0, cap_ = 0, size_ = 0;
  Matrix<float> k_{std::size_t{0}, std::size_t{0}},
      v_{std::size_t{0}, std::size_t{0}};  // (Hkv * capacity, D) each
};

struct GqaConfig {
  std::size_t hidden = 0;
  std::size_t n_heads = 0;
  std::size_t n_kv_heads = 0;
  std::size_t head_dim = 0;
  std::size_t sliding_window = 0;  // 0 = full causal attention
  float softmax_scale = 0.f;       // 0 = head_dim^-1/2
};

template <LinearFormat F>
struct GqaWeights {
  using weight_view = typename LinearTraits<F>::weight_view;
  // (H*D, d), (Hkv*D, d), (Hkv*D, d), (d, H*D)
  weight_view q = empty_view<weight_view>(), k = empty_view<weight_view>(),
              v = empty_view<weight_view>(), o = empty_view<weight_view>();
  const float* q_bias = nullptr;  // (H*D) or nullptr (Qwen2 has q/k/v biases)
  const float* k_bias = nullptr;  // (Hkv*D)
  const float* v_bias = nullptr;  // (Hkv*D)
};

template <LinearFormat F>
class GqaAttention {
 public:
  GqaAttention() = default;
  // rope must outlive the layer; its table bounds the positions this layer can reach.
  GqaAttention(const GqaConfig& cfg, const GqaWeights<F>& w, const Rope& rope)
      : cfg_(cfg), q_(w.q, w.q_bias), k_(w.k, w.k_bias), v_(w.v, w.v_bias), o_(w.o), rope_(&rope) {
    const char* op = "gqa_attention";
    check(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0, op,
          "n_heads ", cfg.n_heads, " must be a positive multiple of n_kv_heads ", cfg.n_kv_heads);
    check(kHeadDims::contains(cfg.head_dim), op, "unsupported head_dim ", cfg.head_dim,
          " (supported: ", kHeadDims::to_string(), ")");
    const std::size_t qd = cfg.n_heads * cfg.head_dim, kd = cfg.n_kv_heads * cfg.head_dim;
    check(q_.out_features() == qd && q_.in_features() == cfg.hidden, op, "q_proj is (",
          q_.out_features(), ", ", q_.in_features(), "), expected (", qd, ", ", cfg.hidden, ")");
    check(k_.out_features() == kd && k_.in_features() == cfg.hidden, op, "k_proj is (",
          k_.out_features(), ", ", k_.in_features(), "), expected (", kd, ", ", cfg.hidden, ")");
    check(v_.out_features() == kd && v_.in_features() == cfg.hidden, op, "v_proj is (",
          v_.out_features(), ", ", v_.in_features(), "), expected (", kd, ", ", cfg.hidden, ")");
    check(o_.out_features() == cfg.hidden && o_.in_features() == qd, op, "o_proj is (",
          o_.out_features(), ", ", o_.in_features(), "), expected (", cfg.hidden, ", ", qd, ")");
    check(rope.dim() <= cfg.head_dim, op, "rope dim ", rope.dim(), " exceeds head_dim ",
          cfg.head_dim);
    if (cfg_.softmax_scale == 0.f) cfg_.softmax_scale = 1.0f / std::sqrt(float(cfg.head_dim));
  }

  const GqaConfig& config() const { return cfg_; }
  KvCache make_cache(std::size_t capacity) const {
    return KvCache(cfg_.n_kv_heads, cfg_.head_dim, capacity);
  }

  // y (T, d) = attention of x (T, d) at positions cache.size() .. + T - 1; appends T positions to
  // the cache. T == 1 is the decode step, T > 1 a prefill chunk.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, KvCache& cache,
               const cpu::KernelTable& k = cpu::kernels()) const {
    const char* op = "gqa_attention";
    const std::size_t T = x.rows(), H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, D = cfg_.head_dim;
    check(cache.n_kv_heads() == Hkv && cache.head_dim() == D, op, "cache is for ",
          cache.n_kv_heads(), " kv heads of dim ", cache.head_dim(), ", layer needs ", Hkv, " x ",
          D);
    check(y.rows() == T && y.cols() == cfg_.hidden, op, "y is (", y.rows(), ", ", y.cols(),
          "), expected (", T, ", ", cfg_.hidden, ")");
    const std::size_t pos0 = reserve_positions(cache, T, *rope_, op);
    if (q_buf_.rows() < T) {
      q_buf_ = Matrix<float>(T, H * D), k_buf_ = Matrix<float>(T, Hkv * D);
      v_buf_ = Matrix<float>(T, Hkv * D), ctx_ = Matrix<float>(T, H * D);
    }
    auto q = q_buf_.view().row_range(0, T), kk = k_buf_.view().row_range(0, T),
         vv = v_buf_.view().row_range(0, T), ctx = ctx_.view().row_range(0, T);
    xq_.prepare(pool, x, {&q_, &k_, &v_}, k);  // decode: x quantized once for q, k and v
    xq_.forward(pool, q_, x, q, k);
    xq_.forward(pool, k_, x, kk, k);
    xq_.forward(pool, v_, x, vv, k);
    rope_->apply(q, H, D, 0, pos0);
    rope_->apply(kk, Hkv, D, 0, pos0);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t h = 0; h < Hkv; ++h) {
        std::copy(kk.row(t) + h * D, kk.row(t) + (h + 1) * D, cache.k(h, pos0 + t));
        std::copy(vv.row(t) + h * D, vv.row(t) + (h + 1) * D, cache.v(h, pos0 + t));
      }
    const std::size_t group = H / Hkv;
    auto key_range = [&](std::size_t p) {  // causal, optionally windowed: [lo, p + 1)
      const std::size_t lo = (cfg_.sliding_window > 0 && p + 1 > cfg_.sliding_window)
                                 ? p + 1 - cfg_.sliding_window
                                 : 0;
      return std::pair<std::size_t, std::size_t>{lo, p + 1};
    };
    dispatch<kHeadDims>(op, "head_dim", D, [&](auto hd) {
      constexpr std::size_t kD = decltype(hd)::value;
      // Decode with few heads: split each head's keys into chunks of >= kMinSplitKeys so that
      // about 2 work items per thread exist, then merge the partial softmaxes (flash decoding).
      const auto [lo1, hi1] = key_range(pos0);
      const std::size_t want = 2 * static_cast<std::size_t>(pool.size());
      std::size_t splits = 1;
      if (T == 1 && H < want) splits = std::min((want + H - 1) / H, (hi1 - lo1) / kMinSplitKeys);
      if (splits > 1) {
        const std::size_t per = (hi1 - lo1 + splits - 1) / splits;
        if (part_acc_.size() < H * splits * kD)
          part_acc_.resize(H * splits * kD), parts_.resize(H * splits);
        pool.parallel_for(H * splits, 1, [&](std::size_t b, std::size_t e, int) {
          for (std::size_t it = b; it < e; ++it) {
            const std::size_t h = it / splits, sp = it % splits, kvh = h / group;
            const std::size_t j0 = lo1 + sp * per, j1 = std::min(hi1, j0 + per);
            const cpu::AttnKeys keys{cache.k(kvh, 0), D, nullptr, 0, cache.v(kvh, 0), D};
            parts_[it] = j0 < j1 ? cpu::flash_attend_partial<kD, 0, kD>(
                                       k.attn, q.row(0) + h * D, nullptr, keys, j0, j1,
                                       cfg_.softmax_scale, part_acc_.data() + it * kD)
                                 : cpu::AttnPartial{};
          }
        });
        for (std::size_t h = 0; h < H; ++h)
          cpu::merge_attention_partials(parts_.data() + h * splits,
                                        part_acc_.data() + h * splits * kD, splits, kD,
                                        ctx.row(0) + h * D);
        return;
      }
      if (T > 1) {
        // Prefill: blocks of query rows that read the same KV head (hc of its `group` query
        // heads over tb tokens, <= kAttnBlockRows rows), so that each key and value load serves
        // every row of the block (cpu::flash_attend_rows).
        const std::size_t hc = std::min(group, cpu::kAttnBlockRows), nhc = (group + hc - 1) / hc;
        const std::size_t tb = cpu::kAttnBlockRows / hc, nblk = (T + tb - 1) / tb;
        pool.parallel_for(Hkv * nhc * nblk, 1, [&](std::size_t b, std::size_t e, int) {
          alignas(64) float qb[cpu::kAttnBlockRows * kD], ob[cpu::kAttnBlockRows * kD];
          std::size_t lo[cpu::kAttnBlockRows], hi[cpu::kAttnBlockRows];
          for (std::size_t it = b; it < e; ++it) {
            const std::size_t kvh = it / (nhc * nblk), c = it / nblk % nhc, blk = it % nblk;
            const std::size_t t0 = blk * tb, t1 = std::min(T, t0 + tb);
            const std::size_t h0 = kvh * group + c * hc, h1 = std::min((kvh + 1) * group, h0 + hc);
            std::size_t m = 0;
            for (std::size_t t = t0; t < t1; ++t)
              for (std::size_t h = h0; h < h1; ++h, ++m) {
                std::copy(q.row(t) + h * D, q.row(t) + (h + 1) * D, qb + m * kD);
                std::tie(lo[m], hi[m]) = key_range(pos0 + t);
              }
            const cpu::AttnKeys keys{cache.k(kvh, 0), D, nullptr, 0, cache.v(kvh, 0), D};
            cpu::flash_attend_rows<kD, 0, kD>(k.attn, qb, kD, nullptr, 0, m, keys, lo, hi,
                                              cfg_.softmax_scale, ob, kD);
            m = 0;
            for (std::size_t t = t0; t < t1; ++t)
              for (std::size_t h = h0; h < h1; ++h, ++m)
                std::copy(ob + m * kD, ob + (m + 1) * kD, ctx.row(t) + h * D);
          }
        });
        return;
      }
      // Decode without a split: work item = one head's flash row.
      pool.parallel_for(
          T * H, 1,
          [&](std::size_t b, std::size_t e, int) {
            for (std::size_t it = b; it < e; ++it) {
              const std::size_t t = it / H, h = it % H, kvh = h / group;
              const auto [lo, hi] = key_range(pos0 + t);
              const cpu::AttnKeys keys{cache.k(kvh, 0), D, nullptr, 0, cache.v(kvh, 0), D};
              cpu::flash_attend_row<kD, 0, kD>(k.attn, q.row(t) + h * D, nullptr, keys, lo, hi,
                                               cfg_.softmax_scale, ctx.row(t) + h * D);
            }
          },
          4);
    });
    o_.forward(pool, ctx, y, k);
  }

 private:
  GqaConfig cfg_{};
  Linear<F> q_, k_, v_, o_;
  const Rope* rope_ = nullptr;
  static constexpr std::size_t kMinSplitKeys = 256;
  mutable SharedQ8Input xq_;
  mutable std::vector<float> part_acc_;          // (H * splits, D) split-K partial accumulators
  mutable std::vector<cpu::AttnPartial> parts_;  // (H * splits)
  mutable Matrix<float> q_buf_{std::size_t{0}, std::size_t{0}},
      k_buf_{std::size_t{0}, std::size_t{0}}, v_buf_{std::size_t{0}, std::size_t{0}},
      ctx_{std::size_t{0}, std::size_t{0}};  // (T, H*D), (T, Hkv*D) x2, (T, H*D)
};

}  // namespace tmoe
