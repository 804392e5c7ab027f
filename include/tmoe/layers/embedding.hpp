// tmoe/layers/embedding.hpp: token embedding lookup and the LM head.
//
// Embedding<F>: table (vocab, d) in the checkpoint's format; out[t] = float(table[ids[t]]) (no
// sqrt(d) scaling in any R1-family model). Row decoding goes through EmbeddingTraits<F>, which a
// quantized format specializes (decode one row) like LinearTraits. LmHead<F> is a Linear<F>
// (vocab, d) producing float32 logits; R1 and the Distill models never tie it to the embedding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/linear.hpp"

namespace tmoe {

template <class Format>
struct EmbeddingTraits;

template <class WT>
requires(std::is_same_v<WT, float> || std::is_same_v<WT, bf16> ||
         std::is_same_v<WT, f16>) struct EmbeddingTraits<WT> {
  using table_view = MatrixView<const WT>;
  static std::size_t rows(const table_view& t) { return t.rows(); }
  static std::size_t dim(const table_view& t) { return t.cols(); }
  static void decode_row(const table_view& t, std::size_t r, float* out) {
    const WT* src = t.row(r);
    for (std::size_t i = 0; i < t.cols(); ++i) out[i] = to_float(src[i]);
  }
};

template <class F>
class Embedding {
 public:
  using traits = EmbeddingTraits<F>;
  using table_view = typename traits::table_view;

  Embedding() = default;
  explicit Embedding(table_view table) : table_(table) {}

  std::size_t vocab_size() const { return traits::rows(table_); }
  std::size_t dim() const { return traits::dim(table_); }

  // out (T, d) = rows ids[0..T) of the table; an id outside [0, vocab) is an error.
  void forward(std::span<const std::int32_t> ids, MatrixView<float> out) const {
    check(out.rows() == ids.size() && out.cols() == dim(), "embedding", "out is (", out.rows(),
          ", ", out.cols(), "), expected (", ids.size(), ", ", dim(), ")");
    for (std::size_t t = 0; t < ids.size(); ++t) {
      check(ids[t] >= 0 && static_cast<std::size_t>(ids[t]) < vocab_size(), "embedding",
            "token id ", ids[t], " at position ", t, " is outside the vocabulary of ",
            vocab_size());
      traits::decode_row(table_, static_cast<std::size_t>(ids[t]), out.row(t));
    }
  }

 private:
  table_view table_ = empty_view<table_view>();
};

// logits (T, vocab) = x (T, d) W^T.
template <LinearFormat F>
using LmHead = Linear<F>;

}  // namespace tmoe
