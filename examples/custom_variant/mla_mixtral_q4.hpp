// examples/custom_variant/mla_mixtral_q4.hpp: a model that no checkpoint family describes, built
// from tmoe's layers: DeepSeek's MLA attention (q-LoRA, latent cache, absorbed decode), a
// Mixtral-style softmax top-k router, and routed SwiGLU experts stored as Q4_0 blocks. No shared
// expert, every layer MoE, RMSNorm everywhere. docs/custom_variants.md walks through it.
//
// Weights come from any models::WeightSource holding float32 tensors under the Hugging Face
// names of a deepseek_v2 checkpoint (models::tensor_specs(c) lists them); the router gate and the
// experts are quantized to Q4_0 here, at build time. Attention, norms, embedding and LM head stay
// float (the absorbed MLA form reads kv_b_proj's rows directly, so it needs a float matrix).
// With the same config and the dequantized Q4_0 values, tmoe's deepseek_v2 builder (greedy
// softmax routing, norm_topk_prob, scaling 1) computes the same function: the test
// tests/models/test_custom_variant.cpp holds the two within a stated bound.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tmoe/io/config.hpp"
#include "tmoe/layers/linear_quant.hpp"
#include "tmoe/models/decoder.hpp"
#include "tmoe/models/weights.hpp"
#include "tmoe/quant/quantize.hpp"

namespace custom {

using namespace tmoe;
using Q = quant::Q4_0;
using Attention = MlaAttention<float, float>;  // weights float, norm weights float
using Layer = models::DecoderLayer<Attention, MoE<Q>, RMSNorm<float>>;
using Net = models::Decoder<Layer, float>;  // float embedding and LM head

// The model and everything its layers point into (layers hold views, never copies).
struct MlaMixtralQ4 {
  models::WeightLoader weights;          // the float tensors, used in place
  Rope rope;                             // the layers keep a pointer to it
  std::deque<quant::QuantMatrix<Q>> q4;  // owns the quantized gates and experts
  std::unique_ptr<Net> net;
  std::size_t q4_bytes = 0;  // bytes of Q4_0 blocks (router gates + experts)
};

inline std::unique_ptr<MlaMixtralQ4> build_mla_mixtral_q4(
    const io::ModelConfig& c, std::shared_ptr<const models::WeightSource> src, std::size_t ctx) {
  RopeConfig rc;
  rc.layout = RopeLayout::interleaved, rc.dim = c.qk_rope_head_dim;
  rc.theta = static_cast<float>(c.rope.theta);
  auto m = std::unique_ptr<MlaMixtralQ4>(
      new MlaMixtralQ4{models::WeightLoader(std::move(src)), Rope(rc, ctx), {}, nullptr, 0});
  auto& w = m->weights;
  const std::size_t d = c.hidden_size, H = c.num_attention_heads, E = c.n_routed_experts;
  const std::size_t Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim;
  const std::size_t I = c.moe_intermediate_size, R = c.kv_lora_rank, Rq = c.q_lora_rank;
  const float eps = static_cast<float>(c.norm_eps);
  auto q4 = [&](const std::string& name, std::size_t rows, std::size_t cols) {
    const auto f = w.matrix<float>(name, rows, cols);  // (rows, cols)
    const auto& q = m->q4.emplace_back(quant::quantize<Q>(f.data(), rows, cols));
    m->q4_bytes += q.view().weight_bytes();
    return q.view();
  };
  const MlaConfig mc{d, H, Rq, R, Dn, Dr, Dv, eps, 0.f};
  RouterConfig router;  // Mixtral: softmax over all experts, top-k, renormalized
  router.method = RouterMethod::softmax_topk;
  router.n_experts = E, router.top_k = c.num_experts_per_tok, router.norm_topk_prob = true;

  std::vector<Layer> layers;
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.",
                      f = p + "mlp.";
    MlaWeights<float, float> mw;
    mw.q_a = w.matrix<float>(a + "q_a_proj.weight", Rq, d);
    mw.q_a_norm = w.vector<float>(a + "q_a_layernorm.weight", Rq);
    mw.q_b = w.matrix<float>(a + "q_b_proj.weight", H * (Dn + Dr), Rq);
    mw.kv_a = w.matrix<float>(a + "kv_a_proj_with_mqa.weight", R + Dr, d);
    mw.kv_a_norm = w.vector<float>(a + "kv_a_layernorm.weight", R);
    mw.kv_b = w.matrix<float>(a + "kv_b_proj.weight", H * (Dn + Dv), R);
    mw.o = w.matrix<float>(a + "o_proj.weight", d, H * Dv);
    std::vector<SwigluMlp<Q>> experts;
    for (std::size_t e = 0; e < E; ++e) {
      const std::string x = f + "experts." + std::to_string(e) + ".";
      experts.emplace_back(q4(x + "gate_proj.weight", I, d), q4(x + "up_proj.weight", I, d),
                           q4(x + "down_proj.weight", d, I));
    }
    layers.push_back(
        Layer{RMSNorm<float>(w.vector<float>(p + "input_layernorm.weight", d), eps),
              Attention(mc, mw, m->rope, MlaForm::absorbed),
              RMSNorm<float>(w.vector<float>(p + "post_attention_layernorm.weight", d), eps),
              MoE<Q>(Router<Q>(router, q4(f + "gate.weight", E, d)), std::move(experts))});
  }
  m->net = std::make_unique<Net>(
      Embedding<float>(w.matrix<float>("model.embed_tokens.weight", c.vocab_size, d)),
      std::move(layers), Norm<float>::rms(w.vector<float>("model.norm.weight", d), eps),
      Linear<float>(w.matrix<float>("lm_head.weight", c.vocab_size, d)));
  return m;
}

// The config this variant reads: a deepseek_v2 description (MLA with q-LoRA, all layers MoE,
// greedy softmax routing renormalized, no shared expert), so models::tensor_specs and
// models::random_weights name and make its tensors, and tmoe's own deepseek_v2 builder can run
// the same weights as a float reference.
inline io::ModelConfig mla_mixtral_config(std::size_t hidden, std::size_t layers, std::size_t heads,
                                          std::size_t experts, std::size_t top_k,
                                          std::size_t expert_width, std::size_t vocab) {
  io::ModelConfig c;
  c.family = io::Family::deepseek_v2;
  c.model_type = "deepseek_v2";
  c.vocab_size = vocab, c.hidden_size = hidden, c.num_hidden_layers = layers;
  c.num_attention_heads = c.num_key_value_heads = heads;
  c.max_position_embeddings = 4096;
  c.q_lora_rank = hidden / 2, c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64, c.qk_rope_head_dim = 32, c.v_head_dim = 64;
  c.head_dim = c.qk_rope_head_dim;
  c.n_routed_experts = experts, c.num_experts_per_tok = top_k;
  c.moe_intermediate_size = expert_width;
  c.topk_method = io::TopkMethod::greedy, c.scoring_func = io::ScoringFunc::softmax;
  c.norm_topk_prob = true, c.routed_scaling_factor = 1.0;
  c.rope.interleave = true;
  return c;
}

}  // namespace custom
