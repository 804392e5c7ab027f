// tmoe/models/decoder.hpp: the decoder assembled from tmoe's layers.
//
//   DecoderLayer<Attention, Ffn, NormT>:  h += Attention(NormT(h));  h += Ffn(NormT(h))
//   Decoder<Layer, F>:  h = Embedding(ids); every layer; logits = LmHead(Norm(h))
//
// Attention is GqaAttention<F> (Qwen2, Llama, Mixtral, tmoe's seed variant) or MlaAttention<F>
// (DeepSeek-V2/V3/R1); Ffn is SwigluMlp<F>, MoE<F>, or DenseOrMoe<F> (DeepSeek: dense SwiGLU in
// the first layers, MoE after). F is the weight format of every matrix (float, bf16, f16; the
// quantized formats plug in through LinearTraits). Activations and caches are float32.
// Layer counts and widths are run-time values (config.json); only the leaves are templates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <variant>
#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/layers/attention_gqa.hpp"
#include "tmoe/layers/attention_mla.hpp"
#include "tmoe/layers/embedding.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/mlp.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/layers/norms.hpp"
#include "tmoe/layers/rope.hpp"

namespace tmoe::models {

// DeepSeek's feed-forward: a dense SwiGLU MLP (layers < first_k_dense_replace) or the MoE block.
template <LinearFormat F>
class DenseOrMoe {
 public:
  explicit DenseOrMoe(SwigluMlp<F> dense) : v_(std::move(dense)) {}
  explicit DenseOrMoe(MoE<F> moe) : v_(std::move(moe)) {}
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k) const {
    std::visit([&](const auto& f) { f.forward(pool, x, y, k); }, v_);
  }
  const MoE<F>* moe() const { return std::get_if<MoE<F>>(&v_); }

 private:
  std::variant<SwigluMlp<F>, MoE<F>> v_;
};

template <class Ffn>
const auto* moe_of(const Ffn& f) {
  if constexpr (requires { f.moe(); })
    return f.moe();
  else if constexpr (requires { f.stats(); })
    return &f;
  else
    return static_cast<const MoE<float>*>(nullptr);
}

template <class Attention, class Ffn, class NormT>
struct DecoderLayer {
  using Cache = decltype(std::declval<const Attention&>().make_cache(0));
  NormT attn_norm;  // input_layernorm
  Attention attn;
  NormT ffn_norm;  // post_attention_layernorm
  Ffn ffn;
};

// Per-sequence state: one cache per layer.
class State {
 public:
  virtual ~State() = default;
  virtual std::size_t size() const = 0;      // positions held
  virtual std::size_t capacity() const = 0;  // positions that fit
  virtual void truncate(std::size_t n) = 0;  // keep the first n positions
};

// Expert load of one MoE layer in the last forward.
struct LayerExpertStats {
  std::size_t layer = 0;
  MoeStats stats;
};

template <class Layer, LinearFormat F>
class Decoder {
 public:
  using Cache = typename Layer::Cache;

  class DecoderState final : public State {
   public:
    std::vector<Cache> caches;
    std::size_t cap = 0;
    std::size_t size() const override { return caches.empty() ? 0 : caches[0].size(); }
    std::size_t capacity() const override { return cap; }
    void truncate(std::size_t n) override {
      for (auto& c : caches) c.truncate(n);
    }
  };

  Decoder(Embedding<F> embed, std::vector<Layer> layers, Norm<float> final_norm, Linear<F> head)
      : embed_(embed), layers_(std::move(layers)), norm_(final_norm), head_(head) {}

  std::size_t hidden() const { return embed_.dim(); }
  std::size_t vocab_size() const { return head_.out_features(); }
  const std::vector<Layer>& layers() const { return layers_; }

  std::unique_ptr<DecoderState> new_state(std::size_t capacity) const {
    auto s = std::make_unique<DecoderState>();
    s->cap = capacity;
    for (const auto& l : layers_) s->caches.push_back(l.attn.make_cache(capacity));
    return s;
  }

  // Runs tokens at positions s.size() .. + T - 1 and writes the logits of the last
  // logits.rows() tokens (1 for decoding, T for every position). One forward at a time.
  void forward(ThreadPool& pool, DecoderState& s, std::span<const std::int32_t> tokens,
               MatrixView<float> logits, const cpu::KernelTable& k = cpu::kernels()) const {
    const std::size_t T = tokens.size(), d = hidden(), R = logits.rows();
    check(T > 0, "decoder", "no tokens to run");
    check(R >= 1 && R <= T && logits.cols() == vocab_size(), "decoder", "logits is (", R, ", ",
          logits.cols(), "), expected (1..", T, ", ", vocab_size(), ")");
    check(s.size() + T <= s.capacity(), "decoder", "context full: ", s.size(), " + ", T,
          " tokens exceed the capacity of ", s.capacity());
    if (h_.rows() < T || h_.cols() != d)
      h_ = Matrix<float>(T, d), x_ = Matrix<float>(T, d), r_ = Matrix<float>(T, d);
    auto h = h_.view().row_range(0, T), x = x_.view().row_range(0, T),
         r = r_.view().row_range(0, T);
    embed_.forward(tokens, h);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& L = layers_[l];
      L.attn_norm.forward(pool, h, x, k);
      L.attn.forward(pool, x, r, s.caches[l], k);
      L.ffn_norm.add_forward(pool, h, r, x, k);  // h += attn; x = norm(h)
      L.ffn.forward(pool, x, r, k);
      for (std::size_t t = 0; t < T; ++t) k.vec.add(r.row(t), h.row(t), d);
    }
    auto last = h.row_range(T - R, R);
    auto xl = x.row_range(0, R);
    norm_.forward(pool, last, xl, k);
    head_.forward(pool, xl, logits, k);
  }

  std::vector<LayerExpertStats> expert_stats() const {
    std::vector<LayerExpertStats> out;
    for (std::size_t l = 0; l < layers_.size(); ++l)
      if (const auto* m = moe_of(layers_[l].ffn)) out.push_back({l, m->stats()});
    return out;
  }

 private:
  Embedding<F> embed_;
  std::vector<Layer> layers_;
  Norm<float> norm_;
  Linear<F> head_;
  mutable Matrix<float> h_{std::size_t{0}, std::size_t{0}}, x_{std::size_t{0}, std::size_t{0}},
      r_{std::size_t{0}, std::size_t{0}};  // (T, d) residual stream, normed input, layer output
};

}  // namespace tmoe::models
