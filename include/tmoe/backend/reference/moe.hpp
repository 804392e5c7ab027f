// tmoe/backend/reference/moe.hpp: scalar ground truth for the SwiGLU MLP and the MoE block:
// every dot product in double; y = sum_k w_k E_k(x) + sum_s S_s(x) summed in double.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/backend/reference/router.hpp"

namespace tmoe::reference {

template <class WT>
struct MlpWeights {
  MatrixView<const WT> gate, up, down;  // (I, d), (I, d), (d, I)
};

// y (T, d) = down(silu(gate x) * up x), intermediate kept in double.
template <class WT>
void swiglu_mlp(const MlpWeights<WT>& m, MatrixView<const float> x, MatrixView<double> y) {
  const std::size_t I = m.gate.rows(), d = m.gate.cols();
  std::vector<double> h(I);
  for (std::size_t t = 0; t < x.rows(); ++t) {
    for (std::size_t i = 0; i < I; ++i) {
      double g = 0, u = 0;
      for (std::size_t c = 0; c < d; ++c) {
        g += double(to_float(m.gate(i, c))) * x(t, c);
        u += double(to_float(m.up(i, c))) * x(t, c);
      }
      h[i] = g / (1.0 + std::exp(-g)) * u;
    }
    for (std::size_t o = 0; o < d; ++o) {
      double s = 0;
      for (std::size_t i = 0; i < I; ++i) s += double(to_float(m.down(o, i))) * h[i];
      y(t, o) = s;
    }
  }
}

template <class WT>
void swiglu_mlp(const MlpWeights<WT>& m, MatrixView<const float> x, MatrixView<float> y) {
  Tensor<double> yd(x.rows(), y.cols());
  swiglu_mlp(m, x, yd.view());
  for (std::size_t t = 0; t < x.rows(); ++t)
    for (std::size_t o = 0; o < y.cols(); ++o) y(t, o) = float(yd(t, o));
}

template <class WT>
void moe(const RouterConfig& cfg, MatrixView<const WT> gate, const float* bias,
         const std::vector<MlpWeights<WT>>& experts, const std::vector<MlpWeights<WT>>& shared,
         MatrixView<const float> x, MatrixView<float> y) {
  const std::size_t T = x.rows(), d = x.cols(), K = cfg.top_k;
  Matrix<std::int32_t> idx(T, K);
  Matrix<float> w(T, K);
  router<WT>(cfg, gate, bias, x, idx.view(), w.view());
  Tensor<double> acc(DExtents<2>(T, d), 0.0), one(std::size_t{1}, d);
  for (std::size_t t = 0; t < T; ++t) {
    MatrixView<const float> xt(x.row(t), 1, d);
    for (std::size_t j = 0; j < K; ++j) {
      swiglu_mlp(experts[std::size_t(idx(t, j))], xt, one.view());
      for (std::size_t c = 0; c < d; ++c) acc(t, c) += double(w(t, j)) * one(0, c);
    }
    for (const auto& s : shared) {
      swiglu_mlp(s, xt, one.view());
      for (std::size_t c = 0; c < d; ++c) acc(t, c) += one(0, c);
    }
  }
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t c = 0; c < d; ++c) y(t, c) = float(acc(t, c));
}

}  // namespace tmoe::reference
