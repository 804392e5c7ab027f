// Exhaustive tests of the narrow float types against an independent reference: decoding by the
// published formula (ldexp of sign, exponent, mantissa) and encoding by searching the sorted
// table of every representable value for the nearest one (ties to the even bit pattern).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "tmoe/core/dtype.hpp"

using namespace tmoe;

namespace {

struct Format {
  int exp_bits, mant_bits, bias;
  bool has_inf;  // IEEE-like (inf at max exponent) vs e4m3fn (only S.1111.111 is NaN)
};

template <class T> constexpr Format format_of();
template <> constexpr Format format_of<f16>() { return {5, 10, 15, true}; }
template <> constexpr Format format_of<bf16>() { return {8, 7, 127, true}; }
template <> constexpr Format format_of<f8_e4m3>() { return {4, 3, 7, false}; }
template <> constexpr Format format_of<f8_e5m2>() { return {5, 2, 15, true}; }

// Decode by the definition; NaN returned as quiet NaN.
template <class T>
double ref_decode(std::uint32_t bits) {
  constexpr Format f = format_of<T>();
  const int total = 1 + f.exp_bits + f.mant_bits;
  const bool neg = (bits >> (total - 1)) & 1;
  const std::uint32_t e = (bits >> f.mant_bits) & ((1u << f.exp_bits) - 1);
  const std::uint32_t m = bits & ((1u << f.mant_bits) - 1);
  const std::uint32_t emax = (1u << f.exp_bits) - 1;
  double v;
  if (f.has_inf && e == emax) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (!f.has_inf && e == emax && m == (1u << f.mant_bits) - 1) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - f.bias - f.mant_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(double(m), -f.mant_bits), int(e) - f.bias);
  }
  return neg ? -v : v;
}

template <class T>
constexpr std::uint32_t bit_count() {
  return 8 * sizeof(T);
}

template <class T>
std::uint32_t bits_of(T v) {
  return v.bits;
}

// All finite non-negative values with their patterns, ascending.
template <class T>
std::vector<std::pair<double, std::uint32_t>> finite_table() {
  std::vector<std::pair<double, std::uint32_t>> t;
  const std::uint32_t sign = 1u << (bit_count<T>() - 1);
  for (std::uint32_t b = 0; b < sign; ++b) {
    const double v = ref_decode<T>(b);
    if (std::isfinite(v)) t.emplace_back(v, b);
  }
  std::sort(t.begin(), t.end());
  return t;
}

// Encode by nearest-value search. Beyond the largest finite value: IEEE formats round to inf at
// max + half an ulp (the tie goes to inf, whose pattern is even); e4m3fn saturates.
template <class T>
std::uint32_t ref_encode(float x, const std::vector<std::pair<double, std::uint32_t>>& table) {
  constexpr Format f = format_of<T>();
  const std::uint32_t sign = 1u << (bit_count<T>() - 1);
  const std::uint32_t inf_bits = ((1u << f.exp_bits) - 1) << f.mant_bits;
  const std::uint32_t s = std::signbit(x) ? sign : 0;
  if (std::isnan(x)) return 0xffffffffu;  // caller checks NaN-ness only
  const double a = std::abs(double(x));
  const double max = table.back().first;
  const double max_ulp = max - table[table.size() - 2].first;
  if (a >= max + max_ulp / 2) {
    if (!f.has_inf) return s | table.back().second;
    if (a > max + max_ulp / 2 || (table.back().second & 1)) return s | inf_bits;
    return s | table.back().second;
  }
  auto it = std::lower_bound(table.begin(), table.end(), std::make_pair(a, 0u));
  if (it == table.end()) return s | table.back().second;
  if (it->first == a || it == table.begin()) return s | it->second;
  auto lo = it - 1;
  const double dl = a - lo->first, dh = it->first - a;
  if (dl < dh) return s | lo->second;
  if (dh < dl) return s | it->second;
  return s | ((lo->second & 1) ? it->second : lo->second);
}

template <class T>
void check_type() {
  const auto table = finite_table<T>();
  const std::uint32_t n_patterns = 1u << bit_count<T>();
  // 1. Decoding every pattern.
  for (std::uint32_t b = 0; b < n_patterns; ++b) {
    const float got = T::from_bits(static_cast<decltype(T{}.bits)>(b)).to_float();
    const double want = ref_decode<T>(b);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(double(got) == want);
      REQUIRE(std::signbit(got) == std::signbit(want));
    }
  }
  // 2. Every finite pattern round-trips; 3. midpoints and their neighbours round correctly.
  auto expect_encode = [&](float x) {
    const std::uint32_t got = bits_of(T::from_float(x));
    const std::uint32_t want = ref_encode<T>(x, table);
    if (want == 0xffffffffu) {
      REQUIRE(std::isnan(T::from_bits(static_cast<decltype(T{}.bits)>(got)).to_float()));
    } else {
      INFO("x = " << x);
      REQUIRE(got == want);
    }
  };
  for (std::size_t i = 0; i < table.size(); ++i) {
    for (float sgn : {1.f, -1.f}) {
      const float v = sgn * float(table[i].first);
      expect_encode(v);
      expect_encode(std::nextafter(v, 0.f));
      expect_encode(std::nextafter(v, sgn * std::numeric_limits<float>::infinity()));
      if (i + 1 < table.size()) {
        const float mid = sgn * float((table[i].first + table[i + 1].first) / 2);
        REQUIRE(double(std::abs(mid)) == (table[i].first + table[i + 1].first) / 2);  // exact
        expect_encode(mid);
        expect_encode(std::nextafter(mid, 0.f));
        expect_encode(std::nextafter(mid, sgn * std::numeric_limits<float>::infinity()));
      }
    }
  }
  // 4. Specials and random float32 patterns.
  for (float x : {0.f, -0.f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                  std::numeric_limits<float>::min()})
    expect_encode(x);
  std::mt19937 rng(42);
  for (int i = 0; i < 200000; ++i) expect_encode(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
}

}  // namespace

TEST_CASE("bf16: exhaustive decode, round-trip and rounding") { check_type<bf16>(); }
TEST_CASE("f16: exhaustive decode, round-trip and rounding") { check_type<f16>(); }
TEST_CASE("f8_e4m3 (e4m3fn): exhaustive decode, round-trip, rounding, saturation") {
  check_type<f8_e4m3>();
  CHECK(f8_e4m3::from_float(1e9f).bits == 0x7e);
  CHECK(f8_e4m3::from_float(-std::numeric_limits<float>::infinity()).bits == 0xfe);
  CHECK(f8_e4m3::from_bits(0x7e).to_float() == 448.f);
  CHECK(f8_e4m3::from_bits(0x01).to_float() == 0.001953125f);  // smallest subnormal 2^-9
}
TEST_CASE("f8_e5m2: exhaustive decode, round-trip and rounding") {
  check_type<f8_e5m2>();
  CHECK(f8_e5m2::from_bits(0x7b).to_float() == 57344.f);
}

TEST_CASE("dtype tags") {
  CHECK(dtype_size(DType::bf16) == 2);
  CHECK(dtype_size(DType::f8_e4m3) == 1);
  CHECK(dtype_name(DType::i64) == "I64");
  CHECK(dtype_of_v<bf16> == DType::bf16);
  CHECK(round_to<bf16>(1.00390625f) == 1.0f);  // tie to even
}
