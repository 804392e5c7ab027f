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
template <class WT>
GemmPackedFn<WT> gemm_packed_fn(const KernelTable& k) {
  if constexpr (std::is_same_v<WT, float>)
    return k.blas.gemm_packed_f32;
  else if constexpr (std::is_same_v<WT, bf16>)
    return k.blas.gemm_packed_bf16;
  else
    return k.blas.gemm_packed_f16;
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
  auto add_bias = [&](std::size_t b, std::size_t e) {
    if (bias)
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t o = b; o < e; ++o) y(t, o) += bias[o];
  };
  if (T < kGemmMinRows) {
    // GEMV: 8 chunks of rows per thread, claimed dynamically, so a thread that loses its core
    // (a shared machine) leaves its remaining chunks to the others.
    pool.parallel_for(
        out, 16,
        [&](std::size_t b, std::size_t e, int) {
          fn(w.data(), ldw, x.data(), ldx, y.data(), ldy, in, T, b, e);
          add_bias(b, e);
        },
        8);
    return;
  }
  // GEMM: X is packed once (in 4 parts per thread), then the rows of W are split in
  // chunks that shrink towards the end (gemm_row_chunks), each packing its own rows of W.
  thread_local detail::ScratchBuffer x_packed;
  float* xp = x_packed.get(k.blas.gemm_x_size(T, in));
  const auto parts = 4 * static_cast<std::size_t>(pool.size());  // claimed dynamically
  pool.run(parts, [&](std::size_t part, int) {
    k.blas.gemm_pack_x(x.data(), ldx, T, in, xp, part, parts);
  });
  const auto gemm = detail::gemm_packed_fn<WT>(k);
  gemm_row_chunks(pool, out, [&](std::size_t b, std::size_t e) {
    gemm(w.data(), ldw, xp, y.data(), ldy, in, T, b, e);
    add_bias(b, e);
  });
}

}  // namespace tmoe::cpu
