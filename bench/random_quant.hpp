// bench/random_quant.hpp: random quantized matrices for the kernel benchmarks (bench_quant,
// bench_cputime): random block bytes with finite scales, since the kernels' speed does not depend
// on the values.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <type_traits>

#include "tmoe/quant/quantize.hpp"

namespace tmoe_bench {

template <class F>
tmoe::quant::QuantMatrix<F> random_quant_matrix(std::size_t rows, std::size_t cols) {
  using namespace tmoe::quant;
  QuantMatrix<F> m(rows, cols);
  std::mt19937_64 rng(42);
  const std::size_t n = rows * (cols / F::kBlockSize);
  auto* bytes = reinterpret_cast<std::uint64_t*>(m.blocks());
  for (std::size_t i = 0; i < n * sizeof(typename F::Block) / 8; ++i) bytes[i] = rng();
  for (std::size_t i = 0; i < n; ++i) {
    auto& b = m.blocks()[i];
    if constexpr (std::is_same_v<F, Q8_0> || std::is_same_v<F, Q4_0> || std::is_same_v<F, Q6_K>)
      b.d = tmoe::f16::from_float(0.01f);
    if constexpr (std::is_same_v<F, Q4_K>) b.d = b.dmin = tmoe::f16::from_float(0.01f);
    if constexpr (std::is_same_v<F, NF4>) b.absmax = 0.5f;
    if constexpr (std::is_same_v<F, Fp8Block>)
      if ((b.bits & 0x7f) == 0x7f) b.bits = 0x7e;
  }
  if constexpr (std::is_same_v<F, Int8Row>) std::fill_n(m.scales(), rows, 0.01f);
  if constexpr (std::is_same_v<F, Fp8Block>) {
    std::fill_n(m.scales(), ((rows + 127) / 128) * ((cols + 127) / 128), 0.01f);
    m.repack();  // the NaN check a loader makes once (QuantMatrixView::nan_free)
  }
  return m;
}

}  // namespace tmoe_bench
