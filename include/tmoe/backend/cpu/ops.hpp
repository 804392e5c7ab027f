// tmoe/backend/cpu/ops.hpp: the CPU backend's public operations: shape-checked entry points that
// split work across a ThreadPool and call the selected ISA's kernels (kernel_table.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"

namespace tmoe::cpu {

namespace detail {
template <class WT>
MatmulRowsFn<WT> matmul_rows_fn(const KernelTable& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.blas.matmul_rows_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.blas.matmul_rows_bf16;
  else if constexpr (std::is_same_v<WT, f16>)
    return k.blas.matmul_rows_f16;
  else
    static_assert(sizeof(WT) == 0, "matmul: unsupported weight type");
}
}  // namespace detail

// Y (T, out) = X (T, in) * W (out, in)^T + bias (out). Rows of X, Y and W must be contiguous
// (stride(1) == 1). `k` selects the ISA (default: the process-wide choice).
template <class WT>
void matmul(ThreadPool& pool, MatrixView<const WT> w, MatrixView<const float> x,
            MatrixView<float> y, const float* bias = nullptr, const KernelTable& k = kernels()) {
  const std::size_t out = w.rows(), in = w.cols(), T = x.rows();
  check(x.cols() == in, "matmul", "x has ", x.cols(), " columns, weight (", out, ", ", in,
        ") needs ", in);
  check(y.rows() == T && y.cols() == out, "matmul", "y is (", y.rows(), ", ", y.cols(),
        "), expected (", T, ", ", out, ")");
  check(w.stride(1) == 1 && x.stride(1) == 1 && y.stride(1) == 1, "matmul",
        "rows of w, x and y must be contiguous");
  const auto fn = detail::matmul_rows_fn<WT>(k);
  const auto ldw = static_cast<std::size_t>(w.stride(0)),
             ldx = static_cast<std::size_t>(x.stride(0)),
             ldy = static_cast<std::size_t>(y.stride(0));
  // GEMV: 8 chunks of rows per thread, claimed dynamically, so a thread that loses its core
  // (a shared machine) leaves its remaining chunks to the others. GEMM: up to 4 chunks per thread
  // of at least 256 rows of W; each chunk packs all of X once per depth block, so fewer and
  // larger chunks amortize that better.
  const bool gemm = T >= kGemmMinRows;
  const std::size_t grain = gemm ? 4 * kGemmRowGrain : 16;
  const std::size_t chunks =
      gemm ? std::clamp<std::size_t>(out / (grain * static_cast<std::size_t>(pool.size())), 1, 4)
           : 8;
  pool.parallel_for(
      out, grain,
      [&](std::size_t b, std::size_t e, int) {
        fn(w.data(), ldw, x.data(), ldx, y.data(), ldy, in, T, b, e);
        if (bias)
          for (std::size_t t = 0; t < T; ++t)
            for (std::size_t o = b; o < e; ++o) y(t, o) += bias[o];
      },
      chunks);
}

}  // namespace tmoe::cpu
