// tmoe/models/model.hpp: a loaded model behind one run-time interface, and the builders that
// assemble each family from a ModelConfig and a WeightSource.
//
// Families (names as Hugging Face checkpoints store them):
//   deepseek_v3 / deepseek_v2: MLA (absorbed cache for decode, or naive) + dense first layers +
//     DeepSeekMoE (mlp.gate + e_score_correction_bias, mlp.experts.E.*, mlp.shared_experts.*);
//     model.layers.N for N >= num_hidden_layers (the MTP module of R1) is never read.
//   qwen2 / llama: GQA (+ q/k/v bias when attention_bias / present) + SwiGLU MLP.
//   mixtral: GQA + block_sparse_moe (gate, experts.E.w1 / w3 / w2 = gate / up / down).
//   tmoe's seed variant: any GQA family with tmoe_norm_hybrid_split > 0: LayerNorm (weight and
//     optional .bias) in the shallow layers, RMSNorm in the deep ones (docs/config.md).
// The weight format F of all matrices follows the checkpoint: F32 -> float, BF16 -> bf16,
// F16 -> f16; F8_E4M3 blocks are dequantized in float32 to float at load, as DeepSeek's
// reference dequantizes (q * scale_inv in fp32) before rounding (the in-place FP8 block format
// plugs in through LinearTraits instead). Norm weights, biases and the router bias are float.
//
// Build time: each family builder is instantiated for three weight formats. A program that
// defines TMOE_MODELS_EXTERN gets `extern template` declarations instead and links the
// instantiations compiled once from src/models/instantiate.cpp (CMake: tmoe_add_models_library).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tmoe/io/config.hpp"
#include "tmoe/models/decoder.hpp"
#include "tmoe/models/gguf_source.hpp"
#include "tmoe/models/quantized_source.hpp"
#include "tmoe/models/weights.hpp"
#include "tmoe/runtime/sampler.hpp"

namespace tmoe::models {

struct LoadOptions {
  std::size_t max_context = 4096;  // rope table and cache size limit (<= max_position_embeddings)
  MlaForm mla_form = MlaForm::absorbed;
  // Called with (layers built, total layers) after each decoder layer and once at the end
  // (total, total); e.g. a progress bar while weights are converted and paged in.
  std::function<void(std::size_t, std::size_t)> progress;
  // Quantize float / bf16 / FP8 matrices at load (models/quantized_source.hpp); the model then
  // runs as AnyFormat. Unset: matrices run in their stored format.
  std::optional<quant::QuantType> quantize;
};

class Model {
 public:
  virtual ~Model() = default;
  const io::ModelConfig& config() const { return cfg_; }
  std::size_t vocab_size() const { return cfg_.vocab_size; }
  std::size_t max_context() const { return max_context_; }

  virtual std::unique_ptr<State> new_state(std::size_t capacity) const = 0;
  // Runs `tokens` at positions state.size() .. and writes the logits of the last logits.rows()
  // tokens. One forward at a time per model.
  virtual void forward(ThreadPool& pool, State& state, std::span<const std::int32_t> tokens,
                       MatrixView<float> logits) const = 0;
  virtual std::vector<LayerExpertStats> expert_stats() const = 0;
  // Bytes of weights one decode step reads (embedding row, every attention and dense matrix, the
  // top-k routed and the shared experts of each MoE layer, the LM head).
  virtual std::size_t decode_weight_bytes() const = 0;
  // The weight format's name ("float", "bf16", "f16").
  virtual std::string weight_format() const = 0;
  // Bytes of the decode GEMV's 8-row interleaved weight copies (Q4_0 / Q8_0 / Q4_K matrices of a
  // GGUF model, WeightLoader::any_matrix), held besides the stored weights; 0 when none.
  virtual std::size_t repacked_bytes() const { return 0; }
  // Generation on the device (CUDA models with has_device_generation()): runs `prompt` (>= 1
  // token) at state.size(), then draws up to n tokens with cfg's rules where the logits are,
  // handing each to on_token as they come back; on_token returning false stops. Returns the
  // number m of tokens handed out; the state then holds prompt and the first m - 1 of them.
  // Session::generate uses it instead of copying every token's logits to the host.
  virtual bool has_device_generation() const { return false; }
  virtual std::size_t generate_on_device(State&, std::span<const std::int32_t>, std::size_t,
                                         const SamplerConfig&,
                                         const std::function<bool(std::int32_t)>&) const {
    fail("model", "this model has no device generation");
  }

 protected:
  Model(io::ModelConfig cfg, std::size_t max_context)
      : cfg_(std::move(cfg)), max_context_(max_context) {}
  io::ModelConfig cfg_;
  std::size_t max_context_ = 0;
};

namespace detail {

template <class F>
constexpr const char* format_name() {
  if constexpr (std::is_same_v<F, float>)
    return "float";
  else if constexpr (std::is_same_v<F, bf16>)
    return "bf16";
  else if constexpr (std::is_same_v<F, AnyFormat>)
    return "mixed";
  else
    return "f16";
}

// "mixed (Q4_K x 120, Q6_K x 24, F32 x 10)" from the kinds the loader handed out.
inline std::string mixed_format_name(const WeightLoader& w) {
  std::string s = "mixed (";
  bool first = true;
  for (const auto& [k, n] : w.kinds()) {
    s += (first ? "" : ", ") + k + " x " + std::to_string(n);
    first = false;
  }
  return s + ")";
}

// A matrix as format F's weight view: MatrixView<const F> (converted when stored otherwise), or
// for AnyFormat the stored format in place (`dense`: rows must be float / bf16 / f16).
// `repack`: the matrix is multiplied (Linear), so Q4_0 / Q8_0 / Q4_K get the GEMV's interleaved
// copy (WeightLoader::any_matrix); false for embedding tables, which are only read row by row.
template <class F>
typename LinearTraits<F>::weight_view weight(WeightLoader& w, const std::string& name,
                                             std::size_t rows, std::size_t cols, bool dense = false,
                                             bool repack = true) {
  if constexpr (std::is_same_v<F, AnyFormat>)
    return w.any_matrix(name, rows, cols, dense, repack);
  else {
    (void)repack;
    return w.matrix<F>(name, rows, cols);
  }
}

// Bytes a weight view spans.
template <class V>
std::size_t view_bytes(const V& v) {
  if constexpr (std::is_same_v<V, AnyMatrixView>)
    return v.bytes();
  else
    return v.rows() * v.cols() * sizeof(typename V::value_type);
}
template <class F>
std::size_t mlp_bytes(const SwigluMlp<F>& m) {
  return view_bytes(m.gate().weight()) + view_bytes(m.up().weight()) +
         view_bytes(m.down().weight());
}

inline RopeConfig rope_config(const io::ModelConfig& c, std::size_t dim, bool interleaved) {
  RopeConfig r;
  r.dim = dim;
  r.layout = interleaved ? RopeLayout::interleaved : RopeLayout::half_split;
  r.theta = static_cast<float>(c.rope.theta);
  check(c.rope.freq_factors.empty() || c.rope.type == io::RopeType::default_ ||
            c.rope.type == io::RopeType::none,
        "model", "rope frequency factors only combine with plain rope");
  switch (c.rope.type) {
    case io::RopeType::none:
    case io::RopeType::default_:
      r.type = RopeType::plain;
      r.freq_factors = c.rope.freq_factors;
      break;
    case io::RopeType::yarn:
      r.type = RopeType::yarn;
      r.factor = static_cast<float>(c.rope.factor);
      r.original_max_position = c.rope.original_max_position_embeddings;
      r.beta_fast = static_cast<float>(c.rope.beta_fast);
      r.beta_slow = static_cast<float>(c.rope.beta_slow);
      // HF: mscale / mscale_all_dim ratio when both are given, else plain get_mscale(factor).
      if (c.rope.mscale_all_dim != 0.0) {
        r.mscale = static_cast<float>(c.rope.mscale);
        r.mscale_all_dim = static_cast<float>(c.rope.mscale_all_dim);
      }
      break;
    case io::RopeType::llama3:
      r.type = RopeType::llama3;
      r.factor = static_cast<float>(c.rope.factor);
      r.original_max_position = c.rope.original_max_position_embeddings;
      r.low_freq_factor = static_cast<float>(c.rope.low_freq_factor);
      r.high_freq_factor = static_cast<float>(c.rope.high_freq_factor);
      break;
    default:
      fail("model", "rope type linear is not supported");
  }
  check(!c.rope.attention_factor.has_value(), "model",
        "rope attention_factor overrides are not supported");
  return r;
}

inline RouterConfig router_config(const io::ModelConfig& c) {
  RouterConfig r;
  r.n_experts = c.n_routed_experts;
  r.top_k = c.num_experts_per_tok;
  r.n_group = c.n_group;
  r.topk_group = c.topk_group;
  r.norm_topk_prob = c.norm_topk_prob;
  r.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  switch (c.topk_method) {
    case io::TopkMethod::noaux_tc:
      check(c.scoring_func == io::ScoringFunc::sigmoid, "model",
            "noaux_tc routing needs scoring_func sigmoid");
      r.method = RouterMethod::noaux_tc;
      break;
    case io::TopkMethod::group_limited_greedy:
      r.method = RouterMethod::group_greedy;
      break;
    case io::TopkMethod::greedy:
      check(c.scoring_func == io::ScoringFunc::softmax, "model",
            "greedy routing needs scoring_func softmax");
      r.method =
          c.family == io::Family::mixtral ? RouterMethod::softmax_topk : RouterMethod::greedy;
      break;
  }
  return r;
}

// The layer's norm: LayerNorm (weight + optional bias) or RMSNorm, by the seed variant's policy.
inline Norm<float> make_norm(WeightLoader& w, const io::ModelConfig& c, std::size_t layer,
                             const std::string& name) {
  const std::size_t d = c.hidden_size;
  const float eps = static_cast<float>(c.norm_eps);
  if (c.norm_of_layer(layer) == io::NormType::layernorm) {
    const auto weight = w.vector<float>(name + ".weight", d);
    const auto bias = w.has(name + ".bias") ? w.vector<float>(name + ".bias", d)
                                            : VectorView<const float>(nullptr, std::size_t{0});
    return Norm<float>::layer(weight, bias, eps);
  }
  return Norm<float>::rms(w.vector<float>(name + ".weight", d), eps);
}

template <class F>
SwigluMlp<F> make_mlp(WeightLoader& w, const std::string& p, std::size_t d, std::size_t inter,
                      const char* gate = "gate_proj", const char* up = "up_proj",
                      const char* down = "down_proj") {
  return SwigluMlp<F>(weight<F>(w, p + gate + ".weight", inter, d),
                      weight<F>(w, p + up + ".weight", inter, d),
                      weight<F>(w, p + down + ".weight", d, inter));
}

template <class Dec, class F>
class ModelImpl final : public Model {
 public:
  ModelImpl(io::ModelConfig cfg, std::size_t ctx, std::unique_ptr<WeightLoader> w,
            std::vector<std::unique_ptr<Rope>> ropes, std::unique_ptr<Dec> dec, std::size_t bytes)
      : Model(std::move(cfg), ctx),
        format_(std::is_same_v<F, AnyFormat> ? mixed_format_name(*w) : format_name<F>()),
        w_(std::move(w)),
        ropes_(std::move(ropes)),
        dec_(std::move(dec)),
        bytes_(bytes) {}
  std::unique_ptr<State> new_state(std::size_t capacity) const override {
    check(capacity <= max_context_, "model", "context of ", capacity,
          " tokens exceeds the limit of ", max_context_);
    return dec_->new_state(capacity);
  }
  void forward(ThreadPool& pool, State& state, std::span<const std::int32_t> tokens,
               MatrixView<float> logits) const override {
    auto* s = dynamic_cast<typename Dec::DecoderState*>(&state);
    check(s != nullptr, "model", "state was made by another model");
    dec_->forward(pool, *s, tokens, logits);
  }
  std::vector<LayerExpertStats> expert_stats() const override { return dec_->expert_stats(); }
  std::size_t decode_weight_bytes() const override { return bytes_; }
  std::string weight_format() const override { return format_; }
  std::size_t repacked_bytes() const override { return w_->repacked_bytes(); }

 private:
  std::string format_;
  std::unique_ptr<WeightLoader> w_;  // owns converted weights; the source owns the mapping
  std::vector<std::unique_ptr<Rope>> ropes_;
  std::unique_ptr<Dec> dec_;
  std::size_t bytes_ = 0;
};

inline std::string layer_prefix(std::size_t l) {
  return "model.layers." + std::to_string(l) + ".";
}

template <class F>
Linear<F> lm_head(WeightLoader& w, const io::ModelConfig& c) {
  const std::string name = (c.tie_word_embeddings || !w.has("lm_head.weight"))
                               ? "model.embed_tokens.weight"
                               : "lm_head.weight";
  return Linear<F>(weight<F>(w, name, c.vocab_size, c.hidden_size));
}

// DeepSeek-V2/V3/R1.
template <class F>
std::unique_ptr<Model> build_deepseek(const io::ModelConfig& c, std::unique_ptr<WeightLoader> wp,
                                      std::size_t ctx, const LoadOptions& opt) {
  WeightLoader& w = *wp;
  using Attn = MlaAttention<F, float>;
  using Layer = DecoderLayer<Attn, DenseOrMoe<F>, Norm<float>>;
  const std::size_t d = c.hidden_size, H = c.num_attention_heads;
  const std::size_t Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim;
  std::vector<std::unique_ptr<Rope>> ropes;
  ropes.push_back(std::make_unique<Rope>(rope_config(c, Dr, c.rope.interleave), ctx));
  MlaConfig mc;
  mc.hidden = d, mc.n_heads = H, mc.q_lora_rank = c.q_lora_rank, mc.kv_lora_rank = c.kv_lora_rank;
  mc.qk_nope_head_dim = Dn, mc.qk_rope_head_dim = Dr, mc.v_head_dim = Dv;
  mc.rms_norm_eps = static_cast<float>(c.norm_eps);
  const RouterConfig rc = c.is_moe() ? router_config(c) : RouterConfig{};
  std::size_t bytes = 0;
  std::vector<Layer> layers;
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l), a = p + "self_attn.";
    MlaWeights<F, float> mw;
    if (c.q_lora_rank > 0) {
      mw.q_a = weight<F>(w, a + "q_a_proj.weight", c.q_lora_rank, d);
      mw.q_a_norm = w.vector<float>(a + "q_a_layernorm.weight", c.q_lora_rank);
      mw.q_b = weight<F>(w, a + "q_b_proj.weight", H * (Dn + Dr), c.q_lora_rank);
      bytes += view_bytes(mw.q_a) + view_bytes(mw.q_b);
    } else {
      mw.q = weight<F>(w, a + "q_proj.weight", H * (Dn + Dr), d);
      bytes += view_bytes(mw.q);
    }
    mw.kv_a = weight<F>(w, a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + Dr, d);
    mw.kv_a_norm = w.vector<float>(a + "kv_a_layernorm.weight", c.kv_lora_rank);
    // The absorbed decode reads kv_b rows directly: dense rows (a block format is dequantized).
    mw.kv_b = weight<F>(w, a + "kv_b_proj.weight", H * (Dn + Dv), c.kv_lora_rank,
                        opt.mla_form == MlaForm::absorbed);
    mw.o = weight<F>(w, a + "o_proj.weight", d, H * Dv);
    bytes += view_bytes(mw.kv_a) + view_bytes(mw.kv_b) + view_bytes(mw.o);
    Attn attn(mc, mw, *ropes[0], opt.mla_form);
    const std::string m = p + "mlp.";
    auto ffn = [&]() {
      if (!c.is_moe_layer(l)) {
        auto mlp = make_mlp<F>(w, m, d, c.intermediate_size);
        bytes += mlp_bytes(mlp);
        return DenseOrMoe<F>(std::move(mlp));
      }
      const std::size_t I = c.moe_intermediate_size;
      const auto gate = weight<F>(w, m + "gate.weight", c.n_routed_experts, d);
      Router<F> router(rc, gate,
                       w.floats(m + "gate.e_score_correction_bias", c.n_routed_experts,
                                rc.method != RouterMethod::noaux_tc));
      std::vector<SwigluMlp<F>> experts, shared;
      std::size_t expert_bytes = 0;
      for (std::size_t e = 0; e < c.n_routed_experts; ++e) {
        experts.push_back(make_mlp<F>(w, m + "experts." + std::to_string(e) + ".", d, I));
        expert_bytes += mlp_bytes(experts.back());
      }
      if (c.n_shared_experts > 0) {
        shared.push_back(make_mlp<F>(w, m + "shared_experts.", d, I * c.n_shared_experts));
        bytes += mlp_bytes(shared.back());
      }
      bytes += view_bytes(gate) + expert_bytes / c.n_routed_experts * c.num_experts_per_tok;
      return DenseOrMoe<F>(MoE<F>(std::move(router), std::move(experts), std::move(shared)));
    }();
    layers.push_back(Layer{make_norm(w, c, l, p + "input_layernorm"), std::move(attn),
                           make_norm(w, c, l, p + "post_attention_layernorm"), std::move(ffn)});
    if (opt.progress) opt.progress(l + 1, c.num_hidden_layers);
  }
  const auto embed = weight<F>(w, "model.embed_tokens.weight", c.vocab_size, d, false, false);
  auto head = lm_head<F>(w, c);
  bytes += view_bytes(embed) / c.vocab_size + view_bytes(head.weight());
  auto dec = std::make_unique<Decoder<Layer, F>>(
      Embedding<F>(embed), std::move(layers),
      Norm<float>::rms(w.vector<float>("model.norm.weight", d), static_cast<float>(c.norm_eps)),
      std::move(head));
  return std::make_unique<ModelImpl<Decoder<Layer, F>, F>>(c, ctx, std::move(wp), std::move(ropes),
                                                           std::move(dec), bytes);
}

// Qwen2, Llama, Mixtral and tmoe's seed variant (GQA attention).
template <class F, class Ffn>
std::unique_ptr<Model> build_gqa(const io::ModelConfig& c, std::unique_ptr<WeightLoader> wp,
                                 std::size_t ctx, const LoadOptions& opt) {
  WeightLoader& w = *wp;
  using Layer = DecoderLayer<GqaAttention<F>, Ffn, Norm<float>>;
  const std::size_t d = c.hidden_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads,
                    D = c.head_dim;
  std::vector<std::unique_ptr<Rope>> ropes;
  // Hugging Face GQA checkpoints rotate half-split pairs; llama-arch GGUF files hold q/k rows
  // permuted to adjacent pairs (rope.interleave set by the GGUF config reader).
  ropes.push_back(std::make_unique<Rope>(rope_config(c, D, c.rope.interleave), ctx));
  GqaConfig gc;
  gc.hidden = d, gc.n_heads = H, gc.n_kv_heads = Hkv, gc.head_dim = D;
  std::size_t bytes = 0;
  std::vector<Layer> layers;
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l), a = p + "self_attn.";
    GqaWeights<F> gw;
    gw.q = weight<F>(w, a + "q_proj.weight", H * D, d);
    gw.k = weight<F>(w, a + "k_proj.weight", Hkv * D, d);
    gw.v = weight<F>(w, a + "v_proj.weight", Hkv * D, d);
    gw.o = weight<F>(w, a + "o_proj.weight", d, H * D);
    const bool opt_bias = !c.attention_bias;
    gw.q_bias = w.floats(a + "q_proj.bias", H * D, opt_bias);
    gw.k_bias = w.floats(a + "k_proj.bias", Hkv * D, opt_bias);
    gw.v_bias = w.floats(a + "v_proj.bias", Hkv * D, opt_bias);
    bytes += view_bytes(gw.q) + view_bytes(gw.k) + view_bytes(gw.v) + view_bytes(gw.o);
    auto ffn = [&]() {
      if constexpr (std::is_same_v<Ffn, SwigluMlp<F>>) {
        auto mlp = make_mlp<F>(w, p + "mlp.", d, c.intermediate_size);
        bytes += mlp_bytes(mlp);
        return mlp;
      } else {
        const std::string m = p + "block_sparse_moe.";
        const std::size_t I = c.intermediate_size;
        const auto gate = weight<F>(w, m + "gate.weight", c.n_routed_experts, d);
        Router<F> router(router_config(c), gate);
        std::vector<SwigluMlp<F>> experts;
        std::size_t expert_bytes = 0;
        for (std::size_t e = 0; e < c.n_routed_experts; ++e) {
          experts.push_back(
              make_mlp<F>(w, m + "experts." + std::to_string(e) + ".", d, I, "w1", "w3", "w2"));
          expert_bytes += mlp_bytes(experts.back());
        }
        bytes += view_bytes(gate) + expert_bytes / c.n_routed_experts * c.num_experts_per_tok;
        return MoE<F>(std::move(router), std::move(experts));
      }
    }();
    layers.push_back(Layer{make_norm(w, c, l, p + "input_layernorm"),
                           GqaAttention<F>(gc, gw, *ropes[0]),
                           make_norm(w, c, l, p + "post_attention_layernorm"), std::move(ffn)});
    if (opt.progress) opt.progress(l + 1, c.num_hidden_layers);
  }
  auto final_norm = make_norm(w, c, c.num_hidden_layers, "model.norm");
  const auto embed = weight<F>(w, "model.embed_tokens.weight", c.vocab_size, d, false, false);
  auto head = lm_head<F>(w, c);
  bytes += view_bytes(embed) / c.vocab_size + view_bytes(head.weight());
  using Dec = Decoder<Layer, F>;
  auto dec =
      std::make_unique<Dec>(Embedding<F>(embed), std::move(layers), final_norm, std::move(head));
  return std::make_unique<ModelImpl<Dec, F>>(c, ctx, std::move(wp), std::move(ropes),
                                             std::move(dec), bytes);
}

template <class F>
std::unique_ptr<Model> build_family(const io::ModelConfig& c, std::unique_ptr<WeightLoader> w,
                                    std::size_t ctx, const LoadOptions& opt) {
  switch (c.family) {
    case io::Family::deepseek_v3:
    case io::Family::deepseek_v2:
      return build_deepseek<F>(c, std::move(w), ctx, opt);
    case io::Family::mixtral:
      return build_gqa<F, MoE<F>>(c, std::move(w), ctx, opt);
    case io::Family::qwen2:
    case io::Family::llama:
      if (c.is_moe()) return build_gqa<F, MoE<F>>(c, std::move(w), ctx, opt);
      return build_gqa<F, SwigluMlp<F>>(c, std::move(w), ctx, opt);
  }
  fail("model", "unknown family");
}

#if defined(TMOE_MODELS_EXTERN)
extern template std::unique_ptr<Model> build_family<float>(const io::ModelConfig&,
                                                           std::unique_ptr<WeightLoader>,
                                                           std::size_t, const LoadOptions&);
extern template std::unique_ptr<Model> build_family<bf16>(const io::ModelConfig&,
                                                          std::unique_ptr<WeightLoader>,
                                                          std::size_t, const LoadOptions&);
extern template std::unique_ptr<Model> build_family<f16>(const io::ModelConfig&,
                                                         std::unique_ptr<WeightLoader>, std::size_t,
                                                         const LoadOptions&);
extern template std::unique_ptr<Model> build_family<AnyFormat>(const io::ModelConfig&,
                                                               std::unique_ptr<WeightLoader>,
                                                               std::size_t, const LoadOptions&);
#endif

}  // namespace detail

// Builds a model of config `c` over the weights of `src`.
inline std::unique_ptr<Model> build_model(const io::ModelConfig& c,
                                          std::shared_ptr<const WeightSource> src,
                                          const LoadOptions& opt = {}) {
  if (opt.quantize) src = std::make_shared<QuantizedSource>(std::move(src), *opt.quantize);
  auto w = std::make_unique<WeightLoader>(src);
  const std::size_t ctx = std::max<std::size_t>(
      1, std::min(opt.max_context,
                  c.max_position_embeddings ? c.max_position_embeddings : opt.max_context));
  // The weight format follows the checkpoint's first attention output projection.
  const RawTensor& probe = w->raw("model.layers.0.self_attn.o_proj.weight");
  if (probe.quant)  // GGUF block formats, possibly mixed: each matrix used in place
    return detail::build_family<AnyFormat>(c, std::move(w), ctx, opt);
  switch (probe.dtype) {
    case DType::f32:
      return detail::build_family<float>(c, std::move(w), ctx, opt);
    case DType::f16:
      return detail::build_family<f16>(c, std::move(w), ctx, opt);
    case DType::bf16:
      return detail::build_family<bf16>(c, std::move(w), ctx, opt);
    case DType::f8_e4m3:
      return detail::build_family<float>(c, std::move(w), ctx, opt);
    default:
      fail("model", src->where(), ": weights of dtype ", dtype_name(probe.dtype),
           " are not supported (F32, BF16, F16, F8_E4M3)");
  }
}

// True for a path naming a GGUF file (by its .gguf extension).
inline bool is_gguf_path(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}

// Loads a Hugging Face model folder (config.json + safetensors) or a .gguf file (config from its
// metadata, see gguf_source.hpp).
inline std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& opt = {}) {
  if (is_gguf_path(path)) {
    auto src = std::make_shared<GgufSource>(path);
    return build_model(src->config(), src, opt);
  }
  const io::ModelConfig cfg = io::load_model_config(path);
  return build_model(cfg, std::make_shared<SafetensorsSource>(path), opt);
}

}  // namespace tmoe::models
