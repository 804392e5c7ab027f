// tmoe/backend/reference/rope.hpp: scalar ground truth for the rotary embedding. Angles are the
// HF fp32 product float(p) * inv_freq_i (tmoe::rope_frequencies); cos, sin and the rotation in
// double, rounded to float once.
#pragma once

#include <cmath>
#include <cstddef>

#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/rope.hpp"

namespace tmoe::reference {

inline void apply_rope(const RopeConfig& cfg, MatrixView<float> x, std::size_t n_heads,
                       std::size_t head_stride, std::size_t offset, std::size_t pos0) {
  const RopeFrequencies f = rope_frequencies(cfg);
  for (std::size_t t = 0; t < x.rows(); ++t)
    for (std::size_t h = 0; h < n_heads; ++h) {
      float* v = x.row(t) + h * head_stride + offset;
      for (std::size_t i = 0; i < cfg.dim / 2; ++i) {
        const float angle = static_cast<float>(pos0 + t) * f.inv_freq[i];
        const double c = std::cos(double(angle)) * f.attention_factor;
        const double s = std::sin(double(angle)) * f.attention_factor;
        std::size_t ia, ib;
        rope_pair_index(cfg.layout, cfg.dim, i, ia, ib);
        const double a = v[ia], b = v[ib];
        v[ia] = float(a * c - b * s);
        v[ib] = float(a * s + b * c);
      }
    }
}

}  // namespace tmoe::reference
