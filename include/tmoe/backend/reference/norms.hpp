// tmoe/backend/reference/norms.hpp: scalar ground truth for RMSNorm and LayerNorm over the rows
// of a (T, n) float matrix. Statistics in double, left to right; weights widened exactly.
//   rms_norm:   y = w * x / sqrt(mean(x^2) + eps)
//   layer_norm: y = w * (x - mean) / sqrt(mean((x - mean)^2) + eps) + b
// hf_bf16 reproduces Hugging Face's bf16 RMSNorm rounding: y = bf16(w * bf16(x * r)), r in fp32.
#pragma once

#include <cmath>
#include <cstddef>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/tensor.hpp"

namespace tmoe::reference {

template <class WT>
void rms_norm(MatrixView<const float> x, const WT* w, MatrixView<float> y, float eps,
              bool hf_bf16 = false) {
  const std::size_t n = x.cols();
  for (std::size_t t = 0; t < x.rows(); ++t) {
    double ss = 0;
    for (std::size_t i = 0; i < n; ++i) ss += double(x(t, i)) * double(x(t, i));
    if (hf_bf16) {
      float ssf = 0;  // HF: fp32 mean of squares
      for (std::size_t i = 0; i < n; ++i) ssf += x(t, i) * x(t, i);
      const float r = 1.0f / std::sqrt(ssf / float(n) + eps);
      for (std::size_t i = 0; i < n; ++i)
        y(t, i) = round_to<bf16>(to_float(w[i]) * round_to<bf16>(x(t, i) * r));
      continue;
    }
    const double r = 1.0 / std::sqrt(ss / double(n) + double(eps));
    for (std::size_t i = 0; i < n; ++i)
      y(t, i) = float(double(to_float(w[i])) * double(x(t, i)) * r);
  }
}

template <class WT>
void layer_norm(MatrixView<const float> x, const WT* w, const WT* b, MatrixView<float> y,
                float eps) {
  const std::size_t n = x.cols();
  for (std::size_t t = 0; t < x.rows(); ++t) {
    double mean = 0, var = 0;
    for (std::size_t i = 0; i < n; ++i) mean += x(t, i);
    mean /= double(n);
    for (std::size_t i = 0; i < n; ++i) var += (x(t, i) - mean) * (x(t, i) - mean);
    const double r = 1.0 / std::sqrt(var / double(n) + double(eps));
    for (std::size_t i = 0; i < n; ++i)
      y(t, i) =
          float(double(to_float(w[i])) * (x(t, i) - mean) * r + (b ? double(to_float(b[i])) : 0.0));
  }
}

}  // namespace tmoe::reference
