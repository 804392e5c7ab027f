// tmoe/models/presets.hpp: named model configurations: the real sizes of DeepSeek-R1 and its
// distilled models with the hyperparameters of their published config.json files, and tiny test
// sizes (the shapes of the tests/data/models fixtures). `tmoe init --preset NAME` writes one as
// config.json (+ random weights); `tmoe info --preset NAME` prints its size.
//
// Parameter counts come from models::tensor_specs (every tensor the checkpoint holds, the MTP
// layer of R1 excluded):
//   total  = every parameter
//   active = the parameters one token's forward uses, not counting the embedding table:
//            total - embedding - (n_routed - top_k) experts in every MoE layer
//            (how DeepSeek counts "activated": R1 37B, V2-Lite 2.4B).
// Bytes read per decoded token: active matrices (and one embedding row) in the weight format,
// norm weights, biases and router biases as float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/models/random_init.hpp"

namespace tmoe::models {

struct Preset {
  std::string name;
  std::string description;  // the checkpoint it describes
  io::ModelConfig config;
  double published_params = 0;  // total, as published (0 for test sizes)
  double published_active = 0;  // activated per token, as published (MoE models)
};

namespace detail {

inline io::ModelConfig deepseek_v3_base(std::size_t vocab, std::size_t d, std::size_t layers) {
  io::ModelConfig c;
  c.family = io::Family::deepseek_v3;
  c.model_type = "deepseek_v3";
  c.architectures = {"DeepseekV3ForCausalLM"};
  c.dtype = "bfloat16";
  c.vocab_size = vocab, c.hidden_size = d, c.num_hidden_layers = layers;
  c.topk_method = io::TopkMethod::noaux_tc, c.scoring_func = io::ScoringFunc::sigmoid;
  c.norm_topk_prob = true;
  c.rope.interleave = true;
  c.bos_token_id = 0, c.eos_token_ids = {1};
  return c;
}

// Qwen2 / Llama (GQA) with the fields every Distill config shares.
inline io::ModelConfig gqa_base(io::Family f, std::size_t vocab, std::size_t d, std::size_t layers,
                                std::size_t inter, std::size_t heads, std::size_t kv_heads) {
  io::ModelConfig c;
  c.family = f;
  c.model_type = std::string(io::family_name(f));
  c.architectures = {f == io::Family::qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  c.dtype = "bfloat16";
  c.vocab_size = vocab, c.hidden_size = d, c.num_hidden_layers = layers;
  c.intermediate_size = inter, c.num_attention_heads = heads, c.num_key_value_heads = kv_heads;
  c.head_dim = d / heads;
  c.attention_bias = f == io::Family::qwen2;
  c.max_position_embeddings = 131072;
  c.rope.type = io::RopeType::default_;
  return c;
}

inline io::ModelConfig qwen_distill(std::size_t vocab, std::size_t d, std::size_t layers,
                                    std::size_t inter, std::size_t heads, std::size_t kv_heads,
                                    double theta, double eps) {
  io::ModelConfig c = gqa_base(io::Family::qwen2, vocab, d, layers, inter, heads, kv_heads);
  c.rope.theta = theta, c.norm_eps = eps;
  c.bos_token_id = 151643, c.eos_token_ids = {151643};
  return c;
}

inline io::ModelConfig llama_distill(std::size_t d, std::size_t layers, std::size_t inter,
                                     std::size_t heads) {
  io::ModelConfig c = gqa_base(io::Family::llama, 128256, d, layers, inter, heads, 8);
  c.norm_eps = 1e-5;
  c.rope.theta = 500000.0;
  c.rope.type = io::RopeType::llama3;
  c.rope.factor = 8.0, c.rope.low_freq_factor = 1.0, c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position_embeddings = 8192;
  c.bos_token_id = 128000, c.eos_token_ids = {128001};
  return c;
}

}  // namespace detail

inline std::vector<Preset> presets() {
  using detail::llama_distill;
  using detail::qwen_distill;
  std::vector<Preset> p;

  // deepseek-ai/DeepSeek-R1 (= DeepSeek-V3's architecture): config.json as published.
  io::ModelConfig r1 = detail::deepseek_v3_base(129280, 7168, 61);
  r1.intermediate_size = 18432;
  r1.num_attention_heads = r1.num_key_value_heads = 128;
  r1.max_position_embeddings = 163840;
  r1.q_lora_rank = 1536, r1.kv_lora_rank = 512;
  r1.qk_nope_head_dim = 128, r1.qk_rope_head_dim = 64, r1.v_head_dim = 128;
  r1.head_dim = 64;
  r1.n_routed_experts = 256, r1.num_experts_per_tok = 8, r1.n_shared_experts = 1;
  r1.moe_intermediate_size = 2048, r1.first_k_dense_replace = 3;
  r1.n_group = 8, r1.topk_group = 4, r1.routed_scaling_factor = 2.5;
  r1.num_nextn_predict_layers = 1;
  r1.rope.type = io::RopeType::yarn;
  r1.rope.theta = 10000.0, r1.rope.factor = 40.0, r1.rope.original_max_position_embeddings = 4096;
  r1.rope.beta_fast = 32.0, r1.rope.beta_slow = 1.0, r1.rope.mscale = 1.0;
  r1.rope.mscale_all_dim = 1.0;
  r1.fp8 = true, r1.fp8_block_rows = r1.fp8_block_cols = 128;
  p.push_back({"deepseek-r1", "deepseek-ai/DeepSeek-R1 (671B, FP8 checkpoint; MTP layer not run)",
               r1, 671e9, 37e9});
  io::ModelConfig v3 = r1;
  p.push_back(
      {"deepseek-v3", "deepseek-ai/DeepSeek-V3 (same architecture as R1)", v3, 671e9, 37e9});

  // deepseek-ai/DeepSeek-V2-Lite: MLA without q-LoRA, 64 experts top-6 softmax, 2 shared.
  io::ModelConfig lite = detail::deepseek_v3_base(102400, 2048, 27);
  lite.family = io::Family::deepseek_v2;
  lite.model_type = "deepseek_v2";
  lite.architectures = {"DeepseekV2ForCausalLM"};
  lite.intermediate_size = 10944;
  lite.num_attention_heads = lite.num_key_value_heads = 16;
  lite.max_position_embeddings = 163840;
  lite.q_lora_rank = 0, lite.kv_lora_rank = 512;
  lite.qk_nope_head_dim = 128, lite.qk_rope_head_dim = 64, lite.v_head_dim = 128;
  lite.head_dim = 64;
  lite.n_routed_experts = 64, lite.num_experts_per_tok = 6, lite.n_shared_experts = 2;
  lite.moe_intermediate_size = 1408, lite.first_k_dense_replace = 1;
  lite.topk_method = io::TopkMethod::greedy, lite.scoring_func = io::ScoringFunc::softmax;
  lite.norm_topk_prob = false, lite.routed_scaling_factor = 1.0;
  lite.rope = r1.rope;
  lite.rope.mscale = lite.rope.mscale_all_dim = 0.707;
  lite.bos_token_id = 100000, lite.eos_token_ids = {100001};
  p.push_back({"deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite (15.7B, 2.4B active)", lite,
               15.7e9, 2.4e9});

  // deepseek-ai/DeepSeek-R1-Distill-*: the base models' shapes (Qwen2.5-Math-1.5B / 7B,
  // Qwen2.5-14B / 32B, Llama-3.1-8B, Llama-3.3-70B-Instruct).
  p.push_back({"r1-distill-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
               qwen_distill(151936, 1536, 28, 8960, 12, 2, 10000.0, 1e-6), 1.78e9, 0});
  p.push_back({"r1-distill-qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
               qwen_distill(152064, 3584, 28, 18944, 28, 4, 10000.0, 1e-6), 7.62e9, 0});
  p.push_back({"r1-distill-qwen-14b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
               qwen_distill(152064, 5120, 48, 13824, 40, 8, 1000000.0, 1e-5), 14.8e9, 0});
  p.push_back({"r1-distill-qwen-32b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
               qwen_distill(152064, 5120, 64, 27648, 40, 8, 1000000.0, 1e-5), 32.8e9, 0});
  p.push_back({"r1-distill-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
               llama_distill(4096, 32, 14336, 32), 8.03e9, 0});
  p.push_back({"r1-distill-llama-70b", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
               llama_distill(8192, 80, 28672, 64), 70.6e9, 0});

  // Tiny test sizes: the shapes of the tests/data/models fixtures (vocab 512, hidden 128).
  io::ModelConfig t = detail::deepseek_v3_base(512, 128, 2);
  t.dtype = "float32";
  t.intermediate_size = 192, t.max_position_embeddings = 256;
  t.num_attention_heads = t.num_key_value_heads = 3;
  t.q_lora_rank = 96, t.kv_lora_rank = 128;
  t.qk_nope_head_dim = 64, t.qk_rope_head_dim = 32, t.v_head_dim = 64, t.head_dim = 32;
  t.n_routed_experts = 8, t.num_experts_per_tok = 3, t.n_shared_experts = 1;
  t.moe_intermediate_size = 64, t.first_k_dense_replace = 1;
  t.n_group = 4, t.topk_group = 2, t.routed_scaling_factor = 2.5;
  t.num_nextn_predict_layers = 1;
  t.rope.type = io::RopeType::yarn;
  t.rope.factor = 4.0, t.rope.original_max_position_embeddings = 64;
  t.rope.mscale = t.rope.mscale_all_dim = 1.0;
  p.push_back({"tiny-deepseek-v3", "test size: tests/data/models/deepseek_v3", t, 0, 0});
  io::ModelConfig tn = t;
  tn.num_attention_heads = tn.num_key_value_heads = 2;
  tn.q_lora_rank = 0, tn.moe_intermediate_size = 96, tn.num_experts_per_tok = 2;
  tn.n_group = tn.topk_group = 1, tn.routed_scaling_factor = 1.5;
  tn.rope = io::RopeConfig{};
  tn.rope.interleave = true;
  p.push_back(
      {"tiny-deepseek-v3-nolora", "test size: tests/data/models/deepseek_v3_nolora", tn, 0, 0});
  io::ModelConfig tq = detail::gqa_base(io::Family::qwen2, 512, 128, 2, 256, 2, 1);
  tq.dtype = "float32", tq.max_position_embeddings = 512;
  tq.bos_token_id = 0, tq.eos_token_ids = {1};
  p.push_back({"tiny-qwen2", "test size: tests/data/models/qwen2", tq, 0, 0});
  io::ModelConfig tl = detail::gqa_base(io::Family::llama, 512, 128, 2, 192, 4, 2);
  tl.dtype = "float32", tl.max_position_embeddings = 512, tl.head_dim = 64, tl.norm_eps = 1e-5;
  tl.tie_word_embeddings = true;
  tl.rope.type = io::RopeType::llama3, tl.rope.factor = 8.0;
  tl.rope.original_max_position_embeddings = 64;
  tl.bos_token_id = 0, tl.eos_token_ids = {1};
  p.push_back({"tiny-llama3", "test size: tests/data/models/llama3", tl, 0, 0});
  io::ModelConfig tm = detail::gqa_base(io::Family::mixtral, 512, 128, 2, 64, 2, 1);
  tm.architectures = {"MixtralForCausalLM"};
  tm.dtype = "float32", tm.max_position_embeddings = 512, tm.norm_eps = 1e-5;
  tm.n_routed_experts = 8, tm.num_experts_per_tok = 2, tm.moe_intermediate_size = 64;
  tm.norm_topk_prob = true;
  tm.bos_token_id = 0, tm.eos_token_ids = {1};
  p.push_back({"tiny-mixtral", "test size: tests/data/models/mixtral", tm, 0, 0});
  return p;
}

inline std::string preset_names() {
  std::string s;
  for (const auto& p : presets()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

// The preset called `name`; an unknown name is an error listing the known ones.
inline Preset preset(std::string_view name) {
  for (auto& p : presets())
    if (p.name == name) return p;
  fail("preset", "unknown preset '", name, "' (known: ", preset_names(), ")");
}

struct ParamCount {
  std::uint64_t total = 0;
  std::uint64_t active = 0;         // per token, embedding table excluded (see the file comment)
  std::uint64_t embedding = 0;      // vocab x hidden
  std::uint64_t matrix_active = 0;  // matrices among `active` (what a weight format stores)
  std::uint64_t vector = 0;         // norm weights, biases, router biases (kept float32)
};

inline ParamCount count_params(const io::ModelConfig& c) {
  ParamCount n;
  for (const auto& t : tensor_specs(c)) {
    std::uint64_t k = 1;
    for (auto x : t.shape) k *= x;
    n.total += k;
    if (t.role != TensorRole::matrix)
      n.vector += k;
    else if (t.name == "model.embed_tokens.weight")
      n.embedding = k;
    else
      n.matrix_active += k;
  }
  std::uint64_t idle = 0;  // routed experts a token does not use
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l))
      idle += std::uint64_t(c.n_routed_experts - c.num_experts_per_tok) * 3 * c.hidden_size *
              (c.family == io::Family::mixtral ? c.intermediate_size : c.moe_intermediate_size);
  n.matrix_active -= idle;
  if (c.tie_word_embeddings) n.matrix_active += n.embedding;  // the LM head reads the table
  n.active = n.matrix_active + n.vector;
  return n;
}

// Bytes of weights one decoded token reads with every matrix stored at `bytes_per_weight`
// (bf16 2, Q4_0 18/32, FP8 with 128x128 scales 1 + 4/16384, ...): the active matrices, one
// embedding row, and the float32 vectors.
inline double decode_bytes(const io::ModelConfig& c, double bytes_per_weight) {
  const ParamCount n = count_params(c);
  return double(n.matrix_active + c.hidden_size) * bytes_per_weight + 4.0 * double(n.vector);
}

}  // namespace tmoe::models
