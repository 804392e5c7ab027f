// Elementwise expressions (core/expr.hpp) against plain scalar loops, at sizes with SIMD tails.
// Bounds: + - * / and row broadcasts are exact (the same float operations); exp, rsqrt and silu
// within 8 ulp of the scalar std:: versions (xsimd's polynomials differ from libm in the last
// bits); gelu_tanh within 1e-6 * (1 + |ref|) of the double-precision formula; conversions to and
// from bf16 / f16 are exact (round to nearest even, the same as dtype.hpp).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "test_util.hpp"
#include "tmoe/core/expr.hpp"

using namespace tmoe;

namespace {
constexpr float kEps = std::numeric_limits<float>::epsilon();
const std::size_t kSizes[] = {0, 1, 7, 8, 9, 16, 17, 33, 100, 1000, 4099};

Vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo = -4.f, float hi = 4.f) {
  Vector<float> v(n);
  const auto f = test::random_floats(n, seed, lo, hi);
  for (std::size_t i = 0; i < n; ++i) v.data()[i] = f[i];
  return v;
}

bool within_ulps(float a, float ref, float ulps) {
  return std::abs(double(a) - double(ref)) <= ulps * kEps * std::abs(double(ref)) + 1e-37;
}
}  // namespace

TEST_CASE("arithmetic with scalars on either side is exact") {
  for (std::size_t n : kSizes) {
    auto a = random_vector(n, 1), b = random_vector(n, 2, 0.5f, 3.f);
    Vector<float> y(n);
    assign(y.view(), (a.cview() + b.cview()) * 2.0f - 1.5f / b.cview() + (-a.cview()));
    for (std::size_t i = 0; i < n; ++i) {
      const float ai = a.data()[i], bi = b.data()[i];
      REQUIRE(y.data()[i] == (ai + bi) * 2.0f - 1.5f / bi + (-ai));
    }
  }
}

TEST_CASE("silu(a) * b, exp and rsqrt match the scalar functions") {
  for (std::size_t n : kSizes) {
    auto a = random_vector(n, 3, -20.f, 20.f), b = random_vector(n, 4),
         p = random_vector(n, 5, 1e-3f, 1e3f);
    Vector<float> y(n), e(n), r(n);
    assign(y.view(), ew::silu(a.cview()) * b.cview());
    assign(e.view(), ew::exp(a.cview()));
    assign(r.view(), ew::rsqrt(p.cview()));
    for (std::size_t i = 0; i < n; ++i) {
      const float x = a.data()[i];
      REQUIRE(within_ulps(y.data()[i], x / (1.0f + std::exp(-x)) * b.data()[i], 8));
      REQUIRE(within_ulps(e.data()[i], std::exp(x), 8));
      REQUIRE(within_ulps(r.data()[i], 1.0f / std::sqrt(p.data()[i]), 2));
    }
  }
}

TEST_CASE("gelu_tanh matches the tanh-form formula") {
  for (std::size_t n : kSizes) {
    auto a = random_vector(n, 6, -8.f, 8.f);
    Vector<float> y(n);
    assign(y.view(), ew::gelu_tanh(a));
    for (std::size_t i = 0; i < n; ++i) {
      const double x = a.data()[i];
      const double ref =
          0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
      REQUIRE(std::abs(y.data()[i] - ref) <= 1e-6 * (1.0 + std::abs(ref)));
    }
  }
}

TEST_CASE("row broadcast adds a vector to every row") {
  for (std::size_t cols : {1u, 7u, 8u, 13u, 64u})
    for (std::size_t rows : {1u, 3u, 5u}) {
      Matrix<float> x(rows, cols), y(rows, cols);
      const auto xf = test::random_floats(rows * cols, cols + rows);
      std::copy(xf.begin(), xf.end(), x.data());
      auto bias = random_vector(cols, 7), scale = random_vector(cols, 8);
      assign(y.view(), x.cview() * ew::row_broadcast(scale.cview()) + ew::row_broadcast(bias));
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c)
          REQUIRE(y(r, c) == x(r, c) * scale.data()[c] + bias.data()[c]);
    }
}

TEST_CASE("bf16 and f16 operands, destinations and casts round to nearest even") {
  for (std::size_t n : kSizes) {
    auto a = random_vector(n, 9), b = random_vector(n, 10);
    Vector<bf16> ab(n), yb(n);
    Vector<f16> yh(n);
    Vector<float> yc(n);
    for (std::size_t i = 0; i < n; ++i) ab.data()[i] = bf16::from_float(a.data()[i]);
    assign(yb.view(), ab.cview() + b.cview());
    assign(yh.view(), a.cview() * b.cview());
    assign(yc.view(), ew::cast<f16>(a.cview()) + ew::cast<bf16>(b.cview()));
    for (std::size_t i = 0; i < n; ++i) {
      const float ai = a.data()[i], bi = b.data()[i];
      REQUIRE(yb.data()[i] == bf16::from_float(ab.data()[i].to_float() + bi));
      REQUIRE(yh.data()[i] == f16::from_float(ai * bi));
      REQUIRE(yc.data()[i] == round_to<f16>(ai) + round_to<bf16>(bi));
    }
  }
}

TEST_CASE("the threaded assign gives the same bits as the serial one") {
  ThreadPool pool(2);
  for (std::size_t n : {1u, 100u, 4097u, 100003u}) {
    auto a = random_vector(n, 11), b = random_vector(n, 12);
    Vector<float> y1(n), y2(n);
    assign(y1.view(), ew::silu(a.cview()) * b.cview() + 1.0f);
    assign(pool, y2.view(), ew::silu(a.cview()) * b.cview() + 1.0f);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(y1.data()[i] == y2.data()[i]);
  }
  Matrix<float> x(300, 37), y(300, 37);
  const auto xf = test::random_floats(300 * 37, 13);
  std::copy(xf.begin(), xf.end(), x.data());
  auto bias = random_vector(37, 14);
  assign(pool, y.view(), x.cview() - ew::row_broadcast(bias.cview()));
  for (std::size_t r = 0; r < 300; ++r)
    for (std::size_t c = 0; c < 37; ++c) REQUIRE(y(r, c) == x(r, c) - bias.data()[c]);
}

TEST_CASE("static and dynamic extents mix; run-time mismatches name both shapes") {
  Tensor<float, Extents<2, kDynamic>> s(Extents<2, kDynamic>(3), 1.0f);
  Matrix<float> d(DExtents<2>(2, 3), 2.0f), y(2, 3), wrong(DExtents<2>(2, 4), 0.0f);
  assign(y.view(), s.cview() + d.cview());
  CHECK(y(1, 2) == 3.0f);
  CHECK_THROWS_WITH(d.cview() + wrong.cview(), "[expr] shape mismatch: [2,3] vs [2,4]");
  CHECK_THROWS_WITH(assign(wrong.view(), d.cview() * 2.0f),
                    "[assign] shape mismatch: destination [2,4] vs expression [2,3]");
  Vector<float> v(DExtents<1>(5), 0.0f);
  CHECK_THROWS_WITH(assign(y.view(), d.cview() + ew::row_broadcast(v.cview())),
                    "[expr] shape mismatch: [2,3] vs [*,5]");
  MatrixView<const float> strided(d.data(), DExtents<2>(2, 2), {3, 1});
  CHECK_THROWS_WITH(ew::exp(strided),
                    "[expr] operand of shape [2,2] is strided; materialize it into a contiguous "
                    "tensor first");
}
