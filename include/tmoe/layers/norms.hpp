// tmoe/layers/norms.hpp: RMSNorm, LayerNorm (with or without bias), the hybrid
// LayerNorm-then-RMSNorm policy, and the fused residual-add + norm used between blocks.
//
// Activations are float32 rows (T, n); the weight (and bias) are views of n values in the
// checkpoint's type (float / bf16 / f16). Statistics are float32 (r = 1/sqrt(mean(x^2) + eps)),
// then y = w * (x * r), the Hugging Face order of operations (section 3 of r1-architecture.md).
// NormRounding::hf_bf16 additionally rounds like HF's bf16 module, y = bf16(w * bf16(x * r)),
// for parity experiments; the default keeps float32 (more accurate, not bit-equal to HF).
// Weights are non-owning: whoever loaded the model keeps them alive.
#pragma once

#include <cstddef>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/layers/linear.hpp"

namespace tmoe {

enum class NormKind { rms, layer };
enum class NormRounding { f32, hf_bf16 };

namespace detail {
inline void check_norm_io(std::string_view op, std::size_t n, MatrixView<const float> x,
                          MatrixView<float> y) {
  check(x.cols() == n, op, "x has ", x.cols(), " columns, the norm weight has ", n);
  check(y.rows() == x.rows() && y.cols() == n, op, "y is (", y.rows(), ", ", y.cols(),
        "), expected (", x.rows(), ", ", n, ")");
  check(x.stride(1) == 1 && y.stride(1) == 1, op, "rows of x and y must be contiguous");
}
}  // namespace detail

// A normalization layer of either kind; RMSNorm<WT> / LayerNorm<WT> below are its two faces.
template <class WT>
class Norm {
 public:
  Norm() = default;
  // RMSNorm with weight (n).
  static Norm rms(VectorView<const WT> weight, float eps,
                  NormRounding rounding = NormRounding::f32) {
    Norm m;
    m.kind_ = NormKind::rms, m.w_ = weight, m.eps_ = eps, m.rounding_ = rounding;
    return m;
  }
  // LayerNorm with weight (n) and optional bias (n, or an empty view for none).
  static Norm layer(VectorView<const WT> weight, VectorView<const WT> bias, float eps) {
    check(bias.empty() || bias.size() == weight.size(), "layer_norm", "bias has ", bias.size(),
          " values, weight has ", weight.size());
    Norm m;
    m.kind_ = NormKind::layer, m.w_ = weight, m.b_ = bias, m.eps_ = eps;
    return m;
  }

  NormKind kind() const { return kind_; }
  std::size_t dim() const { return w_.size(); }
  float eps() const { return eps_; }

  // y (T, n) = norm(x (T, n)); y may alias x. Rows are split over the pool.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k = cpu::kernels()) const {
    detail::check_norm_io(name(), dim(), x, y);
    pool.parallel_for(x.rows(), 4, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t t = b; t < e; ++t) row(k, x.row(t), y.row(t));
    });
  }

  // Fused residual add + norm: h (T, n) += r (T, n); y (T, n) = norm(h). y may not alias h.
  void add_forward(ThreadPool& pool, MatrixView<float> h, MatrixView<const float> r,
                   MatrixView<float> y, const cpu::KernelTable& k = cpu::kernels()) const {
    detail::check_norm_io(name(), dim(), h, y);
    check(r.rows() == h.rows() && r.cols() == h.cols() && r.stride(1) == 1, name(), "residual is (",
          r.rows(), ", ", r.cols(), "), expected (", h.rows(), ", ", h.cols(), ")");
    pool.parallel_for(h.rows(), 4, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t t = b; t < e; ++t) {
        k.vec.add(r.row(t), h.row(t), dim());
        row(k, h.row(t), y.row(t));
      }
    });
  }

  // One contiguous row (no checks; for layers that normalize inside their own loops).
  void row(const cpu::KernelTable& k, const float* x, float* y) const {
    if (kind_ == NormKind::rms)
      cpu::rms_norm_fn<WT>(k.norm)(x, w_.data(), y, dim(), eps_,
                                   rounding_ == NormRounding::hf_bf16);
    else
      cpu::layer_norm_fn<WT>(k.norm)(x, w_.data(), b_.empty() ? nullptr : b_.data(), y, dim(),
                                     eps_);
  }

 private:
  const char* name() const { return kind_ == NormKind::rms ? "rms_norm" : "layer_norm"; }
  NormKind kind_ = NormKind::rms;
  VectorView<const WT> w_ = empty_view<VectorView<const WT>>();
  VectorView<const WT> b_ = empty_view<VectorView<const WT>>();
  float eps_ = 1e-6f;
  NormRounding rounding_ = NormRounding::f32;
};

template <class WT>
struct RMSNorm : Norm<WT> {
  RMSNorm() = default;
  RMSNorm(VectorView<const WT> weight, float eps, NormRounding rounding = NormRounding::f32)
      : Norm<WT>(Norm<WT>::rms(weight, eps, rounding)) {}
};

template <class WT>
struct LayerNorm : Norm<WT> {
  LayerNorm() = default;
  LayerNorm(VectorView<const WT> weight, VectorView<const WT> bias, float eps)
      : Norm<WT>(Norm<WT>::layer(weight, bias, eps)) {}
};

// LayerNorm for layers [0, split), RMSNorm for layers >= split (split is a config value; 0 means
// RMSNorm everywhere, as in R1).
struct HybridNormPolicy {
  std::size_t split = 0;
  NormKind kind_for(std::size_t layer) const {
    return layer < split ? NormKind::layer : NormKind::rms;
  }
  template <class WT>
  Norm<WT> make(std::size_t layer, VectorView<const WT> weight, VectorView<const WT> bias,
                float eps) const {
    return kind_for(layer) == NormKind::layer ? Norm<WT>::layer(weight, bias, eps)
                                              : Norm<WT>::rms(weight, eps);
  }
};

}  // namespace tmoe
