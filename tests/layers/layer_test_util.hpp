// tests/layers/layer_test_util.hpp: random weights and activations for the layer tests.
#pragma once

#include <cstdint>

#include "test_util.hpp"
#include "tmoe/core/dtype.hpp"
#include "tmoe/core/tensor.hpp"

namespace tmoe::test {

// A (rows, cols) matrix of T with uniform values in [lo, hi), rounded to T.
template <class T>
Matrix<T> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed, float lo = -1.f,
                        float hi = 1.f) {
  Matrix<T> m(rows, cols);
  const auto v = random_floats(rows * cols, seed, lo, hi);
  for (std::size_t i = 0; i < v.size(); ++i) m.data()[i] = from_float<T>(v[i]);
  return m;
}

template <class T>
Vector<T> random_vector(std::size_t n, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Vector<T> m(n);
  const auto v = random_floats(n, seed, lo, hi);
  for (std::size_t i = 0; i < n; ++i) m.data()[i] = from_float<T>(v[i]);
  return m;
}

// max |a - b| over all elements divided by max |b| (the output scale).
inline double rel_error(MatrixView<const float> a, MatrixView<const float> b) {
  double err = 0, scale = 1e-30;
  for (std::size_t t = 0; t < a.rows(); ++t)
    for (std::size_t i = 0; i < a.cols(); ++i) {
      err = std::max(err, std::abs(double(a(t, i)) - double(b(t, i))));
      scale = std::max(scale, std::abs(double(b(t, i))));
    }
  return err / scale;
}

}  // namespace tmoe::test
