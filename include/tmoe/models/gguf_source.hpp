// tmoe/models/gguf_source.hpp: a GGUF file (llama.cpp layout) as a WeightSource with Hugging Face
// tensor names, and the io::ModelConfig its metadata describes.
//
//   auto src = std::make_shared<models::GgufSource>("model.gguf");
//   io::ModelConfig cfg = src->config();              // llama, mixtral-style llama, qwen2,
//   deepseek2 auto model = models::build_model(cfg, src);       // or
//   models::load_model("model.gguf")
//
// Names: find("model.layers.3.mlp.experts.5.up_proj.weight") maps the HF name through
// io::gguf_tensor_name to blk.3.ffn_up_exps.weight and returns expert 5's slice of the stacked
// tensor. Every tensor is used in place through the mapping (zero-copy): F32 / F16 / BF16 as
// those dtypes, Q8_0 / Q4_0 / Q4_K / Q6_K as RawTensor::quant blocks (WeightLoader dequantizes
// them when a model asks for a float format). One exception: DeepSeek's kv_b_proj. Current GGUF
// files split it per head into attn_k_b (W_UK transposed) and attn_v_b; the source rebuilds
// kv_b_proj.weight (H * (nope + v), kv_lora_rank) as a copy it owns, in the halves' dtype when
// they are F32 / BF16 / F16 (exact) and as BF16 when they are block formats (dequantized, then
// rounded to bf16), because MLA's absorbed decode reads W_UK / W_UV rows directly.
// Legacy files with attn_kv_b are used in place.
//
// Config (io::ModelConfig through parse_model_config, so every check of config.json applies):
//   llama     -> llama, or mixtral when llama.expert_count > 0. llama.cpp's converter permuted
//                q/k rows to adjacent rope pairs; instead of undoing that, rope.interleave is set
//                (rotating pairs (2i, 2i+1) of the permuted rows is the same map as half-split on
//                the original rows: only the order of the q.k sum changes). rope_freqs.weight
//                (Llama 3 scaling) becomes rope.freq_factors.
//   qwen2     -> qwen2 (attention_bias from blk.0.attn_q.bias).
//   deepseek2 -> deepseek_v3 when expert_gating_func is 2 (sigmoid: noaux_tc), else deepseek_v2
//                (group_limited_greedy when expert_group_count > 1); rope_interleave true; YaRN
//                mscale = mscale_all_dim = yarn_log_multiplier / 0.1.
// tie_word_embeddings is set when output.weight is absent. Other architectures: one error naming
// general.architecture.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/error.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/gguf.hpp"
#include "tmoe/models/weights.hpp"

namespace tmoe::models {

class GgufSource final : public WeightSource {
 public:
  explicit GgufSource(const std::string& path) : g_(path) {
    for (const auto& t : g_.tensors()) by_name_.emplace(t.name, &t);
  }
  const io::GgufFile& file() const { return g_; }
  std::string where() const override { return g_.path(); }

  const RawTensor* find(std::string_view hf) const override {
    if (auto it = cache_.find(hf); it != cache_.end()) return &it->second;
    auto g = io::gguf_tensor_name(hf);
    if (!g) return nullptr;
    const std::string hfs(hf);
    if (hfs.ends_with("self_attn.kv_b_proj.weight") && !by_name_.count(g->name))
      return rebuild_kv_b(hfs, g->name);
    auto it = by_name_.find(g->name);
    if (it == by_name_.end()) return nullptr;
    const io::GgufTensor& t = *it->second;
    RawTensor r = raw_of(t);
    if (g->expert) {
      const std::size_t E = r.shape.empty() ? 0 : r.shape.front();
      if (t.ne.size() != 3 || *g->expert >= E)
        fail("gguf", g_.path(), ": tensor '", t.name, "' (shape ", io::shape_string(r.shape),
             ") has no expert ", *g->expert, " for '", hf, "'");
      const std::size_t per = r.nbytes / E;
      r.data += *g->expert * per;
      r.nbytes = per;
      r.shape.erase(r.shape.begin());
    }
    return &cache_.emplace(hfs, std::move(r)).first->second;
  }

  // The model config the metadata describes (see the file comment).
  io::ModelConfig config() const {
    const std::string& arch = g_.get_string("general.architecture");
    auto key = [&](const std::string& k) { return arch + "." + k; };
    auto u = [&](const std::string& k) { return g_.get_uint(key(k)); };
    auto u_or = [&](const std::string& k, std::uint64_t def) {
      return g_.find(key(k)) ? g_.get_uint(key(k)) : def;
    };
    auto f_or = [&](const std::string& k, double def) {
      return g_.find(key(k)) ? g_.get_float(key(k)) : def;
    };
    check(arch == "llama" || arch == "qwen2" || arch == "deepseek2", "gguf", g_.path(),
          ": general.architecture '", arch, "' is not supported (llama, qwen2, deepseek2)");
    nlohmann::json j;
    const auto& embd = tensor("token_embd.weight");
    check(embd.ne.size() == 2, "gguf", g_.path(), ": token_embd.weight must be 2-D");
    j["vocab_size"] = embd.ne[1];
    j["hidden_size"] = u("embedding_length");
    j["num_hidden_layers"] = u("block_count");
    j["num_attention_heads"] = u("attention.head_count");
    j["max_position_embeddings"] = u_or("context_length", 4096);
    j["rms_norm_eps"] = f_or("attention.layer_norm_rms_epsilon", 1e-6);
    j["rope_theta"] = f_or("rope.freq_base", 10000.0);
    j["tie_word_embeddings"] = !by_name_.count("output.weight");
    j["hidden_act"] = "silu";
    if (auto b = g_.get_uint_opt("tokenizer.ggml.bos_token_id")) j["bos_token_id"] = *b;
    if (auto e = g_.get_uint_opt("tokenizer.ggml.eos_token_id")) j["eos_token_id"] = *e;
    const std::uint64_t n_expert = u_or("expert_count", 0);
    nlohmann::json rope;
    const std::string scaling =
        g_.find(key("rope.scaling.type")) ? g_.get_string(key("rope.scaling.type")) : "none";
    if (scaling == "linear") {
      rope = {{"rope_type", "linear"}, {"factor", f_or("rope.scaling.factor", 1.0)}};
    } else if (scaling == "yarn") {
      rope = {{"rope_type", "yarn"},
              {"factor", f_or("rope.scaling.factor", 1.0)},
              {"original_max_position_embeddings", u("rope.scaling.original_context_length")},
              {"beta_fast", f_or("rope.scaling.yarn_beta_fast", 32.0)},
              {"beta_slow", f_or("rope.scaling.yarn_beta_slow", 1.0)}};
      if (arch == "deepseek2" && g_.find(key("rope.scaling.yarn_log_multiplier"))) {
        // The converter stores 0.1 * mscale_all_dim in float32; undo it to 6 digits.
        const double m =
            std::round(g_.get_float(key("rope.scaling.yarn_log_multiplier")) / 0.1 * 1e6) / 1e6;
        rope["mscale"] = m;
        rope["mscale_all_dim"] = m;
      }
    } else {
      check(scaling == "none", "gguf", g_.path(), ": ", key("rope.scaling.type"), " '", scaling,
            "' is not supported (none, linear, yarn)");
    }
    if (!rope.is_null()) j["rope_scaling"] = rope;

    if (arch == "deepseek2") {
      const std::uint64_t rope_dim = u("rope.dimension_count");
      j["model_type"] = u_or("expert_gating_func", 1) == 2 ? "deepseek_v3" : "deepseek_v2";
      const std::uint64_t q_lora = u_or("attention.q_lora_rank", 0);
      j["q_lora_rank"] = q_lora ? nlohmann::json(q_lora) : nlohmann::json(nullptr);
      j["kv_lora_rank"] = u("attention.kv_lora_rank");
      j["qk_rope_head_dim"] = rope_dim;
      const bool mla_keys = g_.find(key("attention.key_length_mla")) != nullptr;
      const std::uint64_t k_len =
          mla_keys ? u("attention.key_length_mla") : u("attention.key_length");
      check(k_len > rope_dim, "gguf", g_.path(), ": key length ", k_len,
            " must exceed the rope dimension ", rope_dim);
      j["qk_nope_head_dim"] = k_len - rope_dim;
      j["v_head_dim"] = mla_keys ? u("attention.value_length_mla") : u("attention.value_length");
      j["num_key_value_heads"] = u("attention.head_count");
      j["intermediate_size"] = u_or("feed_forward_length", 0);
      j["rope_interleave"] = true;
      if (n_expert) {
        j["n_routed_experts"] = n_expert;
        j["num_experts_per_tok"] = u("expert_used_count");
        j["n_shared_experts"] = u_or("expert_shared_count", 0);
        j["moe_intermediate_size"] = u("expert_feed_forward_length");
        j["first_k_dense_replace"] = u_or("leading_dense_block_count", 0);
        const std::uint64_t groups = u_or("expert_group_count", 1);
        j["n_group"] = groups;
        j["topk_group"] = u_or("expert_group_used_count", 1);
        j["routed_scaling_factor"] = f_or("expert_weights_scale", 1.0);
        j["norm_topk_prob"] = g_.find(key("expert_weights_norm")) &&
                              g_.at(key("expert_weights_norm")).type == io::GgufType::boolean &&
                              g_.at(key("expert_weights_norm")).b;
        const bool sigmoid = u_or("expert_gating_func", 1) == 2;
        j["scoring_func"] = sigmoid ? "sigmoid" : "softmax";
        j["topk_method"] = sigmoid ? "noaux_tc" : (groups > 1 ? "group_limited_greedy" : "greedy");
      }
    } else {
      j["num_key_value_heads"] = u_or("attention.head_count_kv", u("attention.head_count"));
      j["head_dim"] = u_or("attention.key_length", u_or("rope.dimension_count", 0));
      j["intermediate_size"] = u("feed_forward_length");
      j["attention_bias"] = by_name_.count("blk.0.attn_q.bias") > 0;
      if (arch == "qwen2") {
        check(n_expert == 0, "gguf", g_.path(), ": qwen2 with experts is not supported");
        j["model_type"] = "qwen2";
      } else if (n_expert) {
        j["model_type"] = "mixtral";
        j["num_local_experts"] = n_expert;
        j["num_experts_per_tok"] = u("expert_used_count");
      } else {
        j["model_type"] = "llama";
      }
    }
    io::ModelConfig c = io::parse_model_config(j, g_.path());
    if (arch == "llama") {
      c.rope.interleave = true;  // q/k rows permuted by the converter
      if (by_name_.count("rope_freqs.weight")) {
        const RawTensor r = raw_of(tensor("rope_freqs.weight"));
        check(r.dtype == DType::f32 && r.shape == std::vector<std::size_t>{c.head_dim / 2}, "gguf",
              g_.path(), ": rope_freqs.weight must be F32 [", c.head_dim / 2, "], got ",
              io::shape_string(r.shape));
        c.rope.freq_factors.resize(c.head_dim / 2);
        std::memcpy(c.rope.freq_factors.data(), r.data, r.nbytes);
      }
    }
    return c;
  }

 private:
  const io::GgufTensor& tensor(const std::string& name) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) fail("gguf", g_.path(), ": tensor '", name, "' is missing");
    return *it->second;
  }

  RawTensor raw_of(const io::GgufTensor& t) const {
    RawTensor r;
    r.shape = t.shape();
    r.data = t.data;
    r.nbytes = static_cast<std::size_t>(t.nbytes);
    switch (t.type) {
      case io::GgmlType::f32:
        r.dtype = DType::f32;
        break;
      case io::GgmlType::f16:
        r.dtype = DType::f16;
        break;
      case io::GgmlType::bf16:
        r.dtype = DType::bf16;
        break;
      case io::GgmlType::q8_0:
        r.dtype = DType::u8, r.quant = quant::QuantType::q8_0;
        break;
      case io::GgmlType::q4_0:
        r.dtype = DType::u8, r.quant = quant::QuantType::q4_0;
        break;
      case io::GgmlType::q4_k:
        r.dtype = DType::u8, r.quant = quant::QuantType::q4_k;
        break;
      case io::GgmlType::q6_k:
        r.dtype = DType::u8, r.quant = quant::QuantType::q6_k;
        break;
    }
    return r;
  }

  // kv_b_proj (H * (Dn + Dv), R) from attn_k_b (per head (R, Dn)) and attn_v_b (per head (Dv, R)).
  const RawTensor* rebuild_kv_b(const std::string& hf, const std::string& kv_b_name) const {
    const std::string stem =
        kv_b_name.substr(0, kv_b_name.size() - std::string("kv_b.weight").size());
    auto kb = by_name_.find(stem + "k_b.weight"), vb = by_name_.find(stem + "v_b.weight");
    if (kb == by_name_.end() || vb == by_name_.end()) return nullptr;
    const io::GgufTensor &k = *kb->second, &v = *vb->second;
    check(k.ne.size() == 3 && v.ne.size() == 3 && k.ne[1] == v.ne[0] && k.ne[2] == v.ne[2], "gguf",
          g_.path(), ": '", k.name, "' ", io::shape_string(k.shape()), " and '", v.name, "' ",
          io::shape_string(v.shape()),
          " do not describe one kv_b (k_b {nope, rank, H}, v_b {rank, v, H})");
    const std::size_t Dn = k.ne[0], R = k.ne[1], H = k.ne[2], Dv = v.ne[1];
    // Widen both halves to float through a loader over their raw views.
    const RawTensor rk = raw_of(k), rv = raw_of(v);
    std::vector<float> fk, fv;
    {
      struct One final : WeightSource {
        std::map<std::string, RawTensor, std::less<>> m;
        std::string w;
        const RawTensor* find(std::string_view n) const override {
          auto it = m.find(n);
          return it == m.end() ? nullptr : &it->second;
        }
        std::string where() const override { return w; }
      };
      auto one = std::make_shared<One>();
      one->w = g_.path();
      one->m["k"] = rk;
      one->m["v"] = rv;
      WeightLoader l(one);
      fk = l.read_floats("k");
      fv = l.read_floats("v");
    }
    auto buf = std::make_shared<std::vector<float>>(H * (Dn + Dv) * R);
    auto& kv = *buf;
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t n = 0; n < Dn; ++n)
        for (std::size_t r = 0; r < R; ++r)
          kv[(h * (Dn + Dv) + n) * R + r] = fk[(h * R + r) * Dn + n];
      std::memcpy(&kv[(h * (Dn + Dv) + Dn) * R], &fv[h * Dv * R], Dv * R * sizeof(float));
    }
    // Stored as the halves' dtype when they are F32 / BF16 / F16 (exact); block formats become
    // BF16 (rounding the dequantized values by <= 2^-9 relative, far below the block error) so
    // the absorbed decode, which reads all of kv_b per token, reads 2 bytes per weight.
    const DType out = k.type == io::GgmlType::f32 && v.type == io::GgmlType::f32   ? DType::f32
                      : k.type == io::GgmlType::f16 && v.type == io::GgmlType::f16 ? DType::f16
                                                                                   : DType::bf16;
    auto bytes = std::make_shared<std::vector<std::byte>>(kv.size() * dtype_size(out));
    for (std::size_t i = 0; i < kv.size(); ++i) {
      if (out == DType::f32) {
        std::memcpy(bytes->data() + 4 * i, &kv[i], 4);
      } else {
        const std::uint16_t b =
            out == DType::f16 ? f16::from_float(kv[i]).bits : bf16::from_float(kv[i]).bits;
        std::memcpy(bytes->data() + 2 * i, &b, 2);
      }
    }
    owned_.push_back(bytes);
    rebuilt_bytes_ += bytes->size();
    RawTensor r{out, {H * (Dn + Dv), R}, bytes->data(), bytes->size(), std::nullopt};
    return &cache_.emplace(hf, std::move(r)).first->second;
  }

 public:
  // Bytes of the F32 kv_b_proj copies rebuilt from attn_k_b / attn_v_b so far.
  std::size_t rebuilt_bytes() const { return rebuilt_bytes_; }

 private:
  io::GgufFile g_;
  std::map<std::string, const io::GgufTensor*, std::less<>> by_name_;
  mutable std::map<std::string, RawTensor, std::less<>> cache_;
  mutable std::vector<std::shared_ptr<std::vector<std::byte>>> owned_;
  mutable std::size_t rebuilt_bytes_ = 0;
};

}  // namespace tmoe::models
