// tmoe/backend/cpu/simd.hpp: the xsimd include and small helpers shared by the CPU kernels.
//
// Kernels are templates over an xsimd architecture tag `Arch` (xsimd::sse2, xsimd::fma3<
// xsimd::avx2>, xsimd::avx512bw, ...). Each per-ISA translation unit instantiates them with the
// best tag its compile flags allow (xsimd::default_arch). Helpers here are TMOE_INLINE so that
// no out-of-line copy compiled with wide instructions can leak into baseline code.
#pragma once

#include <cstddef>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "tmoe/config.hpp"

namespace tmoe::cpu {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
// AVX-512 with VNNI and BF16 (Isa::avx512_vnni_bf16): xsimd 8.1 has no tag of its own for it, and
// with xsimd::avx512bw the kernels of isa_avx512.cpp and isa_avx512_vnni_bf16.cpp would be the
// same template instantiations compiled twice, of which the linker keeps one (the plain AVX-512
// copy: the VNNI / BF16 code never ran, or the other way round, on a CPU without them, an illegal
// instruction). This tag behaves as avx512bw in every xsimd operation (derived-to-base overload
// resolution) and makes the instantiations distinct symbols.
struct avx512_vnni_bf16_arch : xsimd::avx512bw {
  static constexpr bool supported() noexcept { return true; }
  static constexpr bool available() noexcept { return true; }
  static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 4, 1); }
  static constexpr char const* name() noexcept { return "tmoe_avx512_vnni_bf16"; }
};
}  // namespace tmoe::cpu
namespace xsimd::types {
template <class T>
struct get_bool_simd_register<T, tmoe::cpu::avx512_vnni_bf16_arch> {
  using type = simd_avx512_bool_register<T>;
};
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(tmoe::cpu::avx512_vnni_bf16_arch, avx512bw);
}  // namespace xsimd::types
namespace tmoe::cpu {
// The architecture tag kernels are instantiated with in a translation unit of these flags.
using kernel_arch = avx512_vnni_bf16_arch;
#else
using kernel_arch = xsimd::default_arch;
#endif

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

// Runs f.template operator()<N>() for N = n, a run-time count in [1, Max): a register tile's
// leftover rows or tokens after the full tiles of Max (n == 0 runs nothing).
template <int Max, class Fn>
TMOE_INLINE void run_remainder(std::size_t n, Fn&& f) {
  auto each = [&]<int... I>(std::integer_sequence<int, I...>) {
    ((n == std::size_t{I + 1} ? (f.template operator()<I + 1>(), 0) : 0), ...);
  };
  each(std::make_integer_sequence<int, Max - 1>{});
}

}  // namespace tmoe::cpu
