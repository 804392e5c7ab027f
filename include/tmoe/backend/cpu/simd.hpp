// tmoe/backend/cpu/simd.hpp: the xsimd include and small helpers shared by the CPU kernels.
//
// Kernels are templates over an xsimd architecture tag `Arch` (xsimd::sse2, xsimd::fma3<
// xsimd::avx2>, xsimd::avx512bw, ...). Each per-ISA translation unit instantiates them with the
// best tag its compile flags allow (xsimd::default_arch). Helpers here are TMOE_INLINE so that
// no out-of-line copy compiled with wide instructions can leak into baseline code.
#pragma once

#include <cstddef>

#include <xsimd/xsimd.hpp>

#include "tmoe/config.hpp"

namespace tmoe::cpu {

template <class Arch>
using fbatch = xsimd::batch<float, Arch>;

template <class Arch>
inline constexpr std::size_t kLanes = fbatch<Arch>::size;

// Horizontal sum and max of one batch (xsimd 8.1 has hadd but no reduce_max).
template <class T, class Arch>
TMOE_INLINE T reduce_add(const xsimd::batch<T, Arch>& b) {
  return xsimd::hadd(b);
}
template <class T, class Arch>
TMOE_INLINE T reduce_max(const xsimd::batch<T, Arch>& b) {
  alignas(64) T lanes[xsimd::batch<T, Arch>::size];
  b.store_aligned(lanes);
  T m = lanes[0];
  for (std::size_t i = 1; i < xsimd::batch<T, Arch>::size; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

// Prefetch [p, p + Bytes) into L1: one instruction per cache line and one for the last byte.
// The decode GEMVs (float in blas.hpp, quantized in quant_kernels.hpp) call it once per block
// step for the rows they read next, at the rate they consume the current ones: a decode matrix
// row is a few hundred bytes to a few KB, too short a stream for the hardware prefetcher to ramp
// up on (docs/performance.md: 1.4-1.8x on decode).
template <std::size_t Bytes>
TMOE_INLINE void prefetch_span(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (std::size_t o = 0; o < Bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
  if constexpr (Bytes % 64 != 0) __builtin_prefetch(c + Bytes - 1, 0, 3);
}

}  // namespace tmoe::cpu
