// tmoe/backend/reference/blas.hpp: scalar ground truth for matmul: Y = X W^T + b, every product
// and sum in double, rounded to float once.
#pragma once

#include <cstddef>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/tensor.hpp"

namespace tmoe::reference {

template <class WT>
void matmul(MatrixView<const WT> w, MatrixView<const float> x, MatrixView<float> y,
            const float* bias = nullptr) {
  for (std::size_t t = 0; t < x.rows(); ++t)
    for (std::size_t o = 0; o < w.rows(); ++o) {
      double s = bias ? bias[o] : 0.0;
      for (std::size_t i = 0; i < w.cols(); ++i) s += double(to_float(w(o, i))) * double(x(t, i));
      y(t, o) = static_cast<float>(s);
    }
}

}  // namespace tmoe::reference
