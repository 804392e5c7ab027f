// tmoe/backend/cpu/quant.hpp: the CPU backend's quantized matmul and embedding lookup.
//
//   matmul_quant<F>(pool, W, X, Y):  Y[t, o] = sum_i X[t, i] * dequant(W)[o, i]
//     W: QuantMatrixView<F> (out, in) for F in quant/formats.hpp (Q8_0, Q4_0, Q4_K, Q6_K, NF4,
//        Int8Row, Fp8Block); X: (T, in) float; Y: (T, out) float. Mirrors cpu::matmul (ops.hpp):
//        T < kQuantGemmMinT (24): per-token dot products in 16 x 32 tiles of rows x tokens (the
//        decode GEMV at T == 1); T >= kQuantGemmMinT: the prefill GEMM, weights dequantized
//        once per call into the float GEMM's packed panels, X packed once and shared.
//     Below kQuantGemmMinT the integer formats quantize X per 32 to BlockQ8Act first (a
//     per-thread scratch buffer), so the result differs from the float product by at most
//     sum_i |w_i| * d_act(i) / 2 (d_act: the activation block's scale, max|x| / 127 over its 32
//     elements), plus float rounding. The GEMM keeps X in float: float rounding only.
//     Exception: Q4_0 with the 8-row interleaved copy (w.packed) on the SIMD ISAs, and Q8_0 and
//     Q4_K with it on AVX-512 VNNI (cpu::int_prefill) run every T on the Q8 path: prefill then
//     uses the integer multi-token kernel (quant_kernels.hpp gemm_x8_tile / gemm_x16_tile /
//     gemm_x16_q4k_tile), each output
//     bit-identical to the T = 1 decode of its token (so the Q8 bound above applies); measured
//     faster than the float GEMM (bench_quant BM_prefill_x8, docs/performance.md). Output rows are
//     split across the pool's threads (in whole units of the 8-row interleaved copy when w has
//     one, w.packed: Q4_0 / Q8_0 32 rows, Q4_K / Q6_K 16, QuantMatrix::repack / the loader).
//     `k` selects the ISA; `fn` (optional) overrides the row kernel (bench_quant uses it to time
//     rows_fp8_block_table).
//   Q8Acts / matmul_quant<F>(pool, W, acts, Y): the same product with X quantized once by
//     Q8Acts::quantize and shared by several matmuls (a MoE layer's experts and their gate/up
//     pairs); the result is bit-identical to matmul_quant over the same X.
//   embedding_quant<F>(W, row, out): dequantizes one row (token embedding lookup).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/quant/formats.hpp"

namespace tmoe::cpu {

namespace detail {
template <class F>
QuantGemmFn<F> quant_gemm_fn(const KernelTable& k) {
  if constexpr (std::is_same_v<F, quant::Q8_0>)
    return k.quant.gemm_q8_0;
  else if constexpr (std::is_same_v<F, quant::Q4_0>)
    return k.quant.gemm_q4_0;
  else if constexpr (std::is_same_v<F, quant::Q4_K>)
    return k.quant.gemm_q4_k;
  else if constexpr (std::is_same_v<F, quant::Q6_K>)
    return k.quant.gemm_q6_k;
  else if constexpr (std::is_same_v<F, quant::NF4>)
    return k.quant.gemm_nf4;
  else if constexpr (std::is_same_v<F, quant::Int8Row>)
    return k.quant.gemm_int8_row;
  else if constexpr (std::is_same_v<F, quant::Fp8Block>)
    return k.quant.gemm_fp8_block;
  else
    static_assert(sizeof(F) == 0, "matmul_quant: unsupported format");
}

// Whether the prefill (T >= kQuantGemmMinT) of format F runs the integer kernel on the
// interleaved copy (Q8 activations) instead of the dequantizing float GEMM: Q4_0 on the SIMD ISAs
// (QuantKernels::x8_int_prefill); Q8_0 on AVX-512 VNNI only (x8_int_prefill_q8_0: its AVX2 tile,
// the sign trick per token, measured slower than the float GEMM on 2 quiet cores, bench_quant
// BM_prefill_x8, T = 512: 128 against 169 GFLOP/s; Q4_0 231 against 157; under VNNI Qwen-1.5B
// pp512 about 300 against 155-167 tok/s, docs/performance.md); Q4_K on AVX-512 VNNI only
// (x8_int_prefill_q4_k). Without it Q8_0 takes the integer tile only for 1 < T < kQuantGemmMinT
// (rows<F>), Q4_K per-token dot_x8_q4k.
template <class F>
bool x8_int_prefill_on(const KernelTable& k) {
  if constexpr (std::is_same_v<F, quant::Q4_0>)
    return k.quant.x8_int_prefill;
  else if constexpr (std::is_same_v<F, quant::Q8_0>)
    return k.quant.x8_int_prefill_q8_0;
  else if constexpr (std::is_same_v<F, quant::Q4_K>)
    return k.quant.x8_int_prefill_q4_k;
  else if constexpr (std::is_same_v<F, quant::Q6_K>)
    return k.quant.x8_int_prefill_q6_k;
  else
    return false;
}
// The same for a weight: only with its interleaved copy.
template <class F>
bool int_prefill(const quant::QuantMatrixView<F>& w, const KernelTable& k) {
  return w.packed && x8_int_prefill_on<F>(k);
}

template <class F>
QuantRowsFn<F> quant_rows_fn(const KernelTable& k) {
  if constexpr (std::is_same_v<F, quant::Q8_0>)
    return k.quant.rows_q8_0;
  else if constexpr (std::is_same_v<F, quant::Q4_0>)
    return k.quant.rows_q4_0;
  else if constexpr (std::is_same_v<F, quant::Q4_K>)
    return k.quant.rows_q4_k;
  else if constexpr (std::is_same_v<F, quant::Q6_K>)
    return k.quant.rows_q6_k;
  else if constexpr (std::is_same_v<F, quant::NF4>)
    return k.quant.rows_nf4;
  else if constexpr (std::is_same_v<F, quant::Int8Row>)
    return k.quant.rows_int8_row;
  else if constexpr (std::is_same_v<F, quant::Fp8Block>)
    return k.quant.rows_fp8_block;
  else
    static_assert(sizeof(F) == 0, "matmul_quant: unsupported format");
}
}  // namespace detail

// X (T rows of `cols` floats) with its Q8 blocks per 32 for the integer formats: what the decode
// kernels read. quantize() fills it (threads of `pool` share the rows); acts(row0, n) views n
// rows of it. Owns its buffers; reuse one object to avoid reallocation.
class Q8Acts {
 public:
  void quantize(ThreadPool& pool, MatrixView<const float> x, const KernelTable& k = kernels()) {
    check(x.stride(1) == 1, "Q8Acts", "rows of x must be contiguous");
    x_ = x.data();
    ldx_ = static_cast<std::size_t>(x.stride(0));
    T_ = x.rows();
    cols_ = x.cols();
    ldq_ = (cols_ + 31) / 32;
    if (q_.size() < T_ * ldq_) q_.resize(T_ * ldq_);
    if (d_.size() < 2 * T_ * ldq_) d_.resize(2 * T_ * ldq_);
    const auto q = k.quant.quantize_act;
    quant::BlockQ8Act* s = q_.data();
    float* qd = d_.data();
    float* qdsum = qd + T_ * ldq_;
    pool.parallel_for(T_, 8, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t t = b; t < e; ++t) {
        q(x_ + t * ldx_, cols_, s + t * ldq_);
        for (std::size_t i = t * ldq_; i < (t + 1) * ldq_; ++i) {
          qd[i] = s[i].d;
          qdsum[i] = s[i].d * static_cast<float>(s[i].sum[0] + s[i].sum[1]);
        }
      }
    });
  }
  std::size_t rows() const { return T_; }
  std::size_t cols() const { return cols_; }
  // Rows [row0, row0 + n) as the kernels' QuantActs.
  QuantActs acts(std::size_t row0, std::size_t n) const {
    check(row0 + n <= T_, "Q8Acts", "rows [", row0, ", ", row0 + n, ") outside the ", T_,
          " quantized rows");
    QuantActs a;
    a.x = x_ + row0 * ldx_;
    a.ldx = ldx_;
    a.T = n;
    a.ldq = ldq_;
    a.q = q_.data() + row0 * ldq_;
    a.qd = d_.data() + row0 * ldq_;
    a.qdsum = d_.data() + T_ * ldq_ + row0 * ldq_;
    return a;
  }
  QuantActs acts() const { return acts(0, T_); }

 private:
  const float* x_ = nullptr;
  std::size_t ldx_ = 0, T_ = 0, cols_ = 0, ldq_ = 0;
  std::vector<quant::BlockQ8Act> q_;
  std::vector<float> d_;
};

namespace detail {
template <quant::QuantFormat F>
void check_matmul_quant(const quant::QuantMatrixView<F>& w, std::size_t x_cols, std::size_t T,
                        MatrixView<float> y) {
  w.validate("matmul_quant");
  check(x_cols == w.cols, "matmul_quant", "x has ", x_cols, " columns, ", F::kName, " weight (",
        w.rows, ", ", w.cols, ") needs ", w.cols);
  check(y.rows() == T && y.cols() == w.rows, "matmul_quant", "y is (", y.rows(), ", ", y.cols(),
        "), expected (", T, ", ", w.rows, ")");
  check(y.stride(1) == 1, "matmul_quant", "rows of y must be contiguous");
}

// The decode path over activations already quantized (or float, for NF4 / Fp8Block).
template <quant::QuantFormat F>
void matmul_quant_rows(ThreadPool& pool, const quant::QuantMatrixView<F>& w, const QuantActs& a,
                       MatrixView<float> y, const KernelTable& k, QuantRowsFn<F> fn) {
  if (!fn) fn = quant_rows_fn<F>(k);
  const auto ldy = static_cast<std::size_t>(y.stride(0));
  const std::size_t out = w.rows;
  // With an 8-row interleaved copy the ranges are whole units of its groups (quant::X8Order:
  // one stream per pass; the kernel runs rows of a group split between two ranges on the plain
  // blocks).
  std::size_t unit = 1;
  if constexpr (quant::kRepackX8<F>)
    if (w.packed) unit = 8 * quant::kX8Unit<F>;
  // Tapered chunks (one big one per thread, then small ones): perf on `tmoe bench` decode
  // (Qwen-1.5B Q4_0 / Q8_0, 2 threads) put 4.0-7.8 % of the samples in the two threads' spin
  // loops with 4 equal chunks per thread, 2.4-5.5 % with these (docs/performance.md, "Decode
  // step overheads: serial activation quantization, tapered chunks").
  pool.parallel_for_tapered((out + unit - 1) / unit, std::max<std::size_t>(16 / unit, 1),
                            [&](std::size_t b, std::size_t e, int) {
                              fn(w, a, y.data(), ldy, b * unit, std::min(e * unit, out));
                            });
}
}  // namespace detail

template <quant::QuantFormat F>
void matmul_quant(ThreadPool& pool, const quant::QuantMatrixView<F>& w, MatrixView<const float> x,
                  MatrixView<float> y, const KernelTable& k = kernels(),
                  QuantRowsFn<F> fn = nullptr) {
  const std::size_t in = w.cols, T = x.rows();
  detail::check_matmul_quant(w, x.cols(), T, y);
  check(x.stride(1) == 1, "matmul_quant", "rows of x and y must be contiguous");
  const auto ldy = static_cast<std::size_t>(y.stride(0));
  if (!fn && T >= kQuantGemmMinT && !detail::int_prefill(w, k)) {
    // Prefill: X packed once (in 4 parts per thread), then the dequantizing GEMM
    // over chunks of rows of W, as cpu::matmul (ops.hpp) does.
    thread_local detail::ScratchBuffer x_packed;
    float* xp = x_packed.get(k.blas.gemm_x_size(T, in));
    const auto parts = 4 * static_cast<std::size_t>(pool.size());  // claimed dynamically
    const auto ldx = static_cast<std::size_t>(x.stride(0));
    pool.run(parts, [&](std::size_t part, int) {
      k.blas.gemm_pack_x(x.data(), ldx, T, in, xp, part, parts);
    });
    const auto gemm = detail::quant_gemm_fn<F>(k);
    gemm_row_chunks(pool, w.rows,
                    [&](std::size_t b, std::size_t e) { gemm(w, xp, T, y.data(), ldy, b, e); });
    return;
  }
  if constexpr (quant::kUsesQ8Act<F>) {
    thread_local Q8Acts scratch;
    scratch.quantize(pool, x, k);
    detail::matmul_quant_rows<F>(pool, w, scratch.acts(), y, k, fn);
  } else {
    QuantActs a;
    a.x = x.data();
    a.ldx = static_cast<std::size_t>(x.stride(0));
    a.T = T;
    detail::matmul_quant_rows<F>(pool, w, a, y, k, fn);
  }
}

// The same product over rows of a Q8Acts (quantized once for several matmuls). Decode-sized T
// (below kQuantGemmMinT) runs the row kernels on the shared blocks, bit-identical to
// matmul_quant(pool, w, x, y) over the same x; larger T runs matmul_quant on the float rows.
template <quant::QuantFormat F>
void matmul_quant(ThreadPool& pool, const quant::QuantMatrixView<F>& w, const QuantActs& a,
                  std::size_t cols, MatrixView<float> y, const KernelTable& k = kernels()) {
  if ((a.T >= kQuantGemmMinT && !detail::int_prefill(w, k)) || !quant::kUsesQ8Act<F>) {
    const MatrixView<const float> x(a.x, DExtents<2>(a.T, cols),
                                    {static_cast<std::ptrdiff_t>(a.ldx), 1});
    matmul_quant<F>(pool, w, x, y, k);
    return;
  }
  detail::check_matmul_quant(w, cols, a.T, y);
  check(a.q && a.ldq == (cols + 31) / 32, "matmul_quant", "activations are not quantized for ",
        cols, " columns");
  detail::matmul_quant_rows<F>(pool, w, a, y, k, nullptr);
}

// out[0 .. cols) = dequantized row `row` of w.
template <quant::QuantFormat F>
void embedding_quant(const quant::QuantMatrixView<F>& w, std::size_t row, float* out) {
  w.validate("embedding_quant");
  check(row < w.rows, "embedding_quant", "row ", row, " out of range [0, ", w.rows, ")");
  quant::dequantize_row(w, row, out);
}

}  // namespace tmoe::cpu
