// tmoe/layers/rope.hpp: rotary position embeddings: default, YaRN (exactly as DeepSeek-V3/R1),
// and Llama-3 frequency scaling; interleaved or half-split layouts; rotation of a sub-range of
// each head; cached cos/sin tables.
//
// Frequencies (section 5 of r1-architecture.md), all in float32 like Hugging Face:
//   default: inv_freq_i = 1 / theta^(2i/D), i = 0..D/2-1
//   yarn:    cd(r) = D ln(L0 / (2 pi r)) / (2 ln theta); low = max(floor(cd(beta_fast)), 0),
//            high = min(ceil(cd(beta_slow)), D-1) (in D units, while the ramp index i runs over
//            D/2: R1's quirk, reproduced on purpose); ramp_i = clamp((i-low)/(high-low), 0, 1);
//            inv_freq_i = f_i (1 - ramp_i) + (f_i / s) ramp_i, f_i the default frequency.
//            cos/sin are multiplied by attention_factor = mscale(s, mscale) / mscale(s,
//            mscale_all_dim) (plain mscale(s, 1) if neither is set), mscale(s, m) = 0.1 m ln s + 1;
//            attention scales its softmax by softmax_scale_factor = mscale(s, mscale_all_dim)^2.
//   llama3:  wavelength 2 pi / f_i; > L0/low_freq_factor: f_i / s; < L0/high_freq_factor: f_i;
//            between: blend with smooth = (L0/wavelen - low_ff) / (high_ff - low_ff).
// Angle at position p: theta_i(p) = float(p) * inv_freq_i (one fp32 product, as HF; never an
// incremental rotation). Tables hold cos/sin of that angle times attention_factor, (P, D/2).
//
// Layouts over the D rotated dims of a head (x starting at the head's rope offset):
//   interleaved (GPT-J / DeepSeek checkpoints): pairs (x[2i], x[2i+1])
//   half_split  (NeoX / HF Qwen2, Llama):       pairs (x[i], x[i + D/2])
//   (a, b) -> (a cos_i - b sin_i, a sin_i + b cos_i)
// DeepSeek's HF code de-interleaves then rotates half-split; rotating the checkpoint's interleaved
// pairs directly gives the same dot products (q and k, and every cached k, use one layout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numbers>
#include <string_view>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"

namespace tmoe {

enum class RopeType { plain, yarn, llama3 };
enum class RopeLayout { interleaved, half_split };

struct RopeConfig {
  RopeType type = RopeType::plain;
  RopeLayout layout = RopeLayout::half_split;
  std::size_t dim = 128;                     // rotated dims D (R1: qk_rope_head_dim = 64)
  float theta = 10000.f;                     // rope_theta
  float factor = 1.f;                        // yarn / llama3 scaling factor s
  std::size_t original_max_position = 4096;  // L0
  float beta_fast = 32.f, beta_slow = 1.f;   // yarn
  float mscale = 0.f, mscale_all_dim = 0.f;  // yarn; 0 = not set in config.json
  bool truncate = true;                      // yarn: floor/ceil low/high (HF default)
  float low_freq_factor = 1.f, high_freq_factor = 4.f;  // llama3
  // plain: per-frequency divisors (GGUF rope_freqs.weight, D/2 values): f_i = theta^(-2i/D) / ff_i
  std::vector<float> freq_factors;
};

struct RopeFrequencies {
  std::vector<float> inv_freq;       // (D/2)
  float attention_factor = 1.f;      // multiplies cos and sin
  float softmax_scale_factor = 1.f;  // multiplies the attention softmax scale (yarn mscale^2)
  float yarn_low = 0.f, yarn_high = 0.f;
};

inline float yarn_get_mscale(float s, float m) {
  return s <= 1.f ? 1.f : 0.1f * m * std::log(s) + 1.f;
}

// The frequency table and scale factors of cfg, in float32 like HF.
inline RopeFrequencies rope_frequencies(const RopeConfig& cfg) {
  check(cfg.dim >= 2 && cfg.dim % 2 == 0, "rope", "rotary dim must be even and >= 2, got ",
        cfg.dim);
  const std::size_t half = cfg.dim / 2;
  const float D = static_cast<float>(cfg.dim);
  RopeFrequencies f;
  f.inv_freq.resize(half);
  std::vector<float> pos_freq(half);
  for (std::size_t i = 0; i < half; ++i)
    pos_freq[i] = std::pow(cfg.theta, static_cast<float>(2 * i) / D);
  for (std::size_t i = 0; i < half; ++i) f.inv_freq[i] = 1.0f / pos_freq[i];
  if (cfg.type == RopeType::yarn) {
    check(cfg.factor > 0.f, "rope", "yarn factor must be positive, got ", cfg.factor);
    const double two_pi = 2.0 * std::numbers::pi;
    auto cd = [&](float r) {
      return static_cast<float>(D * std::log(double(cfg.original_max_position) / (r * two_pi)) /
                                (2.0 * std::log(double(cfg.theta))));
    };
    float low = cd(cfg.beta_fast), high = cd(cfg.beta_slow);
    if (cfg.truncate) low = std::floor(low), high = std::ceil(high);
    low = std::max(low, 0.f);
    high = std::min(high, D - 1.f);
    f.yarn_low = low, f.yarn_high = high;
    if (low == high) high += 0.001f;
    for (std::size_t i = 0; i < half; ++i) {
      const float ramp = std::clamp((static_cast<float>(i) - low) / (high - low), 0.f, 1.f);
      const float extra = 1.0f / pos_freq[i], inter = 1.0f / (cfg.factor * pos_freq[i]);
      f.inv_freq[i] = inter * ramp + extra * (1.f - ramp);
    }
    if (cfg.mscale != 0.f && cfg.mscale_all_dim != 0.f)
      f.attention_factor =
          yarn_get_mscale(cfg.factor, cfg.mscale) / yarn_get_mscale(cfg.factor, cfg.mscale_all_dim);
    else
      f.attention_factor = yarn_get_mscale(cfg.factor, 1.f);
    if (cfg.mscale_all_dim != 0.f) {
      const float m = yarn_get_mscale(cfg.factor, cfg.mscale_all_dim);
      f.softmax_scale_factor = m * m;
    }
  } else if (cfg.type == RopeType::plain && !cfg.freq_factors.empty()) {
    check(cfg.freq_factors.size() == half, "rope", "expected ", half, " frequency factors, got ",
          cfg.freq_factors.size());
    for (std::size_t i = 0; i < half; ++i) {
      check(cfg.freq_factors[i] > 0.f, "rope", "frequency factor ", i, " must be positive, got ",
            cfg.freq_factors[i]);
      f.inv_freq[i] = f.inv_freq[i] / cfg.freq_factors[i];
    }
  } else if (cfg.type == RopeType::llama3) {
    const float low_wl = float(cfg.original_max_position) / cfg.low_freq_factor;
    const float high_wl = float(cfg.original_max_position) / cfg.high_freq_factor;
    for (auto& inv : f.inv_freq) {
      const float wl = 2.f * std::numbers::pi_v<float> / inv;
      if (wl > low_wl) {
        inv = inv / cfg.factor;
      } else if (wl >= high_wl) {
        const float smooth = (float(cfg.original_max_position) / wl - cfg.low_freq_factor) /
                             (cfg.high_freq_factor - cfg.low_freq_factor);
        inv = (1.f - smooth) * inv / cfg.factor + smooth * inv;
      }
    }
  }
  return f;
}

// Pair (a, b) of rotated dim i, for either layout.
inline void rope_pair_index(RopeLayout layout, std::size_t dim, std::size_t i, std::size_t& a,
                            std::size_t& b) {
  if (layout == RopeLayout::interleaved)
    a = 2 * i, b = 2 * i + 1;
  else
    a = i, b = i + dim / 2;
}

class Rope {
 public:
  Rope() = default;
  // Tables for positions [0, max_positions).
  Rope(const RopeConfig& cfg, std::size_t max_positions)
      : cfg_(cfg),
        freq_(rope_frequencies(cfg)),
        max_pos_(max_positions),
        cos_(max_positions * cfg.dim / 2),
        sin_(max_positions * cfg.dim / 2) {
    const std::size_t half = cfg.dim / 2;
    for (std::size_t p = 0; p < max_positions; ++p)
      for (std::size_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * freq_.inv_freq[i];
        cos_[p * half + i] = std::cos(angle) * freq_.attention_factor;
        sin_[p * half + i] = std::sin(angle) * freq_.attention_factor;
      }
  }

  const RopeConfig& config() const { return cfg_; }
  const RopeFrequencies& frequencies() const { return freq_; }
  std::size_t dim() const { return cfg_.dim; }
  std::size_t max_positions() const { return max_pos_; }
  const float* cos_row(std::size_t p) const { return cos_.data() + p * (cfg_.dim / 2); }
  const float* sin_row(std::size_t p) const { return sin_.data() + p * (cfg_.dim / 2); }

  // Rotates, for every row t of x and head h in [0, n_heads), the dims
  // x[t, h * head_stride + offset + (0..D)] at position pos0 + t.
  void apply(MatrixView<float> x, std::size_t n_heads, std::size_t head_stride, std::size_t offset,
             std::size_t pos0) const {
    check(pos0 + x.rows() <= max_pos_, "rope", "position ", pos0 + x.rows() - 1,
          " is beyond the table of ", max_pos_, " positions");
    check(n_heads == 0 || (n_heads - 1) * head_stride + offset + cfg_.dim <= x.cols(), "rope",
          "rotary range of ", n_heads, " heads (stride ", head_stride, ", offset ", offset,
          ", dim ", cfg_.dim, ") exceeds the row width ", x.cols());
    for (std::size_t t = 0; t < x.rows(); ++t)
      for (std::size_t h = 0; h < n_heads; ++h)
        rotate(x.row(t) + h * head_stride + offset, pos0 + t);
  }

  // Rotates D dims starting at v in place, at position p (no checks).
  void rotate(float* v, std::size_t p) const {
    const std::size_t half = cfg_.dim / 2;
    const float* c = cos_row(p);
    const float* s = sin_row(p);
    if (cfg_.layout == RopeLayout::interleaved) {
      for (std::size_t i = 0; i < half; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c[i] - b * s[i];
        v[2 * i + 1] = a * s[i] + b * c[i];
      }
    } else {
      for (std::size_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = a * s[i] + b * c[i];
      }
    }
  }

 private:
  RopeConfig cfg_{};
  RopeFrequencies freq_{};
  std::size_t max_pos_ = 0;
  std::vector<float> cos_, sin_;  // (max_positions, D/2)
};

// Reserves T positions in an attention cache (KvCache, MlaCache: reserve / truncate) and checks
// that the rope table reaches them; on failure the cache is left as it was. Returns the first.
template <class Cache>
std::size_t reserve_positions(Cache& cache, std::size_t T, const Rope& rope, std::string_view op) {
  const std::size_t pos0 = cache.reserve(T, op);
  if (pos0 + T > rope.max_positions()) {
    cache.truncate(pos0);
    fail(op, "position ", pos0 + T - 1, " is beyond the rope table of ", rope.max_positions());
  }
  return pos0;
}

}  // namespace tmoe
