// tmoe/models/gguf_export.hpp: writes a model (io::ModelConfig + WeightSource, optional tokenizer)
// as a GGUF file that llama.cpp loads, with its architecture keys and tensor names.
//
//   models::GgufExportOptions opt;
//   opt.type = io::GgmlType::q8_0;                       // f32 f16 bf16 q8_0 q4_0 q4_k q6_k
//   auto report = models::export_gguf(cfg, source, &tokenizer_spec, opt, "out.gguf");
//
// Architectures (general.architecture):
//   llama     <- llama, mixtral (MoE: llama.expert_count / expert_used_count, stacked
//                ffn_{gate,up,down}_exps, router ffn_gate_inp). q_proj / k_proj rows (and biases)
//                are permuted per head from the Hugging Face half-split rope layout to llama.cpp's
//                adjacent-pair layout (row h*D + 2i + j <- row h*D + j*D/2 + i), as llama.cpp's
//                converter does. Llama-3 rope scaling becomes the F32 tensor rope_freqs.weight.
//   qwen2     <- qwen2 (q/k/v biases; half-split rope: no permutation).
//   deepseek2 <- deepseek_v2 / deepseek_v3 (V2, V3, R1): MLA written the way current llama.cpp
//                wants it: head_count_kv 1, key_length = kv_lora_rank + rope dim, value_length =
//                kv_lora_rank, key_length_mla / value_length_mla = per-head q/k and v widths,
//                kv_b_proj split per head into attn_k_b (ne {nope, kv_lora_rank, H}: W_UK
//                transposed) and attn_v_b (ne {kv_lora_rank, v_head_dim, H}); expert_gating_func
//                2 (sigmoid, noaux_tc) or 1 (softmax), exp_probs_b.bias, expert groups, YaRN keys
//                with yarn_log_multiplier = 0.1 * mscale_all_dim. llama.cpp rotates adjacent pairs
//                for deepseek2, so a checkpoint with rope_interleave false gets its rope rows
//                (q and kv_a) permuted like llama's. MTP layers (>= num_hidden_layers) are dropped.
// Weights are read through WeightLoader::read_floats (F32/BF16/F16/F8_E4M3+scale_inv all work),
// one tensor (one expert for stacked experts) at a time, and streamed to the file.
//
// Types: `type` applies to every matrix (2-D and 3-D); norms, biases, exp_probs_b, rope_freqs and
// the router ffn_gate_inp stay F32 as llama.cpp keeps them. A matrix whose row length (ne[0]) is
// not a multiple of the target's block falls back: q4_k -> q4_0, q6_k -> q8_0, then to f16 when
// ne[0] is not a multiple of 32 either (llama.cpp's quantizer falls back the same way). `type_for`
// may override the type per tensor (e.g. a Q4_K_M-like mix). Quantizers: quant/quantize.hpp
// (llama.cpp's reference "_ref" quantizers, no importance matrix).
//
// Tokenizer: with a TokenizerSpec (byte-level BPE, io::tokenizer_spec_from_file), writes
// tokenizer.ggml.model "gpt2", .pre (qwen2 / llama-bpe / deepseek-v3 / gpt-2, from the split
// patterns), .tokens / .token_type (1 normal, 3 control = special added token, 4 user-defined,
// 5 unused) / .merges and bos/eos ids from the config. llama.cpp needs exactly as many tokens as
// embedding rows: ids the tokenizer lacks become "[PAD<id>]" (type 5); a tokenizer with more ids
// than embedding rows is an error. Without a tokenizer, tokenizer.ggml.model is "none" and
// <arch>.vocab_size gives the row count (llama.cpp then adds dummy tokens).
//
// Errors: one tmoe::Error naming the tensor or the config field ("[gguf_export] ..."); the
// partial output file is removed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/config.hpp"
#include "tmoe/io/gguf.hpp"
#include "tmoe/io/tokenizer.hpp"
#include "tmoe/models/weights.hpp"
#include "tmoe/quant/quantize.hpp"

namespace tmoe::models {

struct GgufExportOptions {
  io::GgmlType type = io::GgmlType::f16;  // matrices
  std::string name;                       // general.name (default: the config's model_type)
  // Optional per-tensor override: (GGUF name, ne, proposed type) -> type to write. The result
  // must suit ne[0] (block size) or the export fails naming the tensor.
  std::function<io::GgmlType(const std::string&, const std::vector<std::uint64_t>&, io::GgmlType)>
      type_for;
  // Optional progress callback: (tensors written, total, GGUF name of the one being written).
  std::function<void(std::size_t, std::size_t, const std::string&)> progress;
};

struct GgufExportReport {
  std::string architecture;
  std::size_t tensors = 0;
  std::uint64_t tensor_bytes = 0;
  std::map<std::string, std::size_t> type_counts;  // "Q8_0" -> number of tensors
};

// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k" (any case) -> the GGML type.
inline std::optional<io::GgmlType> parse_ggml_type(std::string_view s) {
  std::string l(s);
  for (auto& ch : l) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (l == "f32") return io::GgmlType::f32;
  if (l == "f16") return io::GgmlType::f16;
  if (l == "bf16") return io::GgmlType::bf16;
  if (l == "q8_0") return io::GgmlType::q8_0;
  if (l == "q4_0") return io::GgmlType::q4_0;
  if (l == "q4_k") return io::GgmlType::q4_k;
  if (l == "q6_k") return io::GgmlType::q6_k;
  return std::nullopt;
}

// llama.cpp's architecture name for a config's family.
inline std::string gguf_architecture(const io::ModelConfig& c) {
  switch (c.family) {
    case io::Family::llama:
    case io::Family::mixtral:
      return "llama";
    case io::Family::qwen2:
      return "qwen2";
    case io::Family::deepseek_v2:
    case io::Family::deepseek_v3:
      return "deepseek2";
  }
  fail("gguf_export", "unknown family");
}

// llama.cpp's pre-tokenizer name for a byte-level BPE spec, from its split patterns.
inline std::string gguf_tokenizer_pre(const io::TokenizerSpec& t) {
  namespace p = io::patterns;
  if (t.splits.size() == 1 && t.splits[0].pattern == p::kQwen2) return "qwen2";
  if (t.splits.size() == 1 && t.splits[0].pattern == p::kLlama3) return "llama-bpe";
  if (t.splits.size() == 3 && t.splits[0].pattern == p::kDeepSeekV3Digits &&
      t.splits[1].pattern == p::kDeepSeekV3Cjk && t.splits[2].pattern == p::kDeepSeekV3Words)
    return "deepseek-v3";
  if (t.splits.empty() && t.byte_level_regex) return "gpt-2";
  fail("gguf_export", t.source,
       ": pre-tokenizer has no llama.cpp equivalent tmoe knows (qwen2, llama-bpe, deepseek-v3, "
       "gpt-2)");
}

namespace detail {

// One GGUF tensor to write: ne (ggml order) and `slices` pieces of (rows_per_slice, ne[0]) floats
// in GGUF row order, produced one at a time.
struct ExportTensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  bool keep_f32 = false;  // norms, biases, router: always F32
  std::size_t slices = 1;
  std::function<std::vector<float>(std::size_t)> slice;
};

// Rows [first, first + 2 * half) of the (rows, cols) matrix x hold one rope block in the
// half-split layout (pairs (i, i + half)); reorders them to adjacent pairs (2i, 2i + 1).
inline void rope_rows_to_pairs(std::vector<float>& x, std::size_t cols, std::size_t first,
                               std::size_t half) {
  std::vector<float> tmp(2 * half * cols);
  for (std::size_t i = 0; i < half; ++i)
    for (std::size_t j = 0; j < 2; ++j)
      std::memcpy(&tmp[(2 * i + j) * cols], &x[(first + j * half + i) * cols],
                  cols * sizeof(float));
  std::memcpy(&x[first * cols], tmp.data(), tmp.size() * sizeof(float));
}

inline io::GgmlType fallback_type(io::GgmlType t, std::uint64_t ne0) {
  using G = io::GgmlType;
  const auto fits = [&](G g) { return ne0 % io::ggml_type_traits(g)->block == 0; };
  if (fits(t)) return t;
  if (t == G::q4_k && fits(G::q4_0)) return G::q4_0;
  if (t == G::q6_k && fits(G::q8_0)) return G::q8_0;
  return G::f16;
}

template <class Q>
std::vector<std::byte> quantize_bytes(const float* x, std::size_t rows, std::size_t cols) {
  auto q = quant::quantize<Q>(x, rows, cols);
  std::vector<std::byte> out(rows * (cols / Q::kBlockSize) * sizeof(typename Q::Block));
  std::memcpy(out.data(), q.blocks(), out.size());
  return out;
}

inline std::vector<std::byte> encode(io::GgmlType t, const std::vector<float>& x,
                                     std::size_t cols) {
  using G = io::GgmlType;
  const std::size_t rows = cols ? x.size() / cols : 0;
  std::vector<std::byte> out;
  auto put16 = [&](auto conv) {
    out.resize(x.size() * 2);
    for (std::size_t i = 0; i < x.size(); ++i) {
      const std::uint16_t b = conv(x[i]);
      std::memcpy(&out[2 * i], &b, 2);
    }
  };
  switch (t) {
    case G::f32:
      out.resize(x.size() * 4);
      std::memcpy(out.data(), x.data(), out.size());
      return out;
    case G::f16:
      put16([](float v) { return f16::from_float(v).bits; });
      return out;
    case G::bf16:
      put16([](float v) { return bf16::from_float(v).bits; });
      return out;
    case G::q8_0:
      return quantize_bytes<quant::Q8_0>(x.data(), rows, cols);
    case G::q4_0:
      return quantize_bytes<quant::Q4_0>(x.data(), rows, cols);
    case G::q4_k:
      return quantize_bytes<quant::Q4_K>(x.data(), rows, cols);
    case G::q6_k:
      return quantize_bytes<quant::Q6_K>(x.data(), rows, cols);
  }
  fail("gguf_export", "unsupported target type");
}

inline std::uint32_t u32_of(std::size_t v, const char* what) {
  check(v <= 0xffffffffu, "gguf_export", what, " = ", v, " does not fit in 32 bits");
  return static_cast<std::uint32_t>(v);
}

// llama.cpp's general.file_type for a uniform target type.
inline std::uint32_t file_type(io::GgmlType t) {
  switch (t) {
    case io::GgmlType::f32:
      return 0;
    case io::GgmlType::f16:
      return 1;
    case io::GgmlType::q4_0:
      return 2;
    case io::GgmlType::q8_0:
      return 7;
    case io::GgmlType::q4_k:
      return 14;  // Q4_K_S
    case io::GgmlType::q6_k:
      return 18;
    case io::GgmlType::bf16:
      return 32;
  }
  return 0;
}

// The llama-3 rope frequency factors (rope_freqs.weight), as transformers computes them.
inline std::vector<float> llama3_rope_factors(const io::ModelConfig& c, std::size_t dim) {
  std::vector<float> f;
  const double old_ctx = static_cast<double>(c.rope.original_max_position_embeddings);
  const double low_wl = old_ctx / c.rope.low_freq_factor,
               high_wl = old_ctx / c.rope.high_freq_factor;
  for (std::size_t i = 0; i < dim; i += 2) {
    const float freq = static_cast<float>(
        1.0 / std::pow(c.rope.theta, static_cast<double>(static_cast<float>(i) / dim)));
    const double wavelen = 2 * 3.14159265358979323846 / freq;
    if (wavelen < high_wl) {
      f.push_back(1.f);
    } else if (wavelen > low_wl) {
      f.push_back(static_cast<float>(c.rope.factor));
    } else {
      const double smooth = (old_ctx / wavelen - c.rope.low_freq_factor) /
                            (c.rope.high_freq_factor - c.rope.low_freq_factor);
      f.push_back(static_cast<float>(1.0 / ((1 - smooth) / c.rope.factor + smooth)));
    }
  }
  return f;
}

}  // namespace detail

// Writes `src` (a model of config `c`) to `path` as GGUF; see the file comment.
inline GgufExportReport export_gguf(const io::ModelConfig& c, const WeightSource& src,
                                    const io::TokenizerSpec* tok, const GgufExportOptions& opt,
                                    const std::string& path) {
  using G = io::GgmlType;
  using detail::ExportTensor;
  const std::string arch = gguf_architecture(c);
  const bool deepseek = arch == "deepseek2";
  // llama.cpp rotates adjacent pairs for llama (q/k rows of a half-split checkpoint are permuted)
  // and half-split pairs for qwen2; a source already in adjacent-pair layout (a GGUF file read back
  // by GgufSource: rope.interleave) is written as it is.
  const bool permute_qk = arch == "llama" && !c.rope.interleave;

  // A non-owning handle: the loader reads, never keeps (read_floats).
  auto loader = std::make_shared<WeightLoader>(
      std::shared_ptr<const WeightSource>(std::shared_ptr<const WeightSource>{}, &src));
  const std::string where = src.where();
  check(arch != "qwen2" || !c.rope.interleave, "gguf_export", where,
        ": qwen2 with adjacent-pair rope rows has no llama.cpp equivalent");
  check(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0, "gguf_export", where,
        ": config needs hidden_size, num_hidden_layers and vocab_size");
  check(c.norm_of_layer(0) == io::NormType::rmsnorm &&
            c.norm_of_layer(c.num_hidden_layers) == io::NormType::rmsnorm,
        "gguf_export", where, ": LayerNorm layers (tmoe_norm_*) have no llama.cpp equivalent");
  check(c.moe_layer_freq == 1, "gguf_export", where, ": moe_layer_freq ", c.moe_layer_freq,
        " has no llama.cpp equivalent (every layer from first_k_dense_replace is MoE)");
  check(c.hidden_act == "silu", "gguf_export", where, ": hidden_act '", c.hidden_act,
        "' is not supported (silu)");

  // Reads HF tensor `name` as a (rows, cols) float matrix, checking its shape.
  auto mat = [loader, where](const std::string& name, std::size_t rows, std::size_t cols) {
    const RawTensor& t = loader->raw(name);
    if (t.shape != std::vector<std::size_t>{rows, cols})
      fail("gguf_export", where, ": tensor '", name, "': expected shape ",
           io::shape_string(std::vector<std::size_t>{rows, cols}), ", got ",
           io::shape_string(t.shape));
    return loader->read_floats(name);
  };
  auto vec = [loader, where](const std::string& name, std::size_t n) {
    const RawTensor& t = loader->raw(name);
    if (t.shape != std::vector<std::size_t>{n})
      fail("gguf_export", where, ": tensor '", name, "': expected shape [", n, "], got ",
           io::shape_string(t.shape));
    return loader->read_floats(name);
  };

  std::vector<ExportTensor> plan;
  auto add_mat = [&](std::string gname, std::string hf, std::size_t rows, std::size_t cols,
                     bool keep_f32 = false) {
    plan.push_back({std::move(gname), {cols, rows}, keep_f32, 1, [=](std::size_t) {
                      return mat(hf, rows, cols);
                    }});
  };
  auto add_vec = [&](std::string gname, std::string hf, std::size_t n) {
    plan.push_back({std::move(gname), {n}, true, 1, [=](std::size_t) { return vec(hf, n); }});
  };
  auto add_experts = [&](std::string gname, std::string hf_prefix, std::string hf_suffix,
                         std::size_t n_exp, std::size_t rows, std::size_t cols) {
    plan.push_back({std::move(gname), {cols, rows, n_exp}, false, n_exp, [=](std::size_t e) {
                      return mat(hf_prefix + std::to_string(e) + hf_suffix, rows, cols);
                    }});
  };

  const std::size_t d = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  add_mat("token_embd.weight", "model.embed_tokens.weight", V, d);
  add_vec("output_norm.weight", "model.norm.weight", d);
  if (!c.tie_word_embeddings && loader->has("lm_head.weight"))
    add_mat("output.weight", "lm_head.weight", V, d);

  if (deepseek) {
    const std::size_t H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim,
                      Dv = c.v_head_dim, R = c.kv_lora_rank, I = c.moe_intermediate_size,
                      E = c.n_routed_experts;
    check(c.is_mla() && Dn > 0 && Dr > 0 && Dv > 0, "gguf_export", where,
          ": deepseek config needs kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim");
    const bool perm = !c.rope.interleave;
    for (std::size_t l = 0; l < L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.",
                        b = "blk." + std::to_string(l) + ".";
      add_vec(b + "attn_norm.weight", p + "input_layernorm.weight", d);
      add_vec(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
      // q (direct or LoRA b): rope rows of each head to adjacent pairs when half-split.
      auto q_rows = [=](std::vector<float> x, std::size_t cols) {
        if (perm)
          for (std::size_t h = 0; h < H; ++h)
            detail::rope_rows_to_pairs(x, cols, h * (Dn + Dr) + Dn, Dr / 2);
        return x;
      };
      if (c.q_lora_rank > 0) {
        const std::size_t Q = c.q_lora_rank;
        add_mat(b + "attn_q_a.weight", a + "q_a_proj.weight", Q, d);
        add_vec(b + "attn_q_a_norm.weight", a + "q_a_layernorm.weight", Q);
        plan.push_back({b + "attn_q_b.weight", {Q, H * (Dn + Dr)}, false, 1, [=](std::size_t) {
                          return q_rows(mat(a + "q_b_proj.weight", H * (Dn + Dr), Q), Q);
                        }});
      } else {
        plan.push_back({b + "attn_q.weight", {d, H * (Dn + Dr)}, false, 1, [=](std::size_t) {
                          return q_rows(mat(a + "q_proj.weight", H * (Dn + Dr), d), d);
                        }});
      }
      plan.push_back({b + "attn_kv_a_mqa.weight", {d, R + Dr}, false, 1, [=](std::size_t) {
                        auto x = mat(a + "kv_a_proj_with_mqa.weight", R + Dr, d);
                        if (perm) detail::rope_rows_to_pairs(x, d, R, Dr / 2);
                        return x;
                      }});
      add_vec(b + "attn_kv_a_norm.weight", a + "kv_a_layernorm.weight", R);
      // kv_b (H * (Dn + Dv), R): head h rows [h(Dn+Dv), +Dn) are W_UK, the next Dv rows W_UV.
      const std::string kvb = a + "kv_b_proj.weight";
      plan.push_back({b + "attn_k_b.weight", {Dn, R, H}, false, 1, [=](std::size_t) {
                        const auto x = mat(kvb, H * (Dn + Dv), R);
                        std::vector<float> y(H * R * Dn);  // per head (R, Dn): W_UK transposed
                        for (std::size_t h = 0; h < H; ++h)
                          for (std::size_t r = 0; r < R; ++r)
                            for (std::size_t n = 0; n < Dn; ++n)
                              y[(h * R + r) * Dn + n] = x[(h * (Dn + Dv) + n) * R + r];
                        return y;
                      }});
      plan.push_back({b + "attn_v_b.weight", {R, Dv, H}, false, 1, [=](std::size_t) {
                        const auto x = mat(kvb, H * (Dn + Dv), R);
                        std::vector<float> y;
                        y.reserve(H * Dv * R);
                        for (std::size_t h = 0; h < H; ++h)
                          y.insert(y.end(), x.begin() + (h * (Dn + Dv) + Dn) * R,
                                   x.begin() + (h + 1) * (Dn + Dv) * R);
                        return y;
                      }});
      add_mat(b + "attn_output.weight", a + "o_proj.weight", d, H * Dv);
      const std::string m = p + "mlp.";
      if (!c.is_moe_layer(l)) {
        add_mat(b + "ffn_gate.weight", m + "gate_proj.weight", c.intermediate_size, d);
        add_mat(b + "ffn_up.weight", m + "up_proj.weight", c.intermediate_size, d);
        add_mat(b + "ffn_down.weight", m + "down_proj.weight", d, c.intermediate_size);
        continue;
      }
      add_mat(b + "ffn_gate_inp.weight", m + "gate.weight", E, d, true);
      if (loader->has(m + "gate.e_score_correction_bias"))
        add_vec(b + "exp_probs_b.bias", m + "gate.e_score_correction_bias", E);
      add_experts(b + "ffn_gate_exps.weight", m + "experts.", ".gate_proj.weight", E, I, d);
      add_experts(b + "ffn_up_exps.weight", m + "experts.", ".up_proj.weight", E, I, d);
      add_experts(b + "ffn_down_exps.weight", m + "experts.", ".down_proj.weight", E, d, I);
      if (c.n_shared_experts > 0) {
        const std::size_t S = I * c.n_shared_experts;
        add_mat(b + "ffn_gate_shexp.weight", m + "shared_experts.gate_proj.weight", S, d);
        add_mat(b + "ffn_up_shexp.weight", m + "shared_experts.up_proj.weight", S, d);
        add_mat(b + "ffn_down_shexp.weight", m + "shared_experts.down_proj.weight", d, S);
      }
    }
  } else {
    const std::size_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    check(H > 0 && Hkv > 0 && D > 0 && D % 2 == 0, "gguf_export", where,
          ": config needs num_attention_heads, num_key_value_heads and an even head_dim");
    const bool moe = c.is_moe();
    for (std::size_t l = 0; l < L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.",
                        b = "blk." + std::to_string(l) + ".";
      add_vec(b + "attn_norm.weight", p + "input_layernorm.weight", d);
      add_vec(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
      // llama: per-head half-split -> adjacent pairs on q and k rows (and their biases).
      auto qk = [&](std::string gname, std::string hf, std::size_t heads, std::size_t cols) {
        plan.push_back({gname + ".weight", {cols, heads * D}, false, 1, [=](std::size_t) {
                          auto x = mat(hf + ".weight", heads * D, cols);
                          if (permute_qk)
                            for (std::size_t h = 0; h < heads; ++h)
                              detail::rope_rows_to_pairs(x, cols, h * D, D / 2);
                          return x;
                        }});
        if (loader->has(hf + ".bias"))
          plan.push_back({gname + ".bias", {heads * D}, true, 1, [=](std::size_t) {
                            auto x = vec(hf + ".bias", heads * D);
                            if (permute_qk)
                              for (std::size_t h = 0; h < heads; ++h)
                                detail::rope_rows_to_pairs(x, 1, h * D, D / 2);
                            return x;
                          }});
      };
      qk(b + "attn_q", a + "q_proj", H, d);
      qk(b + "attn_k", a + "k_proj", Hkv, d);
      add_mat(b + "attn_v.weight", a + "v_proj.weight", Hkv * D, d);
      if (loader->has(a + "v_proj.bias")) add_vec(b + "attn_v.bias", a + "v_proj.bias", Hkv * D);
      add_mat(b + "attn_output.weight", a + "o_proj.weight", d, H * D);
      check(!loader->has(a + "o_proj.bias"), "gguf_export", where, ": tensor '", a,
            "o_proj.bias' is not supported");
      if (!moe) {
        const std::string m = p + "mlp.";
        add_mat(b + "ffn_gate.weight", m + "gate_proj.weight", c.intermediate_size, d);
        add_mat(b + "ffn_up.weight", m + "up_proj.weight", c.intermediate_size, d);
        add_mat(b + "ffn_down.weight", m + "down_proj.weight", d, c.intermediate_size);
      } else {
        check(arch == "llama", "gguf_export", where, ": MoE ", io::family_name(c.family),
              " has no llama.cpp equivalent here (llama / mixtral MoE only)");
        const std::string m = p + "block_sparse_moe.";
        const std::size_t E = c.n_routed_experts, I = c.intermediate_size;
        add_mat(b + "ffn_gate_inp.weight", m + "gate.weight", E, d, true);
        add_experts(b + "ffn_gate_exps.weight", m + "experts.", ".w1.weight", E, I, d);
        add_experts(b + "ffn_up_exps.weight", m + "experts.", ".w3.weight", E, I, d);
        add_experts(b + "ffn_down_exps.weight", m + "experts.", ".w2.weight", E, d, I);
      }
    }
    if (c.rope.type == io::RopeType::llama3 || !c.rope.freq_factors.empty()) {
      const auto f =
          c.rope.freq_factors.empty() ? detail::llama3_rope_factors(c, D) : c.rope.freq_factors;
      check(arch == "llama" && f.size() == D / 2, "gguf_export", where,
            ": rope frequency factors need the llama architecture and head_dim / 2 values");
      plan.push_back({"rope_freqs.weight", {D / 2}, true, 1, [f](std::size_t) { return f; }});
    }
  }

  // ---- metadata ----
  io::GgufWriter w;
  using V_ = io::GgufValue;
  auto u32 = [&](const std::string& k, std::size_t v) {
    w.set(arch + "." + k, V_::of_u32(detail::u32_of(v, k.c_str())));
  };
  auto f32 = [&](const std::string& k, double v) {
    w.set(arch + "." + k, V_::of_f32(static_cast<float>(v)));
  };
  w.set("general.architecture", V_::of_string(arch));
  w.set("general.name", V_::of_string(opt.name.empty() ? c.model_type : opt.name));
  w.set("general.file_type", V_::of_u32(detail::file_type(opt.type)));
  w.set("general.quantization_version", V_::of_u32(2));
  u32("vocab_size", V);
  u32("context_length", c.max_position_embeddings ? c.max_position_embeddings : 4096);
  u32("embedding_length", d);
  u32("block_count", L);
  u32("feed_forward_length", c.intermediate_size);
  u32("attention.head_count", c.num_attention_heads);
  f32("attention.layer_norm_rms_epsilon", c.norm_eps);
  f32("rope.freq_base", c.rope.theta);
  switch (c.rope.type) {
    case io::RopeType::none:
    case io::RopeType::default_:
    case io::RopeType::llama3:  // rope_freqs.weight
      break;
    case io::RopeType::linear:
      w.set(arch + ".rope.scaling.type", V_::of_string("linear"));
      f32("rope.scaling.factor", c.rope.factor);
      break;
    case io::RopeType::yarn:
      check(!c.rope.attention_factor.has_value(), "gguf_export", where,
            ": rope attention_factor overrides are not supported");
      w.set(arch + ".rope.scaling.type", V_::of_string("yarn"));
      f32("rope.scaling.factor", c.rope.factor);
      u32("rope.scaling.original_context_length", c.rope.original_max_position_embeddings);
      f32("rope.scaling.yarn_beta_fast", c.rope.beta_fast);
      f32("rope.scaling.yarn_beta_slow", c.rope.beta_slow);
      if (deepseek) {
        check(c.rope.mscale == c.rope.mscale_all_dim || c.rope.mscale_all_dim == 0, "gguf_export",
              where, ": YaRN mscale ", c.rope.mscale, " != mscale_all_dim ", c.rope.mscale_all_dim,
              " has no llama.cpp equivalent");
        if (c.rope.mscale_all_dim != 0)
          f32("rope.scaling.yarn_log_multiplier", 0.1 * c.rope.mscale_all_dim);
      }
      break;
  }
  if (deepseek) {
    const std::size_t Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim;
    u32("attention.head_count_kv", 1);
    u32("leading_dense_block_count", c.is_moe() ? c.first_k_dense_replace : L);
    u32("attention.q_lora_rank", c.q_lora_rank);
    u32("attention.kv_lora_rank", c.kv_lora_rank);
    u32("attention.key_length", c.kv_lora_rank + Dr);
    u32("attention.value_length", c.kv_lora_rank);
    u32("attention.key_length_mla", Dn + Dr);
    u32("attention.value_length_mla", c.v_head_dim);
    u32("rope.dimension_count", Dr);
    u32("expert_feed_forward_length", c.is_moe() ? c.moe_intermediate_size : c.intermediate_size);
    u32("expert_shared_count", c.n_shared_experts);
    if (c.is_moe()) {
      u32("expert_count", c.n_routed_experts);
      u32("expert_used_count", c.num_experts_per_tok);
      u32("expert_group_count", c.n_group);
      u32("expert_group_used_count", c.topk_group);
      f32("expert_weights_scale", c.routed_scaling_factor);
      if (c.norm_topk_prob) w.set(arch + ".expert_weights_norm", V_::of_bool(true));
      u32("expert_gating_func", c.scoring_func == io::ScoringFunc::sigmoid ? 2 : 1);
    }
  } else {
    u32("attention.head_count_kv", c.num_key_value_heads);
    u32("attention.key_length", c.head_dim);
    u32("attention.value_length", c.head_dim);
    u32("rope.dimension_count", c.head_dim);
    if (c.is_moe()) {
      u32("expert_count", c.n_routed_experts);
      u32("expert_used_count", c.num_experts_per_tok);
    }
  }

  // ---- tokenizer ----
  if (tok) {
    std::vector<std::string> tokens(V);
    std::vector<int> types(V, 0);
    auto put = [&](std::int64_t id, const std::string& text, int type) {
      check(id >= 0 && static_cast<std::size_t>(id) < V, "gguf_export", tok->source, ": token id ",
            id, " ('", text, "') is outside the ", V,
            " embedding rows (llama.cpp needs one token per row)");
      tokens[static_cast<std::size_t>(id)] = text;
      types[static_cast<std::size_t>(id)] = type;
    };
    for (const auto& [text, id] : tok->vocab) put(id, text, 1);
    for (const auto& a : tok->added) put(a.id, a.content, a.special ? 3 : 4);
    std::vector<V_> tv, tt;
    for (std::size_t i = 0; i < V; ++i) {
      if (types[i] == 0) {
        tokens[i] = "[PAD" + std::to_string(i) + "]";
        types[i] = 5;
      }
      tv.push_back(V_::of_string(tokens[i]));
      tt.push_back(V_::of_i32(types[i]));
    }
    std::vector<std::string> merges;
    merges.reserve(tok->merges.size());
    for (const auto& [x, y] : tok->merges) merges.push_back(x + " " + y);
    w.set("tokenizer.ggml.model", V_::of_string("gpt2"));
    w.set("tokenizer.ggml.pre", V_::of_string(gguf_tokenizer_pre(*tok)));
    w.set("tokenizer.ggml.tokens", V_::of_array(io::GgufType::string, std::move(tv)));
    w.set("tokenizer.ggml.token_type", V_::of_array(io::GgufType::i32, std::move(tt)));
    w.set_string_array("tokenizer.ggml.merges", merges);
    if (c.bos_token_id && *c.bos_token_id >= 0 && static_cast<std::size_t>(*c.bos_token_id) < V)
      w.set("tokenizer.ggml.bos_token_id", V_::of_u32(static_cast<std::uint32_t>(*c.bos_token_id)));
    if (!c.eos_token_ids.empty() && c.eos_token_ids[0] >= 0 &&
        static_cast<std::size_t>(c.eos_token_ids[0]) < V)
      w.set("tokenizer.ggml.eos_token_id",
            V_::of_u32(static_cast<std::uint32_t>(c.eos_token_ids[0])));
  } else {
    w.set("tokenizer.ggml.model", V_::of_string("none"));
  }

  // ---- tensors ----
  GgufExportReport rep;
  rep.architecture = arch;
  auto done = std::make_shared<std::size_t>(0);
  const std::size_t total = plan.size();
  for (auto& t : plan) {
    G type = t.keep_f32 ? G::f32 : detail::fallback_type(opt.type, t.ne[0]);
    if (opt.type_for) type = opt.type_for(t.name, t.ne, type);
    const auto tr = io::ggml_type_traits(type);
    check(tr && t.ne[0] % tr->block == 0, "gguf_export", "tensor '", t.name, "': type ",
          tr ? tr->name : "?", " needs rows that are a multiple of ", tr ? tr->block : 0, ", got ",
          t.ne[0]);
    std::uint64_t n = 1;
    for (auto x : t.ne) n *= x;
    rep.tensors++;
    rep.tensor_bytes += n / tr->block * tr->bytes;
    rep.type_counts[std::string(tr->name)]++;
    const std::size_t cols = static_cast<std::size_t>(t.ne[0]);
    const std::size_t per_slice = static_cast<std::size_t>(n / t.slices);
    w.add_tensor(t.name, type, t.ne,
                 [t, type, cols, per_slice, done, total, progress = opt.progress]() {
                   if (progress) progress(*done, total, t.name);
                   std::vector<std::byte> out;
                   for (std::size_t s = 0; s < t.slices; ++s) {
                     const auto x = t.slice(s);
                     check(x.size() == per_slice, "gguf_export", "tensor '", t.name, "': slice ", s,
                           " has ", x.size(), " values, expected ", per_slice);
                     const auto b = detail::encode(type, x, cols);
                     out.insert(out.end(), b.begin(), b.end());
                   }
                   ++*done;
                   return out;
                 });
  }
  w.write(path);
  if (opt.progress) opt.progress(total, total, "");
  return rep;
}

}  // namespace tmoe::models
