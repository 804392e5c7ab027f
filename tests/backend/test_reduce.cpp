// Reductions of every ISA against the scalar reference (left-to-right double sums), at sizes
// that are and are not multiples of every SIMD width. Bound: n * eps_f32 * sum|x| (reordering).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "test_util.hpp"
#include "tmoe/backend/reference/reduce.hpp"

using namespace tmoe;

TEST_CASE("reductions match the reference on every ISA") {
  test::for_each_isa([](const cpu::KernelTable& k) {
    for (std::size_t n : {0u, 1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 64u, 65u, 127u, 1000u, 4099u}) {
      const auto x = test::random_floats(n, 7 + n, -2.f, 3.f);
      const auto y = test::random_floats(n, 11 + n);
      double abs_sum = 0, abs_dot = 0;
      for (std::size_t i = 0; i < n; ++i) {
        abs_sum += std::abs(x[i]);
        abs_dot += std::abs(x[i] * y[i]);
      }
      const double eps = std::numeric_limits<float>::epsilon();
      CHECK(std::abs(k.reduce.sum(x.data(), n) - reference::sum(x.data(), n)) <= n * eps * abs_sum + 1e-30);
      CHECK(std::abs(k.reduce.dot(x.data(), y.data(), n) - reference::dot(x.data(), y.data(), n)) <=
            n * eps * abs_dot + 1e-30);
      CHECK(std::abs(k.reduce.sum_squares(x.data(), n) - reference::sum_squares(x.data(), n)) <=
            n * eps * reference::sum_squares(x.data(), n) + 1e-30);
      if (n > 0) {
        CHECK(k.reduce.max(x.data(), n) == reference::max(x.data(), n));
        auto s = x, r = x;
        k.reduce.softmax(s.data(), n);
        reference::softmax(r.data(), n);
        CHECK(test::max_rel_error(s.data(), r.data(), n) < 1e-5);
      }
    }
  });
}
