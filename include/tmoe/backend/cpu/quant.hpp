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
//     Output rows are split across the pool's threads (in whole groups of 8 rows when w has the
//     8-row interleaved copy, w.packed: Q4_0 / Q8_0 / Q4_K, QuantMatrix::repack / the loader). `k`
//     selects the ISA; `fn` (optional) overrides the row kernel (bench_quant uses it to time
//     rows_fp8_block_table).
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

template <quant::QuantFormat F>
void matmul_quant(ThreadPool& pool, const quant::QuantMatrixView<F>& w, MatrixView<const float> x,
                  MatrixView<float> y, const KernelTable& k = kernels(),
                  QuantRowsFn<F> fn = nullptr) {
  const std::size_t out = w.rows, in = w.cols, T = x.rows();
  w.validate("matmul_quant");
  check(x.cols() == in, "matmul_quant", "x has ", x.cols(), " columns, ", F::kName, " weight (",
        out, ", ", in, ") needs ", in);
  check(y.rows() == T && y.cols() == out, "matmul_quant", "y is (", y.rows(), ", ", y.cols(),
        "), expected (", T, ", ", out, ")");
  check(x.stride(1) == 1 && y.stride(1) == 1, "matmul_quant", "rows of x and y must be contiguous");
  const auto ldy = static_cast<std::size_t>(y.stride(0));
  if (!fn && T >= kQuantGemmMinT) {
    // Prefill: X packed once (each thread a share of its rows), then the dequantizing GEMM
    // over chunks of rows of W, as cpu::matmul (ops.hpp) does.
    thread_local detail::ScratchBuffer x_packed;
    float* xp = x_packed.get(k.blas.gemm_x_size(T, in));
    const auto parts = static_cast<std::size_t>(pool.size());
    const auto ldx = static_cast<std::size_t>(x.stride(0));
    pool.run(parts, [&](std::size_t part, int) {
      k.blas.gemm_pack_x(x.data(), ldx, T, in, xp, part, parts);
    });
    const auto gemm = detail::quant_gemm_fn<F>(k);
    const std::size_t grain = 2 * kGemmRowGrain;
    pool.parallel_for(
        out, grain, [&](std::size_t b, std::size_t e, int) { gemm(w, xp, T, y.data(), ldy, b, e); },
        std::clamp<std::size_t>(out / (grain * parts), 1, 4));
    return;
  }
  if (!fn) fn = detail::quant_rows_fn<F>(k);
  QuantActs a;
  a.x = x.data();
  a.ldx = static_cast<std::size_t>(x.stride(0));
  a.T = T;
  thread_local std::vector<quant::BlockQ8Act> scratch;
  thread_local std::vector<float> scratch_d;
  if constexpr (quant::kUsesQ8Act<F>) {
    a.ldq = (in + 31) / 32;
    if (scratch.size() < T * a.ldq) scratch.resize(T * a.ldq);
    if (scratch_d.size() < 2 * T * a.ldq) scratch_d.resize(2 * T * a.ldq);
    const auto q = k.quant.quantize_act;
    auto* s = scratch.data();
    float* qd = scratch_d.data();
    float* qdsum = qd + T * a.ldq;
    const std::size_t ldq = a.ldq;
    pool.parallel_for(T, 8, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t t = b; t < e; ++t) {
        q(a.x + t * a.ldx, in, s + t * ldq);
        for (std::size_t i = t * ldq; i < (t + 1) * ldq; ++i) {
          qd[i] = s[i].d;
          qdsum[i] = s[i].d * static_cast<float>(s[i].sum[0] + s[i].sum[1]);
        }
      }
    });
    a.q = s;
    a.qd = qd;
    a.qdsum = qdsum;
  }
  // With an 8-row interleaved copy the ranges are whole groups of 8 rows (the kernel runs rows
  // of a group split between two ranges on the plain blocks).
  const std::size_t unit = w.packed ? 8 : 1;
  pool.parallel_for((out + unit - 1) / unit, 16 / unit,
                    [&](std::size_t b, std::size_t e, int) {
                      fn(w, a, y.data(), ldy, b * unit, std::min(e * unit, out));
                    },
                    4);
}

// out[0 .. cols) = dequantized row `row` of w.
template <quant::QuantFormat F>
void embedding_quant(const quant::QuantMatrixView<F>& w, std::size_t row, float* out) {
  w.validate("embedding_quant");
  check(row < w.rows, "embedding_quant", "row ", row, " out of range [0, ", w.rows, ")");
  quant::dequantize_row(w, row, out);
}

}  // namespace tmoe::cpu
