// tmoe/core/dtype.hpp: narrow floating-point value types and the run-time dtype tag.
//
// bf16, f16, f8_e4m3 (OCP/PyTorch "e4m3fn": no infinities, one NaN pattern per sign, max 448)
// and f8_e5m2 (IEEE-like, with infinities) are 2- or 1-byte trivially copyable structs holding
// their bit pattern. Conversion to float is exact. Conversion from float rounds to nearest, ties
// to even, with these edge rules:
//   bf16, f16, e5m2: overflow rounds to +-inf as IEEE does; NaN stays NaN (quiet).
//   e4m3fn: saturates: finite values and +-inf beyond the range give +-448 (OCP "satfinite"),
//           NaN gives the NaN pattern 0x7f (sign kept).
// Bit patterns and decoding follow the published definitions (IEEE 754 binary16, bfloat16 as the
// upper half of binary32, OCP 8-bit floating point spec v1.0).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "tmoe/config.hpp"

namespace tmoe {

namespace detail {
TMOE_HOST_DEVICE constexpr std::uint32_t f32_bits(float f) { return std::bit_cast<std::uint32_t>(f); }
TMOE_HOST_DEVICE constexpr float f32_from_bits(std::uint32_t u) { return std::bit_cast<float>(u); }

// Rounds |x| (a binary32 bit pattern without sign, finite, >= the target's smallest normal) to a
// format with `mant_bits` mantissa bits and exponent bias `bias`; returns the target pattern
// without sign. Ties to even: add half an ulp minus one, plus the lowest kept bit.
TMOE_HOST_DEVICE constexpr std::uint32_t round_normal(std::uint32_t x, int mant_bits, int bias) {
  const int shift = 23 - mant_bits;
  const std::uint32_t odd = (x >> shift) & 1u;
  x += (static_cast<std::uint32_t>(bias - 127) << 23) + ((1u << (shift - 1)) - 1u) + odd;
  return x >> shift;
}

// Rounds |x| (a non-negative float below the target's smallest normal) to the target's
// subnormal grid by letting the FPU round: adding 2^k whose ulp equals the subnormal step.
TMOE_HOST_DEVICE constexpr std::uint32_t round_subnormal(float ax, int mant_bits, int bias) {
  const std::uint32_t magic_bits = static_cast<std::uint32_t>((127 - bias) + (23 - mant_bits) + 1)
                                   << 23;
  const float magic = f32_from_bits(magic_bits);
  return f32_bits(ax + magic) - magic_bits;
}
}  // namespace detail

// bfloat16: the upper 16 bits of a binary32.
struct bf16 {
  std::uint16_t bits = 0;

  static TMOE_HOST_DEVICE constexpr bf16 from_bits(std::uint16_t b) { return bf16{b}; }
  static TMOE_HOST_DEVICE constexpr bf16 from_float(float f) {
    std::uint32_t u = detail::f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{static_cast<std::uint16_t>(u >> 16)};
  }
  TMOE_HOST_DEVICE constexpr float to_float() const {
    return detail::f32_from_bits(static_cast<std::uint32_t>(bits) << 16);
  }
  TMOE_HOST_DEVICE constexpr explicit operator float() const { return to_float(); }
  friend constexpr bool operator==(bf16, bf16) = default;
};

// IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Max 65504.
struct f16 {
  std::uint16_t bits = 0;

  static TMOE_HOST_DEVICE constexpr f16 from_bits(std::uint16_t b) { return f16{b}; }
  static TMOE_HOST_DEVICE constexpr f16 from_float(float f) {
    std::uint32_t x = detail::f32_bits(f);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    std::uint32_t r;
    if (x > 0x7f800000u) r = 0x7e00u;                 // NaN
    else if (x >= 0x477ff000u) r = 0x7c00u;           // >= 65520 rounds to inf
    else if (x >= 0x38800000u) r = detail::round_normal(x, 10, 15);  // >= 2^-14
    else r = detail::round_subnormal(detail::f32_from_bits(x), 10, 15);
    return f16{static_cast<std::uint16_t>(sign | r)};
  }
  TMOE_HOST_DEVICE constexpr float to_float() const {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1fu;
    const std::uint32_t mant = bits & 0x3ffu;
    if (exp == 0x1fu) return detail::f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {  // subnormal: mant * 2^-24, exact in binary32
      const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
      return detail::f32_from_bits(sign | detail::f32_bits(v));
    }
    return detail::f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
  }
  TMOE_HOST_DEVICE constexpr explicit operator float() const { return to_float(); }
  friend constexpr bool operator==(f16, f16) = default;
};

// OCP FP8 E4M3 ("e4m3fn", torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN,
// max finite 448, min normal 2^-6, subnormals m/8 * 2^-6.
struct f8_e4m3 {
  std::uint8_t bits = 0;
  static constexpr float kMax = 448.0f;

  static TMOE_HOST_DEVICE constexpr f8_e4m3 from_bits(std::uint8_t b) { return f8_e4m3{b}; }
  static TMOE_HOST_DEVICE constexpr f8_e4m3 from_float(float f) {
    std::uint32_t x = detail::f32_bits(f);
    const std::uint32_t sign = (x >> 24) & 0x80u;
    x &= 0x7fffffffu;
    std::uint32_t r;
    if (x > 0x7f800000u) r = 0x7fu;                  // NaN
    else if (x >= 0x43e00000u) r = 0x7eu;            // >= 448 (and inf): saturate
    else if (x >= 0x3c800000u) r = detail::round_normal(x, 3, 7);  // >= 2^-6
    else r = detail::round_subnormal(detail::f32_from_bits(x), 3, 7);
    return f8_e4m3{static_cast<std::uint8_t>(sign | r)};
  }
  TMOE_HOST_DEVICE constexpr float to_float() const {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
    const std::uint32_t exp = (bits >> 3) & 0xfu;
    const std::uint32_t mant = bits & 0x7u;
    if (exp == 0xfu && mant == 0x7u) return detail::f32_from_bits(sign | 0x7fc00000u);
    if (exp == 0) {
      const float v = static_cast<float>(mant) * 0.001953125f;  // m * 2^-9
      return detail::f32_from_bits(sign | detail::f32_bits(v));
    }
    return detail::f32_from_bits(sign | ((exp + 120u) << 23) | (mant << 20));
  }
  TMOE_HOST_DEVICE constexpr explicit operator float() const { return to_float(); }
  friend constexpr bool operator==(f8_e4m3, f8_e4m3) = default;
};

// OCP FP8 E5M2: bias 15, IEEE-like infinities and NaNs, max finite 57344.
struct f8_e5m2 {
  std::uint8_t bits = 0;
  static constexpr float kMax = 57344.0f;

  static TMOE_HOST_DEVICE constexpr f8_e5m2 from_bits(std::uint8_t b) { return f8_e5m2{b}; }
  static TMOE_HOST_DEVICE constexpr f8_e5m2 from_float(float f) {
    std::uint32_t x = detail::f32_bits(f);
    const std::uint32_t sign = (x >> 24) & 0x80u;
    x &= 0x7fffffffu;
    std::uint32_t r;
    if (x > 0x7f800000u) r = 0x7fu;                  // NaN
    else if (x >= 0x47700000u) r = 0x7cu;            // >= 61440 rounds to inf
    else if (x >= 0x38800000u) r = detail::round_normal(x, 2, 15);
    else r = detail::round_subnormal(detail::f32_from_bits(x), 2, 15);
    return f8_e5m2{static_cast<std::uint8_t>(sign | r)};
  }
  TMOE_HOST_DEVICE constexpr float to_float() const {
    return f16::from_bits(static_cast<std::uint16_t>(bits << 8)).to_float();  // e5m2 = top of f16
  }
  TMOE_HOST_DEVICE constexpr explicit operator float() const { return to_float(); }
  friend constexpr bool operator==(f8_e5m2, f8_e5m2) = default;
};

static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2 && sizeof(f8_e4m3) == 1 && sizeof(f8_e5m2) == 1);

// Generic conversions, so templated code can write to_float(x) / from_float<T>(f) for any T.
TMOE_HOST_DEVICE constexpr float to_float(float x) { return x; }
TMOE_HOST_DEVICE constexpr float to_float(bf16 x) { return x.to_float(); }
TMOE_HOST_DEVICE constexpr float to_float(f16 x) { return x.to_float(); }
TMOE_HOST_DEVICE constexpr float to_float(f8_e4m3 x) { return x.to_float(); }
TMOE_HOST_DEVICE constexpr float to_float(f8_e5m2 x) { return x.to_float(); }

template <class T>
TMOE_HOST_DEVICE constexpr T from_float(float f) {
  if constexpr (std::is_same_v<T, float>) return f;
  else return T::from_float(f);
}

// Rounds a float through T and back (e.g. round_to<bf16>(x) mimics storing x in a bf16 tensor).
template <class T>
TMOE_HOST_DEVICE constexpr float round_to(float f) {
  return to_float(from_float<T>(f));
}

template <class T>
concept NarrowFloat = std::is_same_v<T, bf16> || std::is_same_v<T, f16> ||
                      std::is_same_v<T, f8_e4m3> || std::is_same_v<T, f8_e5m2>;
template <class T>
concept FloatLike = std::is_same_v<T, float> || NarrowFloat<T>;

// Run-time tag of a stored element type (file formats, type-erased buffers).
enum class DType : std::uint8_t { f32, f16, bf16, f8_e4m3, f8_e5m2, f64, i8, u8, i16, i32, i64, boolean };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: case DType::i16: return 2;
    case DType::f8_e4m3: case DType::f8_e5m2: case DType::i8: case DType::u8: case DType::boolean:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::f8_e4m3: return "F8_E4M3";
    case DType::f8_e5m2: return "F8_E5M2";
    case DType::f64: return "F64";
    case DType::i8: return "I8";
    case DType::u8: return "U8";
    case DType::i16: return "I16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<f8_e4m3> { static constexpr DType value = DType::f8_e4m3; };
template <> struct dtype_of<f8_e5m2> { static constexpr DType value = DType::f8_e5m2; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<std::int8_t> { static constexpr DType value = DType::i8; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<std::int16_t> { static constexpr DType value = DType::i16; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::i64; };
template <class T> inline constexpr DType dtype_of_v = dtype_of<T>::value;

}  // namespace tmoe
