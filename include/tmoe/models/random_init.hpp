// tmoe/models/random_init.hpp: the tensor inventory of a config (every name and shape a
// checkpoint of that family holds, as Hugging Face names them) and deterministic random weights
// for it: the built-in default model, `tmoe init`, and benchmarks at real shapes without
// downloading anything.
//
// Values: matrices uniform in +-gain * sqrt(3 / in) (unit-variance outputs for unit inputs, so
// norms, routing and rotary embeddings all matter), norm weights uniform in [0.8, 1.2], biases
// and the router's correction bias uniform in [0, 0.1]. The generator is splitmix64, so a seed
// gives the same weights on every platform.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tmoe/core/dtype.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/models/weights.hpp"

namespace tmoe::models {

enum class TensorRole { matrix, norm, bias, router_bias };

struct TensorSpec {
  std::string name;
  std::vector<std::size_t> shape;
  TensorRole role = TensorRole::matrix;
};

inline std::vector<TensorSpec> tensor_specs(const io::ModelConfig& c) {
  std::vector<TensorSpec> s;
  const std::size_t d = c.hidden_size, V = c.vocab_size;
  auto mat = [&](std::string n, std::size_t o, std::size_t i) {
    s.push_back({std::move(n), {o, i}, TensorRole::matrix});
  };
  auto vec = [&](std::string n, std::size_t k, TensorRole r) {
    s.push_back({std::move(n), {k}, r});
  };
  auto mlp = [&](const std::string& p, std::size_t I, const char* g = "gate_proj",
                 const char* u = "up_proj", const char* dn = "down_proj") {
    mat(p + g + ".weight", I, d);
    mat(p + u + ".weight", I, d);
    mat(p + dn + ".weight", d, I);
  };
  mat("model.embed_tokens.weight", V, d);
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.";
    const bool ln = c.norm_of_layer(l) == io::NormType::layernorm;
    vec(p + "input_layernorm.weight", d, TensorRole::norm);
    vec(p + "post_attention_layernorm.weight", d, TensorRole::norm);
    if (ln) {
      vec(p + "input_layernorm.bias", d, TensorRole::bias);
      vec(p + "post_attention_layernorm.bias", d, TensorRole::bias);
    }
    if (c.is_mla()) {
      const std::size_t H = c.num_attention_heads, Dq = c.qk_nope_head_dim + c.qk_rope_head_dim;
      if (c.q_lora_rank > 0) {
        mat(a + "q_a_proj.weight", c.q_lora_rank, d);
        vec(a + "q_a_layernorm.weight", c.q_lora_rank, TensorRole::norm);
        mat(a + "q_b_proj.weight", H * Dq, c.q_lora_rank);
      } else {
        mat(a + "q_proj.weight", H * Dq, d);
      }
      mat(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, d);
      vec(a + "kv_a_layernorm.weight", c.kv_lora_rank, TensorRole::norm);
      mat(a + "kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      mat(a + "o_proj.weight", d, H * c.v_head_dim);
    } else {
      const std::size_t qd = c.num_attention_heads * c.head_dim,
                        kd = c.num_key_value_heads * c.head_dim;
      mat(a + "q_proj.weight", qd, d);
      mat(a + "k_proj.weight", kd, d);
      mat(a + "v_proj.weight", kd, d);
      mat(a + "o_proj.weight", d, qd);
      if (c.attention_bias) {
        vec(a + "q_proj.bias", qd, TensorRole::bias);
        vec(a + "k_proj.bias", kd, TensorRole::bias);
        vec(a + "v_proj.bias", kd, TensorRole::bias);
      }
    }
    const bool deepseek =
        c.family == io::Family::deepseek_v3 || c.family == io::Family::deepseek_v2;
    if (!c.is_moe_layer(l)) {
      mlp(p + "mlp.", c.intermediate_size);
    } else if (deepseek) {
      const std::string m = p + "mlp.";
      mat(m + "gate.weight", c.n_routed_experts, d);
      if (c.topk_method == io::TopkMethod::noaux_tc)
        vec(m + "gate.e_score_correction_bias", c.n_routed_experts, TensorRole::router_bias);
      for (std::size_t e = 0; e < c.n_routed_experts; ++e)
        mlp(m + "experts." + std::to_string(e) + ".", c.moe_intermediate_size);
      if (c.n_shared_experts > 0)
        mlp(m + "shared_experts.", c.moe_intermediate_size * c.n_shared_experts);
    } else {
      const std::string m = p + "block_sparse_moe.";
      mat(m + "gate.weight", c.n_routed_experts, d);
      for (std::size_t e = 0; e < c.n_routed_experts; ++e)
        mlp(m + "experts." + std::to_string(e) + ".", c.intermediate_size, "w1", "w3", "w2");
    }
  }
  vec("model.norm.weight", d, TensorRole::norm);
  if (c.norm_of_layer(c.num_hidden_layers) == io::NormType::layernorm)
    vec("model.norm.bias", d, TensorRole::bias);
  if (!c.tie_word_embeddings) mat("lm_head.weight", V, d);
  return s;
}

// splitmix64: a tiny, well-mixed, portable generator.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : x_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (x_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) {  // [lo, hi)
    return lo + (hi - lo) * static_cast<float>(next() >> 40) * 0x1.0p-24f;
  }

 private:
  std::uint64_t x_;
};

// Tensor `index` of tensor_specs(c) with the random values random_weights gives it: matrices as T
// (float, bf16 or f16) into `out` (n elements), vectors as float into `out_f`. Each tensor draws
// from its own stream (seed mixed with its index), so adding a tensor to the inventory does not
// change the others, and a tensor can be made alone (tmoe init writes large models one tensor at a
// time).
template <class T>
void random_tensor(const TensorSpec& t, std::size_t index, std::uint64_t seed, float gain, T* out,
                   float* out_f) {
  SplitMix64 rng(seed * 0x2545f4914f6cdd1dull + index);
  std::size_t n = 1;
  for (auto x : t.shape) n *= x;
  if (t.role == TensorRole::matrix) {
    const float a = gain * std::sqrt(3.0f / static_cast<float>(t.shape[1]));
    for (std::size_t i = 0; i < n; ++i) out[i] = from_float<T>(rng.uniform(-a, a));
  } else {
    for (std::size_t i = 0; i < n; ++i)
      out_f[i] = t.role == TensorRole::norm ? rng.uniform(0.8f, 1.2f) : rng.uniform(0.f, 0.1f);
  }
}

// Random weights for every tensor of `c`; matrices stored as T (float, bf16 or f16), vectors as
// float (values as random_tensor).
template <class T>
MemoryWeights random_weights(const io::ModelConfig& c, std::uint64_t seed, float gain = 1.0f,
                             std::string where = "random weights") {
  MemoryWeights w(std::move(where));
  const auto specs = tensor_specs(c);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    std::size_t n = 1;
    for (auto x : t.shape) n *= x;
    if (t.role == TensorRole::matrix) {
      std::vector<T> v(n);
      random_tensor<T>(t, i, seed, gain, v.data(), nullptr);
      w.add<T>(t.name, t.shape, std::move(v));
    } else {
      std::vector<float> v(n);
      random_tensor<T>(t, i, seed, gain, nullptr, v.data());
      w.add<float>(t.name, t.shape, std::move(v));
    }
  }
  return w;
}

}  // namespace tmoe::models
