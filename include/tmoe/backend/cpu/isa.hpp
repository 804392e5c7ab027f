// tmoe/backend/cpu/isa.hpp: the instruction sets tmoe builds CPU kernels for, detection of what
// the running CPU supports, and the TMOE_ISA override.
//
// Fallback chain (each level implies the previous): portable (x86-64 baseline, SSE2) -> avx2
// (AVX2 + FMA + F16C) -> avx512 (F, BW, DQ, VL, CD) -> avx512_vnni_bf16 (adds VNNI and BF16
// dot products, e.g. AMD Zen 4, Intel Sapphire Rapids).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "tmoe/core/error.hpp"

namespace tmoe::cpu {

enum class Isa : std::uint8_t { portable = 0, avx2 = 1, avx512 = 2, avx512_vnni_bf16 = 3 };
inline constexpr int kIsaCount = 4;

constexpr std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512_vnni_bf16: return "avx512_vnni_bf16";
  }
  return "?";
}

inline Isa parse_isa(std::string_view s) {
  for (int i = 0; i < kIsaCount; ++i)
    if (isa_name(static_cast<Isa>(i)) == s) return static_cast<Isa>(i);
  fail("cpu", "unknown ISA '", s, "' (supported: portable, avx2, avx512, avx512_vnni_bf16)");
}

// The best ISA the running CPU (and OS) supports.
inline Isa detect_isa() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
  const bool vnni_bf16 = avx512 && __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("avx512bf16");
  if (vnni_bf16) return Isa::avx512_vnni_bf16;
  if (avx512) return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::portable;
}

// The ISA the current translation unit is compiled for (its -m flags).
constexpr Isa compiled_isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
  return Isa::avx512_vnni_bf16;
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
  return Isa::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return Isa::avx2;
#else
  return Isa::portable;
#endif
}

}  // namespace tmoe::cpu
