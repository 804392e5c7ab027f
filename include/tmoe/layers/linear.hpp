// tmoe/layers/linear.hpp: Linear<Format>: y (T, out) = x (T, in) W^T + bias, with W stored
// [out, in] as in PyTorch checkpoints, x and y float32.
//
// The weight format is a template parameter reached through LinearTraits<Format>:
//   weight_view                the non-owning view type of the weight
//   out_features(w) / in_features(w)
//   matmul(pool, w, x, y, bias, kernels)
// float, bf16 and f16 are specialized here (tmoe::cpu::matmul). A quantized block format plugs in
// by specializing LinearTraits<Q> next to its type (weight_view = its block view,
// matmul = cpu::matmul_quant<Q>); Linear, SwigluMlp, MoE and the attention layers then accept it
// unchanged. The LinearFormat concept names the requirement.
// Optional traits: matmul_acts(pool, w, acts, y, kernels) (the product over activations quantized
// once, cpu::Q8Acts) and reads_q8_acts(w) (whether w's kernels read those Q8 blocks); with them,
// SharedQ8Input quantizes an x read by several matrices (q/k/v, gate/up) once per decode step.
#pragma once

#include <concepts>
#include <cstddef>
#include <initializer_list>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/backend/cpu/ops.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"

namespace tmoe {

template <class Format>
struct LinearTraits;  // specialize for each weight format

// An empty view of type V: TensorView's dynamic extents have no default value, so layers build
// their unset views through this (nullptr data, zero extents).
template <class V>
V empty_view() {
  if constexpr (requires { V(nullptr, std::size_t{0}, std::size_t{0}); })
    return V(nullptr, std::size_t{0}, std::size_t{0});
  else if constexpr (requires { V(nullptr, std::size_t{0}); })
    return V(nullptr, std::size_t{0});
  else
    return V{};
}

template <class WT>
requires(std::is_same_v<WT, float> || std::is_same_v<WT, bf16> ||
         std::is_same_v<WT, f16>) struct LinearTraits<WT> {
  using weight_view = MatrixView<const WT>;  // (out, in), rows contiguous
  static std::size_t out_features(const weight_view& w) { return w.rows(); }
  static std::size_t in_features(const weight_view& w) { return w.cols(); }
  // Optional: rows [begin, begin + count) as a weight of the same format (lets MoE split experts
  // into row blocks that run as independent work items).
  static weight_view slice_rows(const weight_view& w, std::size_t begin, std::size_t count) {
    return w.row_range(begin, count);
  }
  static void matmul(ThreadPool& pool, const weight_view& w, MatrixView<const float> x,
                     MatrixView<float> y, const float* bias, const cpu::KernelTable& k) {
    cpu::matmul<WT>(pool, w, x, y, bias, k);
  }
};

template <class F>
concept LinearFormat = requires(ThreadPool& pool, const typename LinearTraits<F>::weight_view& w,
                                MatrixView<const float> x, MatrixView<float> y,
                                const cpu::KernelTable& k) {
  { LinearTraits<F>::out_features(w) } -> std::convertible_to<std::size_t>;
  { LinearTraits<F>::in_features(w) } -> std::convertible_to<std::size_t>;
  LinearTraits<F>::matmul(pool, w, x, y, static_cast<const float*>(nullptr), k);
};

template <LinearFormat F>
class Linear {
 public:
  using traits = LinearTraits<F>;
  using weight_view = typename traits::weight_view;

  Linear() = default;
  // weight (out, in); bias: out floats or nullptr. Both must outlive the layer.
  explicit Linear(weight_view weight, const float* bias = nullptr) : w_(weight), bias_(bias) {}

  std::size_t out_features() const { return traits::out_features(w_); }
  std::size_t in_features() const { return traits::in_features(w_); }
  const weight_view& weight() const { return w_; }
  const float* bias() const { return bias_; }

  // y (T, out) = x (T, in) W^T + bias.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k = cpu::kernels()) const {
    traits::matmul(pool, w_, x, y, bias_, k);
  }

  // Whether the weight's kernels read Q8-quantized activations (traits::reads_q8_acts).
  bool reads_q8_acts() const {
    if constexpr (requires { traits::reads_q8_acts(w_); })
      return traits::reads_q8_acts(w_);
    else
      return false;
  }
  // forward() over x already quantized (a = cpu::Q8Acts::acts() of x); only for formats with
  // traits::matmul_acts and reads_q8_acts(). Bit-identical to forward(pool, x, y, k).
  void forward_acts(ThreadPool& pool, const cpu::QuantActs& a, MatrixView<float> y,
                    const cpu::KernelTable& k = cpu::kernels()) const {
    if constexpr (requires { traits::matmul_acts(pool, w_, a, y, k); }) {
      traits::matmul_acts(pool, w_, a, y, k);
      if (bias_)
        for (std::size_t t = 0; t < y.rows(); ++t)
          for (std::size_t o = 0; o < y.cols(); ++o) y(t, o) += bias_[o];
    } else {
      fail("linear", "forward_acts needs a format with matmul_acts");
    }
  }

 private:
  weight_view w_ = empty_view<weight_view>();
  const float* bias_ = nullptr;
};

// Several Linears reading the same x (attention's q/k/v, the MLP's gate/up): prepare() quantizes x
// once (cpu::Q8Acts) when T is decode-sized (< cpu::kQuantGemmMinT, where the quantized matmul
// runs its GEMV kernels) and one of the weights reads Q8 activations; forward() then runs those
// weights on the shared blocks (Linear::forward_acts) and the others on x. Results are
// bit-identical to Linear::forward: the per-matrix path quantizes the same x the same way.
// Owns its buffers (one prepare/forward sequence at a time).
class SharedQ8Input {
 public:
  template <LinearFormat F>
  void prepare(ThreadPool& pool, MatrixView<const float> x,
               std::initializer_list<const Linear<F>*> users,
               const cpu::KernelTable& k = cpu::kernels()) {
    on_ = false;
    if (x.rows() >= cpu::kQuantGemmMinT || x.stride(1) != 1) return;
    for (const Linear<F>* l : users) on_ = on_ || l->reads_q8_acts();
    if (on_) acts_.quantize(pool, x, k);
  }
  template <LinearFormat F>
  void forward(ThreadPool& pool, const Linear<F>& l, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k = cpu::kernels()) const {
    if (on_ && l.reads_q8_acts() && acts_.cols() == l.in_features() && acts_.rows() == x.rows())
      l.forward_acts(pool, acts_.acts(), y, k);
    else
      l.forward(pool, x, y, k);
  }

 private:
  cpu::Q8Acts acts_;
  bool on_ = false;
};

}  // namespace tmoe
