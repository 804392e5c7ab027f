// tmoe/layers/mlp.hpp: the SwiGLU MLP of every R1-family model (dense layers, shared and routed
// experts): y = down( silu(gate(x)) * up(x) ), no biases, gate/up (inter, d), down (d, inter).
// Intermediate activations are float32 (HF rounds silu(gate) and the product to bf16; see
// pitfall 18 in r1-architecture.md). forward() uses a per-layer scratch buffer, so one layer
// object runs one forward at a time.
#pragma once

#include <cstddef>

#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/linear.hpp"

namespace tmoe {

template <LinearFormat F>
class SwigluMlp {
 public:
  using weight_view = typename LinearTraits<F>::weight_view;

  SwigluMlp() = default;
  SwigluMlp(weight_view gate, weight_view up, weight_view down)
      : gate_(gate), up_(up), down_(down) {
    check(gate_.out_features() == up_.out_features() && gate_.in_features() == up_.in_features(),
          "swiglu_mlp", "gate (", gate_.out_features(), ", ", gate_.in_features(), ") and up (",
          up_.out_features(), ", ", up_.in_features(), ") differ");
    check(
        down_.in_features() == gate_.out_features() && down_.out_features() == gate_.in_features(),
        "swiglu_mlp", "down is (", down_.out_features(), ", ", down_.in_features(), "), expected (",
        gate_.in_features(), ", ", gate_.out_features(), ")");
  }

  std::size_t hidden() const { return gate_.in_features(); }
  std::size_t intermediate() const { return gate_.out_features(); }
  const Linear<F>& gate() const { return gate_; }
  const Linear<F>& up() const { return up_; }
  const Linear<F>& down() const { return down_; }

  // y (T, d) = down(silu(gate(x)) * up(x)); x (T, d). y must not alias x.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k = cpu::kernels()) const {
    const std::size_t T = x.rows(), I = intermediate();
    if (g_.rows() < T || g_.cols() != I) g_ = Matrix<float>(T, I), u_ = Matrix<float>(T, I);
    auto g = g_.view().row_range(0, T), u = u_.view().row_range(0, T);
    xq_.prepare(pool, x, {&gate_, &up_}, k);  // decode: x quantized once for both
    xq_.forward(pool, gate_, x, g, k);
    xq_.forward(pool, up_, x, u, k);
    pool.parallel_for(T * I, 4096, [&](std::size_t b, std::size_t e, int) {
      // rows are contiguous and packed, so the (T, I) block is one flat range
      k.vec.silu_mul(g.data() + b, u.data() + b, g.data() + b, e - b);
    });
    down_.forward(pool, g, y, k);
  }

 private:
  Linear<F> gate_, up_, down_;
  mutable SharedQ8Input xq_;
  mutable Matrix<float> g_{std::size_t{0}, std::size_t{0}},
      u_{std::size_t{0}, std::size_t{0}};  // (T, inter) scratch
};

}  // namespace tmoe
