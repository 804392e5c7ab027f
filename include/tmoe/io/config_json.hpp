// tmoe/io/config_json.hpp: ModelConfig -> config.json, the inverse of io/config.hpp's parser.
//
// Writes the layout of Hub checkpoints (top-level rope_theta, rope_scaling with "type": "yarn"
// as DeepSeek-R1 does or "rope_type": "llama3" as Llama 3.1 does, torch_dtype), only the fields
// the family reads, and tmoe's seed-variant keys only when set. Invariant (tested):
// parse_model_config(model_config_json(c)) describes the same model as c, and writing it again
// gives the same JSON.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "tmoe/io/config.hpp"

namespace tmoe::io {

inline nlohmann::json model_config_json(const ModelConfig& c) {
  nlohmann::json j;
  j["model_type"] = std::string(family_name(c.family));
  j["architectures"] = c.architectures;
  if (!c.dtype.empty()) j["torch_dtype"] = c.dtype;
  j["hidden_act"] = c.hidden_act;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["intermediate_size"] = c.intermediate_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.family != Family::qwen2 || !c.attention_bias) j["attention_bias"] = c.attention_bias;
  if (c.mlp_bias) j["mlp_bias"] = true;
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1)
    j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty())
    j["eos_token_id"] = c.eos_token_ids;

  const bool deepseek = c.family == Family::deepseek_v3 || c.family == Family::deepseek_v2;
  if (deepseek) {
    j["q_lora_rank"] = c.q_lora_rank ? nlohmann::json(c.q_lora_rank) : nlohmann::json(nullptr);
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    if (!c.rope.interleave) j["rope_interleave"] = false;
    j["n_routed_experts"] = c.n_routed_experts;
    j["n_shared_experts"] = c.n_shared_experts;
    if (c.is_moe()) {
      j["num_experts_per_tok"] = c.num_experts_per_tok;
      j["moe_intermediate_size"] = c.moe_intermediate_size;
    }
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["moe_layer_freq"] = c.moe_layer_freq;
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    j["topk_method"] = c.topk_method == TopkMethod::noaux_tc               ? "noaux_tc"
                       : c.topk_method == TopkMethod::group_limited_greedy ? "group_limited_greedy"
                                                                           : "greedy";
    j["scoring_func"] = c.scoring_func == ScoringFunc::sigmoid ? "sigmoid" : "softmax";
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  } else {
    if (c.head_dim != c.hidden_size / c.num_attention_heads) j["head_dim"] = c.head_dim;
    if (c.family == Family::mixtral) {
      j["num_local_experts"] = c.n_routed_experts;
      j["num_experts_per_tok"] = c.num_experts_per_tok;
    }
  }

  j["rope_theta"] = c.rope.theta;
  const RopeConfig& r = c.rope;
  switch (r.type) {
    case RopeType::none:
    case RopeType::default_:
      break;
    case RopeType::linear:
      j["rope_scaling"] = {{"type", "linear"}, {"factor", r.factor}};
      break;
    case RopeType::yarn: {
      nlohmann::json s = {{"type", "yarn"},
                          {"factor", r.factor},
                          {"original_max_position_embeddings", r.original_max_position_embeddings},
                          {"beta_fast", r.beta_fast},
                          {"beta_slow", r.beta_slow},
                          {"mscale", r.mscale}};
      if (r.mscale_all_dim != 0.0) s["mscale_all_dim"] = r.mscale_all_dim;
      if (r.attention_factor) s["attention_factor"] = *r.attention_factor;
      j["rope_scaling"] = s;
      break;
    }
    case RopeType::llama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", r.factor},
          {"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"original_max_position_embeddings", r.original_max_position_embeddings}};
      break;
  }

  if (c.norm_hybrid_split > 0) {
    auto name = [](NormType t) { return t == NormType::layernorm ? "layernorm" : "rmsnorm"; };
    j["tmoe_norm_hybrid_split"] = c.norm_hybrid_split;
    j["tmoe_norm_shallow"] = name(c.norm_shallow);
    j["tmoe_norm_deep"] = name(c.norm_deep);
  }
  if (c.fp8)
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {c.fp8_block_rows, c.fp8_block_cols}}};
  return j;
}

}  // namespace tmoe::io
