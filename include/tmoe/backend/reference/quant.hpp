// tmoe/backend/reference/quant.hpp: scalar ground truth for the quantized kernels.
//
//   quantize_act(x, n, out):       Q8 activation blocks (d = max|x| / 127, q = round_half_even
//                                  (x * (1/d)), zero padded); the CPU kernels must match bit for
//                                  bit.
//   matmul_quant(W, X, Y):         Y = X dequant(W)^T in double from the float X (the exact product
//                                  of the stored weights).
//   matmul_quant_q8act(W, X, Y):   the same with X replaced by its Q8 blocks (d * q), i.e. what
//                                  the integer-format CPU kernels compute up to float rounding.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "tmoe/core/tensor.hpp"
#include "tmoe/quant/formats.hpp"

namespace tmoe::reference {

inline void quantize_act(const float* x, std::size_t n, quant::BlockQ8Act* out) {
  for (std::size_t b = 0; b * 32 < n; ++b) {
    float amax = 0;
    for (std::size_t j = b * 32; j < std::min(n, b * 32 + 32); ++j)
      amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    quant::BlockQ8Act& a = out[b];
    a.d = d;
    a.sum[0] = a.sum[1] = 0;
    for (std::size_t j = 0; j < 32; ++j) {
      const float v = b * 32 + j < n ? x[b * 32 + j] : 0.f;
      const int q = static_cast<int>(std::nearbyint(v * id));
      a.qs[j] = static_cast<std::int8_t>(q);
      a.sum[j / 16] = static_cast<std::int16_t>(a.sum[j / 16] + q);
    }
  }
}

template <quant::QuantFormat F>
void matmul_quant(const quant::QuantMatrixView<F>& w, MatrixView<const float> x,
                  MatrixView<float> y) {
  std::vector<float> row(w.cols);
  for (std::size_t o = 0; o < w.rows; ++o) {
    quant::dequantize_row(w, o, row.data());
    for (std::size_t t = 0; t < x.rows(); ++t) {
      double s = 0;
      for (std::size_t i = 0; i < w.cols; ++i) s += double(row[i]) * double(x(t, i));
      y(t, o) = static_cast<float>(s);
    }
  }
}

template <quant::QuantFormat F>
void matmul_quant_q8act(const quant::QuantMatrixView<F>& w, MatrixView<const float> x,
                        MatrixView<float> y) {
  const std::size_t nq = (w.cols + 31) / 32;
  std::vector<quant::BlockQ8Act> q(nq);
  std::vector<float> xq(nq * 32);
  Matrix<float> xd(x.rows(), w.cols);  // (T, in) dequantized activations
  for (std::size_t t = 0; t < x.rows(); ++t) {
    quantize_act(&x(t, 0), w.cols, q.data());
    for (std::size_t i = 0; i < w.cols; ++i) xd(t, i) = q[i / 32].d * q[i / 32].qs[i % 32];
  }
  matmul_quant<F>(w, xd.cview(), y);
}

}  // namespace tmoe::reference
