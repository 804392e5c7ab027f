// tmoe/models/quantized_source.hpp: a WeightSource that quantizes another source's matrices when
// they are first asked for, so a float / bf16 / FP8 checkpoint runs as Q8_0, Q4_0, Q4_K or Q6_K
// (LoadOptions::quantize, the CLI's --weights TYPE).
//
// Quantized: every 2-D weight ("*.weight" of rank 2: attention and MLP projections, experts,
// embedding, LM head) whose row length is a multiple of the block (Q4_K / Q6_K fall back to Q4_0 /
// Q8_0 for shorter rows, as GGUF export does). Left as stored: norms, biases, the router
// (mlp.gate / block_sparse_moe.gate, as llama.cpp keeps it F32), and MLA's kv_b_proj (the
// absorbed decode reads its rows, so it would only be dequantized again). Quantizers:
// quant/quantize.hpp. The quantized blocks are held by the source (mapped weights are not
// copied otherwise); models built over it run as AnyFormat.
#pragma once

#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/models/weights.hpp"
#include "tmoe/quant/quantize.hpp"

namespace tmoe::models {

class QuantizedSource final : public WeightSource {
 public:
  QuantizedSource(std::shared_ptr<const WeightSource> base, quant::QuantType type)
      : base_(std::move(base)), type_(type), loader_(base_) {
    check(type == quant::QuantType::q8_0 || type == quant::QuantType::q4_0 ||
              type == quant::QuantType::q4_k || type == quant::QuantType::q6_k,
          "weights", "quantize at load: only Q8_0, Q4_0, Q4_K and Q6_K");
  }
  std::string where() const override { return base_->where(); }
  // Bytes of quantized blocks held.
  std::size_t quantized_bytes() const { return bytes_; }

  const RawTensor* find(std::string_view name) const override {
    if (auto it = cache_.find(name); it != cache_.end()) return &it->second;
    const RawTensor* t = base_->find(name);
    if (!t || !wanted(name, *t)) return t;
    const std::size_t cols = t->shape[1];
    quant::QuantType q = type_;
    if (q == quant::QuantType::q4_k && cols % 256) q = quant::QuantType::q4_0;
    if (q == quant::QuantType::q6_k && cols % 256) q = quant::QuantType::q8_0;
    if (cols % 32) return t;
    const auto f = loader_.read_floats(std::string(name));
    std::vector<std::byte> bytes;
    switch (q) {
      case quant::QuantType::q8_0:
        bytes = blocks<quant::Q8_0>(f, t->shape[0], cols);
        break;
      case quant::QuantType::q4_0:
        bytes = blocks<quant::Q4_0>(f, t->shape[0], cols);
        break;
      case quant::QuantType::q4_k:
        bytes = blocks<quant::Q4_K>(f, t->shape[0], cols);
        break;
      default:
        bytes = blocks<quant::Q6_K>(f, t->shape[0], cols);
        break;
    }
    auto buf = std::make_shared<std::vector<std::byte>>(std::move(bytes));
    owned_.push_back(buf);
    bytes_ += buf->size();
    RawTensor r{DType::u8, t->shape, buf->data(), buf->size(), q};
    return &cache_.emplace(std::string(name), std::move(r)).first->second;
  }

 private:
  static bool wanted(std::string_view name, const RawTensor& t) {
    if (t.shape.size() != 2 || t.quant || !name.ends_with(".weight")) return false;
    for (std::string_view keep : {"mlp.gate.weight", "block_sparse_moe.gate.weight",
                                  "kv_b_proj.weight", "layernorm.weight", "norm.weight"})
      if (name.ends_with(keep)) return false;
    return true;
  }
  template <class Q>
  static std::vector<std::byte> blocks(const std::vector<float>& f, std::size_t rows,
                                       std::size_t cols) {
    auto q = quant::quantize<Q>(f.data(), rows, cols);
    std::vector<std::byte> out(rows * (cols / Q::kBlockSize) * sizeof(typename Q::Block));
    std::memcpy(out.data(), q.blocks(), out.size());
    return out;
  }

  std::shared_ptr<const WeightSource> base_;
  quant::QuantType type_;
  WeightLoader loader_;
  mutable std::map<std::string, RawTensor, std::less<>> cache_;
  mutable std::vector<std::shared_ptr<std::vector<std::byte>>> owned_;
  mutable std::size_t bytes_ = 0;
};

}  // namespace tmoe::models
