// tmoe/models/default_model.hpp: the built-in default model that `tmoe generate` runs without
// --model: a small DeepSeek-R1-architecture decoder (MLA with q-LoRA and YaRN, a dense first
// layer, then DeepSeekMoE layers with 16 routed experts top-4 in 4 groups, noaux_tc routing with a
// correction bias, and one shared expert), bf16 weights made deterministically in memory, and a
// byte-level tokenizer (256 byte tokens plus R1's special tokens) so the whole pipeline, chat
// template included, runs on a fresh checkout. Its text is noise: the weights are random.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tmoe/io/chat_template.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/models/random_init.hpp"

namespace tmoe::models {

inline io::ModelConfig default_model_config() {
  io::ModelConfig c;
  c.family = io::Family::deepseek_v3;
  c.model_type = "deepseek_v3";
  c.architectures = {"DeepseekV3ForCausalLM"};
  c.dtype = "bfloat16";
  c.vocab_size = 262;  // 256 bytes + 6 special tokens
  c.hidden_size = 512;
  c.num_hidden_layers = 4;
  c.intermediate_size = 1536;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  c.max_position_embeddings = 4096;
  c.norm_eps = 1e-6;
  c.q_lora_rank = 192;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 256;
  c.first_k_dense_replace = 1;
  c.n_group = 4;
  c.topk_group = 2;
  c.topk_method = io::TopkMethod::noaux_tc;
  c.scoring_func = io::ScoringFunc::sigmoid;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rope.type = io::RopeType::yarn;
  c.rope.theta = 10000.0;
  c.rope.factor = 4.0;
  c.rope.original_max_position_embeddings = 1024;
  c.rope.beta_fast = 32.0;
  c.rope.beta_slow = 1.0;
  c.rope.mscale = 1.0;
  c.rope.mscale_all_dim = 1.0;
  c.rope.interleave = true;
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  return c;
}

// The byte-level tokenizer of the default model: ids 0..255 are the bytes, then BOS, EOS, User,
// Assistant, <think>, </think>.
inline io::Tokenizer default_tokenizer() {
  io::TokenizerSpec spec;
  spec.source = "built-in byte tokenizer";
  const auto& map = io::ByteLevelMap::get();
  for (int b = 0; b < 256; ++b) {
    std::string bytes(1, static_cast<char>(b));
    spec.vocab.emplace_back(map.encode(bytes), b);
  }
  const char* specials[] = {"<｜begin▁of▁sentence｜>",
                            "<｜end▁of▁sentence｜>",
                            "<｜User｜>",
                            "<｜Assistant｜>",
                            "<think>",
                            "</think>"};
  for (int i = 0; i < 6; ++i) spec.added.push_back({256 + i, specials[i], i < 2});
  spec.byte_level_regex = true;
  return io::Tokenizer(spec);
}

inline io::ChatTemplate default_chat_template() {
  return io::ChatTemplate{};
}

// The default model's bf16 weights for `seed` (the same on every platform): what default_model()
// runs on the CPU and cuda::default_model() uploads to the GPU.
inline std::shared_ptr<MemoryWeights> default_model_weights(std::uint64_t seed = 0x7a0e) {
  return std::make_shared<MemoryWeights>(
      random_weights<bf16>(default_model_config(), seed, 1.0f, "built-in default model"));
}

inline std::unique_ptr<Model> default_model(std::uint64_t seed = 0x7a0e,
                                            const LoadOptions& opt = {}) {
  return build_model(default_model_config(), default_model_weights(seed), opt);
}

}  // namespace tmoe::models
