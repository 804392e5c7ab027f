// tmoe/io/config.hpp: config.json -> ModelConfig, a plain run-time description of a decoder model.
//
// Families: deepseek_v3 (DeepSeek-V3/R1: MLA + noaux_tc sigmoid MoE), deepseek_v2 (MLA, softmax
// MoE, q_lora_rank may be null), qwen2 (GQA with q/k/v biases), llama (GQA, rope_scaling llama3),
// mixtral (GQA + softmax top-k MoE), and tmoe's own "seed" variant fields (tmoe_* keys, usable on
// any family). Every field is documented in docs/config.md. Sizes are size_t; an absent optional
// size is 0 (q_lora_rank 0 means a direct q_proj, n_routed_experts 0 means a dense model).
// Rope parameters come from transformers 5's `rope_parameters` or the older `rope_scaling` +
// `rope_theta`. Every problem is one tmoe::Error "[config] <source>: <field>: ..." naming the
// field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/error.hpp"
#include "tmoe/io/mmap.hpp"

namespace tmoe::io {

enum class Family : std::uint8_t { deepseek_v3, deepseek_v2, qwen2, llama, mixtral };
enum class RopeType : std::uint8_t { none, default_, linear, yarn, llama3 };
enum class NormType : std::uint8_t { rmsnorm, layernorm };
enum class TopkMethod : std::uint8_t { greedy, group_limited_greedy, noaux_tc };
enum class ScoringFunc : std::uint8_t { softmax, sigmoid };

constexpr std::string_view family_name(Family f) {
  switch (f) {
    case Family::deepseek_v3:
      return "deepseek_v3";
    case Family::deepseek_v2:
      return "deepseek_v2";
    case Family::qwen2:
      return "qwen2";
    case Family::llama:
      return "llama";
    case Family::mixtral:
      return "mixtral";
  }
  return "?";
}

struct RopeConfig {
  RopeType type = RopeType::default_;
  double theta = 10000.0;
  double factor = 1.0;                                   // yarn, linear, llama3
  std::size_t original_max_position_embeddings = 0;      // yarn, llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double mscale = 1.0, mscale_all_dim = 0.0;             // yarn (DeepSeek); 0 = not given
  std::optional<double> attention_factor;                // yarn: explicit cos/sin scale
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  bool interleave = false;  // rotate (x0,x1),(x2,x3).. pairs (DeepSeek checkpoints) vs half-split
  std::vector<float> freq_factors;  // GGUF rope_freqs.weight (divides each frequency); else empty
};

struct ModelConfig {
  Family family = Family::llama;
  std::string model_type;                  // as written in config.json
  std::vector<std::string> architectures;  // as written
  std::string dtype;                       // "torch_dtype" / "dtype", e.g. "bfloat16"; may be empty
  std::string hidden_act = "silu";

  std::size_t vocab_size = 0;
  std::size_t hidden_size = 0;
  std::size_t num_hidden_layers = 0;
  std::size_t intermediate_size = 0;  // dense MLP width
  std::size_t num_attention_heads = 0;
  std::size_t num_key_value_heads = 0;  // == heads for MLA (nominal)
  std::size_t head_dim = 0;             // GQA head width (hidden/heads unless given)
  std::size_t max_position_embeddings = 0;
  double norm_eps = 1e-6;
  bool attention_bias = false;  // q/k/v biases (qwen2: true)
  bool mlp_bias = false;
  bool tie_word_embeddings = false;

  // Multi-head latent attention (deepseek_v2/v3); kv_lora_rank 0 means plain GQA.
  std::size_t q_lora_rank = 0;  // 0: direct q_proj (V2-Lite)
  std::size_t kv_lora_rank = 0;
  std::size_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;

  // Mixture of experts; n_routed_experts 0 means dense.
  std::size_t n_routed_experts = 0;
  std::size_t num_experts_per_tok = 0;
  std::size_t n_shared_experts = 0;
  std::size_t moe_intermediate_size = 0;  // per-expert width
  std::size_t first_k_dense_replace = 0;  // layers [0, k) are dense
  std::size_t moe_layer_freq = 1;
  std::size_t n_group = 1, topk_group = 1;
  TopkMethod topk_method = TopkMethod::greedy;
  ScoringFunc scoring_func = ScoringFunc::softmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  std::size_t num_nextn_predict_layers = 0;

  RopeConfig rope;

  // tmoe "seed" variant: the first norm_hybrid_split layers use norm_shallow, the rest norm_deep.
  std::size_t norm_hybrid_split = 0;
  NormType norm_shallow = NormType::rmsnorm;
  NormType norm_deep = NormType::rmsnorm;

  // FP8 checkpoint (quantization_config.quant_method == "fp8").
  bool fp8 = false;
  std::size_t fp8_block_rows = 0, fp8_block_cols = 0;

  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  // int or list in config.json

  bool is_mla() const { return kv_lora_rank != 0; }
  bool is_moe() const { return n_routed_experts != 0; }
  bool is_moe_layer(std::size_t layer) const {
    return is_moe() && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  NormType norm_of_layer(std::size_t layer) const {
    return layer < norm_hybrid_split ? norm_shallow : norm_deep;
  }
  std::size_t qk_head_dim() const {
    return is_mla() ? qk_nope_head_dim + qk_rope_head_dim : head_dim;
  }
};

namespace detail {

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string source) : j_(j), src_(std::move(source)) {}

  [[noreturn]] void bad(std::string_view field, const std::string& what) const {
    fail("config", src_, ": ", field, ": ", what);
  }
  bool has(const char* k) const { return j_.contains(k) && !j_[k].is_null(); }

  std::size_t size(const char* k, std::optional<std::size_t> def = std::nullopt) const {
    return size_in(j_, k, k, def);
  }
  std::size_t size_in(const nlohmann::json& o, const char* k, std::string_view field,
                      std::optional<std::size_t> def) const {
    if (!o.contains(k) || o[k].is_null()) {
      if (!def) bad(field, "missing required size");
      return *def;
    }
    const auto& v = o[k];
    if (v.is_number_unsigned()) return static_cast<std::size_t>(v.get<std::uint64_t>());
    if (!v.is_number_integer()) bad(field, std::string("expected an integer, got ") + v.dump());
    if (v.get<std::int64_t>() < 0) bad(field, "expected a non-negative integer, got " + v.dump());
    return static_cast<std::size_t>(v.get<std::int64_t>());
  }
  double real(const char* k, double def) const { return real_in(j_, k, k, def); }
  double real_in(const nlohmann::json& o, const char* k, std::string_view field, double def) const {
    if (!o.contains(k) || o[k].is_null()) return def;
    if (!o[k].is_number()) bad(field, "expected a number, got " + o[k].dump());
    return o[k].get<double>();
  }
  bool boolean(const char* k, bool def) const {
    if (!has(k)) return def;
    if (!j_[k].is_boolean()) bad(k, "expected true or false, got " + j_[k].dump());
    return j_[k].get<bool>();
  }
  std::string str(const char* k, const std::string& def) const { return str_in(j_, k, k, def); }
  std::string str_in(const nlohmann::json& o, const char* k, std::string_view field,
                     const std::string& def) const {
    if (!o.contains(k) || o[k].is_null()) return def;
    if (!o[k].is_string()) bad(field, "expected a string, got " + o[k].dump());
    return o[k].get<std::string>();
  }
  std::vector<std::int64_t> ids(const char* k) const {
    std::vector<std::int64_t> out;
    if (!has(k)) return out;
    const auto& v = j_[k];
    auto one = [&](const nlohmann::json& x) {
      if (!x.is_number_integer() || x.get<std::int64_t>() < 0)
        bad(k, "expected a non-negative token id, got " + x.dump());
      out.push_back(x.get<std::int64_t>());
    };
    if (v.is_array())
      for (const auto& x : v) one(x);
    else
      one(v);
    return out;
  }
  const nlohmann::json& json() const { return j_; }
  const std::string& source() const { return src_; }

 private:
  const nlohmann::json& j_;
  std::string src_;
};

inline NormType parse_norm(const ConfigReader& r, const char* k, NormType def) {
  const std::string s = r.str(k, "");
  if (s.empty()) return def;
  if (s == "layernorm" || s == "layer_norm") return NormType::layernorm;
  if (s == "rmsnorm" || s == "rms_norm") return NormType::rmsnorm;
  r.bad(k, "unknown norm '" + s + "' (expected layernorm or rmsnorm)");
}

inline void parse_rope(const ConfigReader& r, ModelConfig& c) {
  const auto& j = r.json();
  RopeConfig& rope = c.rope;
  rope.theta = r.real("rope_theta", 10000.0);
  // transformers 5: rope_parameters {rope_type, rope_theta, ...}, possibly per attention type.
  const nlohmann::json* p = nullptr;
  std::string field = "rope_scaling";
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    p = &j["rope_parameters"];
    field = "rope_parameters";
    if (p->is_object() && p->contains("full_attention")) {
      p = &(*p)["full_attention"];
      field = "rope_parameters.full_attention";
    }
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    p = &j["rope_scaling"];
  }
  if (!p) return;
  if (!p->is_object()) r.bad(field, "expected an object, got " + p->dump());
  const auto& o = *p;
  auto f = [&](const char* k) { return field + "." + k; };
  rope.theta = r.real_in(o, "rope_theta", f("rope_theta"), rope.theta);
  std::string type = r.str_in(o, "rope_type", f("rope_type"), "");
  if (type.empty()) type = r.str_in(o, "type", f("type"), "default");
  if (type == "default") {
    rope.type = RopeType::default_;
  } else if (type == "linear") {
    rope.type = RopeType::linear;
    rope.factor = r.real_in(o, "factor", f("factor"), 1.0);
  } else if (type == "yarn" || type == "deepseek_yarn") {
    rope.type = RopeType::yarn;
    rope.factor = r.real_in(o, "factor", f("factor"), 1.0);
    rope.original_max_position_embeddings =
        r.size_in(o, "original_max_position_embeddings", f("original_max_position_embeddings"),
                  c.max_position_embeddings);
    rope.beta_fast = r.real_in(o, "beta_fast", f("beta_fast"), 32.0);
    rope.beta_slow = r.real_in(o, "beta_slow", f("beta_slow"), 1.0);
    rope.mscale = r.real_in(o, "mscale", f("mscale"), 1.0);
    rope.mscale_all_dim = r.real_in(o, "mscale_all_dim", f("mscale_all_dim"), 0.0);
    if (o.contains("attention_factor") && !o["attention_factor"].is_null())
      rope.attention_factor = r.real_in(o, "attention_factor", f("attention_factor"), 1.0);
    if (rope.original_max_position_embeddings == 0)
      r.bad(f("original_max_position_embeddings"), "must be > 0");
    if (!(rope.beta_fast > rope.beta_slow) || rope.beta_slow <= 0)
      r.bad(f("beta_fast"), "expected beta_fast > beta_slow > 0");
  } else if (type == "llama3") {
    rope.type = RopeType::llama3;
    rope.factor = r.real_in(o, "factor", f("factor"), 1.0);
    rope.low_freq_factor = r.real_in(o, "low_freq_factor", f("low_freq_factor"), 1.0);
    rope.high_freq_factor = r.real_in(o, "high_freq_factor", f("high_freq_factor"), 4.0);
    rope.original_max_position_embeddings = r.size_in(
        o, "original_max_position_embeddings", f("original_max_position_embeddings"), std::nullopt);
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      r.bad(f("high_freq_factor"), "expected high_freq_factor > low_freq_factor");
  } else {
    r.bad(field.ends_with("rope_type") ? field : f("type"),
          "unsupported rope type '" + type + "' (supported: default, linear, yarn, llama3)");
  }
  if (!(rope.factor > 0)) r.bad(f("factor"), "expected a positive factor");
}

}  // namespace detail

// Parses and validates a config.json object. `source` names it in errors (usually its path).
inline ModelConfig parse_model_config(const nlohmann::json& j,
                                      const std::string& source = "config.json") {
  detail::ConfigReader r(j, source);
  if (!j.is_object()) fail("config", source, ": expected a JSON object, got ", j.type_name());
  ModelConfig c;
  c.model_type = r.str("model_type", "");
  if (r.has("architectures")) {
    if (!j["architectures"].is_array()) r.bad("architectures", "expected a list of strings");
    for (const auto& a : j["architectures"]) {
      if (!a.is_string()) r.bad("architectures", "expected a list of strings, got " + a.dump());
      c.architectures.push_back(a.get<std::string>());
    }
  }
  const std::string mt = c.model_type;
  auto arch_is = [&](std::string_view a) {
    return c.architectures.size() == 1 && c.architectures[0] == a;
  };
  if (mt == "deepseek_v3" || (mt.empty() && arch_is("DeepseekV3ForCausalLM")))
    c.family = Family::deepseek_v3;
  else if (mt == "deepseek_v2" || (mt.empty() && arch_is("DeepseekV2ForCausalLM")))
    c.family = Family::deepseek_v2;
  else if (mt == "qwen2" || (mt.empty() && arch_is("Qwen2ForCausalLM")))
    c.family = Family::qwen2;
  else if (mt == "llama" || (mt.empty() && arch_is("LlamaForCausalLM")))
    c.family = Family::llama;
  else if (mt == "mixtral" || (mt.empty() && arch_is("MixtralForCausalLM")))
    c.family = Family::mixtral;
  else if (mt.empty())
    r.bad("model_type", "missing, and architectures does not name a supported model");
  else
    r.bad("model_type", "unknown model_type '" + mt +
                            "' (supported: deepseek_v3, deepseek_v2, qwen2, llama, mixtral)");

  c.dtype = r.str("torch_dtype", r.str("dtype", ""));
  c.hidden_act = r.str("hidden_act", "silu");
  c.vocab_size = r.size("vocab_size");
  c.hidden_size = r.size("hidden_size");
  c.num_hidden_layers = r.size("num_hidden_layers");
  c.num_attention_heads = r.size("num_attention_heads");
  c.num_key_value_heads = r.size("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = r.size("max_position_embeddings", 4096);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.attention_bias = r.boolean("attention_bias", c.family == Family::qwen2);
  c.mlp_bias = r.boolean("mlp_bias", false);
  c.norm_eps = r.real("rms_norm_eps", r.real("layer_norm_eps", 1e-6));
  c.bos_token_id =
      r.has("bos_token_id") ? std::optional(r.ids("bos_token_id").at(0)) : std::nullopt;
  c.eos_token_ids = r.ids("eos_token_id");
  c.num_nextn_predict_layers = r.size("num_nextn_predict_layers", 0);

  for (auto [name, v] : {std::pair{"vocab_size", c.vocab_size},
                         {"hidden_size", c.hidden_size},
                         {"num_hidden_layers", c.num_hidden_layers},
                         {"num_attention_heads", c.num_attention_heads},
                         {"num_key_value_heads", c.num_key_value_heads}})
    if (v == 0) r.bad(name, "must be > 0");
  if (!(c.norm_eps > 0)) r.bad("rms_norm_eps", "must be > 0");

  const bool deepseek = c.family == Family::deepseek_v3 || c.family == Family::deepseek_v2;
  if (deepseek) {
    // null means a direct q_proj (V2-Lite style, also valid for deepseek_v3 configs).
    c.q_lora_rank =
        (j.contains("q_lora_rank") && j["q_lora_rank"].is_null())
            ? 0
            : r.size("q_lora_rank",
                     c.family == Family::deepseek_v2 ? 0 : std::optional<std::size_t>());
    c.kv_lora_rank = r.size("kv_lora_rank");
    c.qk_nope_head_dim = r.size("qk_nope_head_dim");
    c.qk_rope_head_dim = r.size("qk_rope_head_dim");
    c.v_head_dim = r.size("v_head_dim");
    for (auto [name, v] : {std::pair{"kv_lora_rank", c.kv_lora_rank},
                           {"qk_nope_head_dim", c.qk_nope_head_dim},
                           {"qk_rope_head_dim", c.qk_rope_head_dim},
                           {"v_head_dim", c.v_head_dim}})
      if (v == 0) r.bad(name, "must be > 0");
    if (c.qk_rope_head_dim % 2)
      r.bad("qk_rope_head_dim", "must be even, got " + std::to_string(c.qk_rope_head_dim));
    c.head_dim = c.qk_rope_head_dim;  // what the rope tables use
    c.intermediate_size = r.size("intermediate_size");
    c.n_routed_experts = r.size("n_routed_experts", 0);
    c.n_shared_experts = r.size("n_shared_experts", 0);
    c.num_experts_per_tok =
        r.size("num_experts_per_tok", c.n_routed_experts ? std::optional<std::size_t>() : 0);
    c.moe_intermediate_size =
        r.size("moe_intermediate_size", c.n_routed_experts ? std::optional<std::size_t>() : 0);
    c.first_k_dense_replace = r.size("first_k_dense_replace", 0);
    c.moe_layer_freq = r.size("moe_layer_freq", 1);
    c.n_group = r.size("n_group", 1);
    c.topk_group = r.size("topk_group", 1);
    c.norm_topk_prob = r.boolean("norm_topk_prob", c.family == Family::deepseek_v3);
    c.routed_scaling_factor = r.real("routed_scaling_factor", 1.0);
    const std::string tm =
        r.str("topk_method", c.family == Family::deepseek_v3 ? "noaux_tc" : "greedy");
    if (tm == "noaux_tc")
      c.topk_method = TopkMethod::noaux_tc;
    else if (tm == "group_limited_greedy")
      c.topk_method = TopkMethod::group_limited_greedy;
    else if (tm == "greedy")
      c.topk_method = TopkMethod::greedy;
    else
      r.bad("topk_method",
            "unknown '" + tm + "' (expected noaux_tc, group_limited_greedy or greedy)");
    const std::string sf =
        r.str("scoring_func", c.family == Family::deepseek_v3 ? "sigmoid" : "softmax");
    if (sf == "sigmoid")
      c.scoring_func = ScoringFunc::sigmoid;
    else if (sf == "softmax")
      c.scoring_func = ScoringFunc::softmax;
    else
      r.bad("scoring_func", "unknown '" + sf + "' (expected sigmoid or softmax)");
    c.rope.interleave = r.boolean("rope_interleave", true);
  } else {
    c.intermediate_size = r.size("intermediate_size");
    if (r.has("head_dim"))
      c.head_dim = r.size("head_dim");
    else {
      if (c.hidden_size % c.num_attention_heads)
        r.bad("num_attention_heads", std::to_string(c.num_attention_heads) +
                                         " does not divide hidden_size " +
                                         std::to_string(c.hidden_size));
      c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (c.head_dim == 0 || c.head_dim % 2)
      r.bad("head_dim", "must be even and > 0, got " + std::to_string(c.head_dim));
    if (c.num_attention_heads % c.num_key_value_heads)
      r.bad("num_key_value_heads", std::to_string(c.num_key_value_heads) +
                                       " does not divide num_attention_heads " +
                                       std::to_string(c.num_attention_heads));
    if (c.family == Family::mixtral) {
      c.n_routed_experts = r.size("num_local_experts");
      c.num_experts_per_tok = r.size("num_experts_per_tok");
      c.moe_intermediate_size = c.intermediate_size;
      c.norm_topk_prob = true;
      c.scoring_func = ScoringFunc::softmax;
    }
  }
  if (c.intermediate_size == 0 && !(c.is_moe() && c.first_k_dense_replace == 0))
    r.bad("intermediate_size", "must be > 0");
  if (c.is_moe()) {
    if (c.num_experts_per_tok == 0 || c.num_experts_per_tok > c.n_routed_experts)
      r.bad("num_experts_per_tok", "expected 1.." + std::to_string(c.n_routed_experts) + ", got " +
                                       std::to_string(c.num_experts_per_tok));
    if (c.moe_intermediate_size == 0) r.bad("moe_intermediate_size", "must be > 0");
    if (c.moe_layer_freq == 0) r.bad("moe_layer_freq", "must be > 0");
    if (c.n_group == 0 || c.n_routed_experts % c.n_group)
      r.bad("n_group", std::to_string(c.n_group) + " does not divide n_routed_experts " +
                           std::to_string(c.n_routed_experts));
    if (c.topk_group == 0 || c.topk_group > c.n_group)
      r.bad("topk_group",
            "expected 1.." + std::to_string(c.n_group) + ", got " + std::to_string(c.topk_group));
    if (c.topk_method != TopkMethod::greedy &&
        c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group))
      r.bad("num_experts_per_tok", "more than the experts in topk_group groups");
    if (c.first_k_dense_replace > c.num_hidden_layers)
      r.bad("first_k_dense_replace",
            "exceeds num_hidden_layers " + std::to_string(c.num_hidden_layers));
  }

  detail::parse_rope(r, c);

  // tmoe seed-variant fields.
  c.norm_hybrid_split = r.size("tmoe_norm_hybrid_split", 0);
  if (c.norm_hybrid_split > c.num_hidden_layers)
    r.bad("tmoe_norm_hybrid_split",
          "exceeds num_hidden_layers " + std::to_string(c.num_hidden_layers));
  c.norm_shallow = detail::parse_norm(r, "tmoe_norm_shallow", NormType::layernorm);
  c.norm_deep = detail::parse_norm(r, "tmoe_norm_deep", NormType::rmsnorm);
  if (r.has("tmoe_norm_shallow") && !r.has("tmoe_norm_hybrid_split"))
    r.bad("tmoe_norm_shallow", "given without tmoe_norm_hybrid_split");

  if (r.has("quantization_config")) {
    const auto& q = j["quantization_config"];
    if (!q.is_object()) r.bad("quantization_config", "expected an object");
    const std::string qm = r.str_in(q, "quant_method", "quantization_config.quant_method", "");
    if (qm == "fp8") {
      c.fp8 = true;
      const std::string fmt = r.str_in(q, "fmt", "quantization_config.fmt", "e4m3");
      if (fmt != "e4m3")
        r.bad("quantization_config.fmt", "unsupported fp8 format '" + fmt + "' (expected e4m3)");
      const auto& b = q.contains("weight_block_size") ? q["weight_block_size"] : nlohmann::json();
      if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() ||
          !b[1].is_number_integer() || b[0].get<std::int64_t>() <= 0 ||
          b[1].get<std::int64_t>() <= 0)
        r.bad("quantization_config.weight_block_size",
              "expected two positive integers, got " + b.dump());
      c.fp8_block_rows = b[0].get<std::size_t>();
      c.fp8_block_cols = b[1].get<std::size_t>();
    }
  }
  return c;
}

// Reads config.json from a file or a model folder.
inline ModelConfig load_model_config(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    file = (std::filesystem::path(path) / "config.json").string();
  const std::string text = read_text_file(file);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("config", file, ": not valid JSON: ", e.what());
  }
  return parse_model_config(j, file);
}

}  // namespace tmoe::io
