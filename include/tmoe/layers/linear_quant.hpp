// tmoe/layers/linear_quant.hpp: the quantized block formats (quant/formats.hpp) as Linear and
// Embedding formats: Linear<quant::Q4_0>, SwigluMlp<quant::Q8_0>, MoE<quant::Q4_K>,
// Embedding<quant::Q6_K>, ... work exactly like their float twins.
//
//   weight_view = quant::QuantMatrixView<Q> (out, in): blocks along `in`, as GGUF stores them
//   matmul      = cpu::matmul_quant<Q> (activations quantized per 32 for the integer formats)
//   slice_rows  = rows [begin, begin + count) in place; for Fp8Block, whose 128x128 scale tiles
//                 are indexed by row / 128, `begin` must be a multiple of 128 (MoE row blocks are);
//                 the 8-row interleaved copy (view.packed, Q4_0 / Q8_0 / Q4_K / Q6_K) is kept
//                 when the slice cuts it at its units (quant::x8_slice_keeps_copy: begin a
//                 multiple of 32 rows, 16 for Q4_K / Q6_K), dropped otherwise (the GEMV then reads
//                 the blocks)
//   matmul_acts = the same product over activations quantized once (cpu::Q8Acts), shared by
//                 several matmuls (MoE experts, q/k/v, gate/up); bit-identical to matmul
//   reads_q8_acts = whether the kernels read Q8 activation blocks (all but NF4 / Fp8Block)
//   decode_row  = quant::dequantize_row (embedding lookup of one token)
#pragma once

#include <cstddef>

#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/layers/embedding.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/quant/formats.hpp"

namespace tmoe {

template <quant::QuantFormat Q>
struct LinearTraits<Q> {
  using weight_view = quant::QuantMatrixView<Q>;
  static std::size_t out_features(const weight_view& w) { return w.rows; }
  static std::size_t in_features(const weight_view& w) { return w.cols; }
  static weight_view slice_rows(const weight_view& w, std::size_t begin, std::size_t count) {
    check(begin + count <= w.rows, "linear", Q::kName, " row slice [", begin, ", ", begin + count,
          ") outside the ", w.rows, " rows");
    weight_view s = w;
    s.rows = count;
    s.blocks = w.blocks + begin * w.row_stride;
    // The interleaved copy still lines up when the slice cuts it at units (x8_slice_keeps_copy).
    s.packed = nullptr;
    if constexpr (quant::kRepackX8<Q>)
      if (w.packed && quant::x8_slice_keeps_copy(quant::kX8Unit<Q>, w.rows, begin, count))
        s.packed = static_cast<const typename quant::RepackedX8<Q>::Block*>(w.packed) +
                   begin / 8 * w.blocks_per_row();
    if constexpr (std::is_same_v<Q, quant::Int8Row>) {
      s.scales = w.scales + begin;
    } else if constexpr (std::is_same_v<Q, quant::Fp8Block>) {
      check(begin % quant::Fp8Block::kScaleBlock == 0, "linear", "FP8_BLOCK row slice starts at ",
            begin, ", not a multiple of 128");
      s.scales = w.scales + (begin / quant::Fp8Block::kScaleBlock) * w.scale_stride;
    }
    return s;
  }
  static void matmul(ThreadPool& pool, const weight_view& w, MatrixView<const float> x,
                     MatrixView<float> y, const float* bias, const cpu::KernelTable& k) {
    cpu::matmul_quant<Q>(pool, w, x, y, k);
    if (bias)
      for (std::size_t t = 0; t < y.rows(); ++t)
        for (std::size_t o = 0; o < y.cols(); ++o) y(t, o) += bias[o];
  }
  static void matmul_acts(ThreadPool& pool, const weight_view& w, const cpu::QuantActs& a,
                          MatrixView<float> y, const cpu::KernelTable& k) {
    cpu::matmul_quant<Q>(pool, w, a, w.cols, y, k);
  }
  static constexpr bool reads_q8_acts(const weight_view&) { return quant::kUsesQ8Act<Q>; }
};

template <quant::QuantFormat Q>
struct EmbeddingTraits<Q> {
  using table_view = quant::QuantMatrixView<Q>;
  static std::size_t rows(const table_view& t) { return t.rows; }
  static std::size_t dim(const table_view& t) { return t.cols; }
  static void decode_row(const table_view& t, std::size_t r, float* out) {
    cpu::embedding_quant<Q>(t, r, out);
  }
};

}  // namespace tmoe
