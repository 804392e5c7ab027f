// tmoe/backend/reference/reduce.hpp: scalar ground truth for reductions. Sums accumulate left to
// right in double, so they are the most accurate version, not a bit-for-bit twin of the SIMD
// order; tests bound the SIMD result by n * eps * sum|x|.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

namespace tmoe::reference {

inline float sum(const float* x, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += x[i];
  return static_cast<float>(s);
}

inline float max(const float* x, std::size_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

inline float dot(const float* a, const float* b, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return static_cast<float>(s);
}

inline float sum_squares(const float* x, std::size_t n) { return dot(x, x, n); }

inline void softmax(float* x, std::size_t n) {
  if (n == 0) return;
  const double m = max(x, n);
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(double(x[i]) - m) / s);
}

}  // namespace tmoe::reference
