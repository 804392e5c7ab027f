// tmoe/layers/linear_any.hpp: AnyFormat, a weight format chosen at run time per matrix, for
// models whose matrices come in mixed formats (a Q4_K_M GGUF mixes Q4_K and Q6_K; its router is
// F32; a BF16 checkpoint's embedding may stay BF16 while experts are Q8_0).
//
//   weight_view = AnyMatrixView {kind, data, rows, cols, row_bytes}: rows are contiguous, row r
//                 starts at data + r * row_bytes; dense kinds hold cols values of float / bf16 /
//                 f16, block kinds cols / block_size blocks (quant/formats.hpp, GGUF layout).
//   matmul      = one switch per call to cpu::matmul<float|bf16|f16> or LinearTraits<Q>::matmul
//                 (cpu::matmul_quant<Q>): the per-format kernels run unchanged.
//   packed      = optional 8-row interleaved copy of a Q4_0 / Q8_0 / Q4_K / Q6_K matrix (the
//                 loader's), passed to the kernels as QuantMatrixView::packed; data stays the
//                 stored rows.
//   slice_rows  = rows [begin, begin + count) in place (MoE row blocks); packed kept when the
//                 slice cuts the copy at its units (quant::x8_slice_keeps_copy).
//   decode_row  = the embedding lookup of the underlying format.
//   with_dense_rows(w, fn) calls fn(MatrixView<const E>) for the dense kinds (MLA's absorbed decode
//                 reads kv_b rows directly) and fails for block kinds.
// Formats without a GGUF block layout (NF4, Int8Row, Fp8Block: they carry separate scales) are not
// AnyFormat kinds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tmoe/core/error.hpp"
#include "tmoe/layers/embedding.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/linear_quant.hpp"

namespace tmoe {

struct AnyFormat {};

enum class AnyKind : std::uint8_t { f32, bf16, f16, q8_0, q4_0, q4_k, q6_k };

constexpr std::string_view any_kind_name(AnyKind k) {
  switch (k) {
    case AnyKind::f32:
      return "F32";
    case AnyKind::bf16:
      return "BF16";
    case AnyKind::f16:
      return "F16";
    case AnyKind::q8_0:
      return "Q8_0";
    case AnyKind::q4_0:
      return "Q4_0";
    case AnyKind::q4_k:
      return "Q4_K";
    case AnyKind::q6_k:
      return "Q6_K";
  }
  return "?";
}

constexpr bool any_kind_dense(AnyKind k) {
  return k == AnyKind::f32 || k == AnyKind::bf16 || k == AnyKind::f16;
}

// Bytes of one row of `cols` values of kind k (cols must suit the block size).
constexpr std::size_t any_row_bytes(AnyKind k, std::size_t cols) {
  switch (k) {
    case AnyKind::f32:
      return cols * 4;
    case AnyKind::bf16:
    case AnyKind::f16:
      return cols * 2;
    case AnyKind::q8_0:
      return cols / 32 * sizeof(quant::BlockQ8_0);
    case AnyKind::q4_0:
      return cols / 32 * sizeof(quant::BlockQ4_0);
    case AnyKind::q4_k:
      return cols / 256 * sizeof(quant::BlockQ4_K);
    case AnyKind::q6_k:
      return cols / 256 * sizeof(quant::BlockQ6_K);
  }
  return 0;
}

struct AnyMatrixView {
  AnyKind kind = AnyKind::f32;
  const std::byte* data = nullptr;
  std::size_t rows = 0, cols = 0;
  std::size_t row_bytes = 0;
  // Q4_0 / Q8_0 / Q4_K / Q6_K: optional 8-row interleaved copy for the decode GEMV
  // (QuantMatrixView::packed).
  const void* packed = nullptr;

  static AnyMatrixView of(AnyKind k, const void* data, std::size_t rows, std::size_t cols) {
    return {k, static_cast<const std::byte*>(data), rows, cols, any_row_bytes(k, cols)};
  }
  template <class E>
  static AnyMatrixView of(MatrixView<const E> m) {
    constexpr AnyKind k = std::is_same_v<E, float>  ? AnyKind::f32
                          : std::is_same_v<E, bf16> ? AnyKind::bf16
                                                    : AnyKind::f16;
    return of(k, m.data(), m.rows(), m.cols());
  }
  std::size_t bytes() const { return rows * row_bytes; }
  template <class E>
  MatrixView<const E> dense() const {
    return MatrixView<const E>(reinterpret_cast<const E*>(data), rows, cols);
  }
  template <class Q>
  quant::QuantMatrixView<Q> blocks() const {
    quant::QuantMatrixView<Q> v{reinterpret_cast<const typename Q::Block*>(data),
                                rows,
                                cols,
                                cols / Q::kBlockSize,
                                nullptr,
                                0};
    if constexpr (quant::kRepackX8<Q>) v.packed = packed;
    return v;
  }
};

// Calls fn(view) with the typed view of w's kind (MatrixView<const E> or QuantMatrixView<Q>).
template <class Fn>
decltype(auto) visit_any(const AnyMatrixView& w, Fn&& fn) {
  switch (w.kind) {
    case AnyKind::f32:
      return fn(w.dense<float>());
    case AnyKind::bf16:
      return fn(w.dense<bf16>());
    case AnyKind::f16:
      return fn(w.dense<f16>());
    case AnyKind::q8_0:
      return fn(w.blocks<quant::Q8_0>());
    case AnyKind::q4_0:
      return fn(w.blocks<quant::Q4_0>());
    case AnyKind::q4_k:
      return fn(w.blocks<quant::Q4_K>());
    case AnyKind::q6_k:
      return fn(w.blocks<quant::Q6_K>());
  }
  fail("linear", "unknown AnyFormat kind ", static_cast<int>(w.kind));
}

namespace detail {
template <class V>
struct ViewFormat;
template <class E>
struct ViewFormat<MatrixView<const E>> {
  using type = E;
};
template <class Q>
struct ViewFormat<quant::QuantMatrixView<Q>> {
  using type = Q;
};
}  // namespace detail

template <>
struct LinearTraits<AnyFormat> {
  using weight_view = AnyMatrixView;
  static std::size_t out_features(const weight_view& w) { return w.rows; }
  static std::size_t in_features(const weight_view& w) { return w.cols; }
  static weight_view slice_rows(const weight_view& w, std::size_t begin, std::size_t count) {
    check(begin + count <= w.rows, "linear", any_kind_name(w.kind), " row slice [", begin, ", ",
          begin + count, ") outside the ", w.rows, " rows");
    weight_view s = w;
    s.rows = count;
    s.data = w.data + begin * w.row_bytes;
    s.packed = nullptr;
    // Units of groups of 8 rows, each group as many bytes as its 8 rows.
    const std::size_t unit = w.kind == AnyKind::q4_k || w.kind == AnyKind::q6_k
                                 ? quant::kX8Unit<quant::Q4_K>
                                 : quant::kX8Unit<quant::Q4_0>;
    static_assert(quant::kX8Unit<quant::Q4_0> == quant::kX8Unit<quant::Q8_0>);
    static_assert(quant::kX8Unit<quant::Q4_K> == quant::kX8Unit<quant::Q6_K>);
    if (w.packed && quant::x8_slice_keeps_copy(unit, w.rows, begin, count))
      s.packed = static_cast<const std::byte*>(w.packed) + begin * w.row_bytes;
    return s;
  }
  static void matmul(ThreadPool& pool, const weight_view& w, MatrixView<const float> x,
                     MatrixView<float> y, const float* bias, const cpu::KernelTable& k) {
    visit_any(w, [&](const auto& v) {
      using F = typename detail::ViewFormat<std::decay_t<decltype(v)>>::type;
      LinearTraits<F>::matmul(pool, v, x, y, bias, k);
    });
  }
  // The product over activations quantized once (cpu::Q8Acts of x with in_features columns):
  // block kinds use the shared Q8 blocks, dense kinds the float rows. Bit-identical to matmul.
  static void matmul_acts(ThreadPool& pool, const weight_view& w, const cpu::QuantActs& a,
                          MatrixView<float> y, const cpu::KernelTable& k) {
    visit_any(w, [&](const auto& v) {
      using F = typename detail::ViewFormat<std::decay_t<decltype(v)>>::type;
      if constexpr (quant::QuantFormat<F>) {
        LinearTraits<F>::matmul_acts(pool, v, a, y, k);
      } else {
        const MatrixView<const float> x(a.x, DExtents<2>(a.T, w.cols),
                                        {static_cast<std::ptrdiff_t>(a.ldx), 1});
        LinearTraits<F>::matmul(pool, v, x, y, nullptr, k);
      }
    });
  }
  // Block kinds read Q8 activation blocks (all of AnyFormat's block kinds are integer formats).
  static bool reads_q8_acts(const weight_view& w) { return !any_kind_dense(w.kind); }
  // fn(MatrixView<const float|bf16|f16>) for dense kinds; block kinds are an error.
  template <class Fn>
  static void with_dense_rows(const weight_view& w, Fn&& fn) {
    switch (w.kind) {
      case AnyKind::f32:
        return fn(w.dense<float>());
      case AnyKind::bf16:
        return fn(w.dense<bf16>());
      case AnyKind::f16:
        return fn(w.dense<f16>());
      default:
        fail("linear", "rows of a ", any_kind_name(w.kind),
             " matrix cannot be read directly (needs F32, BF16 or F16)");
    }
  }
};

template <>
struct EmbeddingTraits<AnyFormat> {
  using table_view = AnyMatrixView;
  static std::size_t rows(const table_view& t) { return t.rows; }
  static std::size_t dim(const table_view& t) { return t.cols; }
  static void decode_row(const table_view& t, std::size_t r, float* out) {
    visit_any(t, [&](const auto& v) {
      using F = typename detail::ViewFormat<std::decay_t<decltype(v)>>::type;
      EmbeddingTraits<F>::decode_row(v, r, out);
    });
  }
};

}  // namespace tmoe
