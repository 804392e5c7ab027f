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
#pragma once

#include <concepts>
#include <cstddef>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/backend/cpu/ops.hpp"
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

 private:
  weight_view w_ = empty_view<weight_view>();
  const float* bias_ = nullptr;
};

}  // namespace tmoe
