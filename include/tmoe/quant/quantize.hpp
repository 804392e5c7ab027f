// tmoe/quant/quantize.hpp: float32 / bf16 -> quantized weights, and an owner for the result.
//
// Q8_0, Q4_0, Q4_K and Q6_K follow the published definitions of llama.cpp's reference quantizers
// ("_ref", no importance matrix) step by step in float32, so they give the same bytes (as long as
// neither side contracts a*b+c into an FMA; tmoe's baseline build never does):
//   Q8_0: d = max|x| / 127, q = round_half_away(x * (1/d)).
//   Q4_0: m = the x of largest |x| (first one), d = m / -8, q = min(15, trunc(x * (1/d) + 8.5)).
//   Q4_K: per sub-block of 32, weights av + |x| (av = rms of the sub-block); (scale, min) by the
//         weighted least-squares search over iscale = (15 - 1 + 0.1 k) / (max - min), k = 0..20,
//         min clamped to <= 0; 6-bit scales/mins relative to the largest (d = max_scale / 63,
//         dmin = max_min / 63); codes recomputed from the stored f16 d, dmin.
//   Q6_K: per sub-block of 16, scale by the x^2-weighted search over iscale = -(32 + 0.1 k) / max,
//         k = -9..9 (max: the x of largest |x|); int8 scales relative to the largest |scale|
//         (d = -max_scale / 128); codes recomputed from the stored d.
// NF4: absmax per 64, q = the nearest code-book entry to x / absmax (ties to the lower entry).
// Int8Row: scale = max|x| / 127 per row, q = round_half_even(x * (127 / max|x|)).
// Fp8Block: per 128 x 128 tile, scale_inv = max|x| / 448 (0 for an all-zero tile),
//           q = e4m3(x / scale_inv) rounded to nearest even.
//
// Round-trip bounds |x - dequant(quant(x))| (tested in tests/quant/test_quantize.cpp):
//   Q8_0: <= amax_block * (1/254 + 2^-11)       Q4_0: <= amax_block * (1/8) * 1.01
//   Q4_K: <= range_sub / 28 + range_super / 40   (range = max(x, 0) - min(x, 0) of the sub-block
//         of 32 / the super-block of 256: 6-bit scales are relative to the super-block's largest)
//   Q6_K: <= amax_super-block / 64 * 1.1
//   NF4:  <= absmax_block * 0.1520 (half the widest code-book gap, -1 .. -0.696)
//   Int8Row: <= amax_row / 254 * (1 + 1e-6)
//   Fp8Block: <= |x| * 2^-4 + scale_inv * 2^-10
// Non-finite inputs throw tmoe::Error naming the op, the row and the column.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/quant/formats.hpp"

namespace tmoe::quant {

namespace detail {
// Round to nearest, ties to even, for |f| < 2^22: adding 1.5 * 2^23 leaves the integer in the
// low mantissa bits.
TMOE_INLINE int nearest_int(float f) {
  const float v = f + 12582912.f;
  return static_cast<int>(std::bit_cast<std::uint32_t>(v) & 0x007fffffu) - 0x00400000;
}

inline void check_finite(const float* x, std::size_t n, std::string_view op, std::size_t row,
                         std::size_t col0) {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) [[unlikely]]
      fail(op, "non-finite input ", x[i], " at row ", row, ", column ", col0 + i);
}

inline void quantize_block(const float* x, BlockQ8_0& y) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y.d = f16::from_float(d);
  for (int j = 0; j < 32; ++j) y.qs[j] = static_cast<std::int8_t>(std::round(x[j] * id));
}

inline void quantize_block(const float* x, BlockQ4_0& y) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -8.f;
  const float id = d != 0.f ? 1.0f / d : 0.0f;
  y.d = f16::from_float(d);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
    const int q1 = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
    y.qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
  }
}

// Weighted least-squares fit x ~= scale * L + min (L in 0..nmax, min <= 0) searched over
// nstep + 1 candidate inverse scales; returns scale and sets neg_min = -min.
inline float fit_scale_min(int n, int nmax, const float* x, const float* w, std::uint8_t* L,
                           float& neg_min, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    neg_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<std::uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * L[i] + min - x[i];
    best += w[i] * (diff * diff);
  }
  std::uint8_t aux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      aux[i] = static_cast<std::uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float s = (sum_w * sum_xl - sum_x * sum_l) / D;
      float m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (m > 0) {
        m = 0;
        s = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = s * aux[i] + m - x[i];
        err += w[i] * (diff * diff);
      }
      if (err < best) {
        std::copy(aux, aux + n, L);
        best = err;
        scale = s;
        min = m;
      }
    }
  }
  neg_min = -min;
  return scale;
}

inline void quantize_block(const float* x, BlockQ4_K& y) {
  std::uint8_t L[256];
  float w[32], scales[8], mins[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av + std::fabs(x[32 * j + l]);
    scales[j] = fit_scale_min(32, 15, x + 32 * j, w, L + 32 * j, mins[j], -1.f, 0.1f, 20);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(y.scales, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const int ls = std::min(
        63, static_cast<int>(static_cast<std::uint8_t>(nearest_int(inv_scale * scales[j]))));
    const int lm =
        std::min(63, static_cast<int>(static_cast<std::uint8_t>(nearest_int(inv_min * mins[j]))));
    if (j < 4) {
      y.scales[j] = static_cast<std::uint8_t>(ls);
      y.scales[j + 4] = static_cast<std::uint8_t>(lm);
    } else {
      y.scales[j + 4] = static_cast<std::uint8_t>((ls & 15) | ((lm & 15) << 4));
      y.scales[j - 4] |= static_cast<std::uint8_t>((ls >> 4) << 6);
      y.scales[j] |= static_cast<std::uint8_t>((lm >> 4) << 6);
    }
  }
  y.d = f16::from_float(max_scale / 63.f);
  y.dmin = f16::from_float(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    q4k_scale_min(y.scales, j, sc, m);
    const float d = y.d.to_float() * sc;
    if (d == 0.f) continue;
    const float dm = y.dmin.to_float() * m;
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] =
          static_cast<std::uint8_t>(std::clamp(nearest_int((x[32 * j + i] + dm) / d), 0, 15));
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      y.qs[32 * c + l] = static_cast<std::uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
}

// Symmetric x^2-weighted fit x ~= scale * l, l in [-nmax, nmax - 1], over 19 candidate scales;
// L gets l + nmax. Returns scale (negative when the largest-|x| element is positive).
inline float fit_scale_sym(int n, int nmax, const float* x, std::int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < 1e-15f) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<std::int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i)
        L[i] = static_cast<std::int8_t>(nmax +
                                        std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

inline void quantize_block(const float* x, BlockQ6_K& y) {
  std::int8_t L[256];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib);
    if (std::fabs(scales[ib]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  y = BlockQ6_K{};
  if (max_abs_scale < 1e-15f) return;  // all (near) zero: d = 0
  const float iscale = -128.f / max_scale;
  y.d = f16::from_float(1 / iscale);
  for (int ib = 0; ib < 16; ++ib)
    y.scales[ib] = static_cast<std::int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  for (int j = 0; j < 16; ++j) {
    const float d = y.d.to_float() * y.scales[j];
    if (d == 0.f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] =
          static_cast<std::int8_t>(std::clamp(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
  }
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int e = 128 * h + l;
      const int q1 = L[e], q2 = L[e + 32], q3 = L[e + 64], q4 = L[e + 96];
      y.ql[64 * h + l] = static_cast<std::uint8_t>((q1 & 15) | ((q3 & 15) << 4));
      y.ql[64 * h + l + 32] = static_cast<std::uint8_t>((q2 & 15) | ((q4 & 15) << 4));
      y.qh[32 * h + l] = static_cast<std::uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                                   ((q4 >> 4) << 6));
    }
}

// Index of the code-book entry nearest to v in [-1, 1] (ties to the lower entry).
inline int nf4_code(float v) {
  int q = 0;
  for (int i = 0; i < 15; ++i)
    if (v > 0.5f * (kNf4Codebook[i] + kNf4Codebook[i + 1])) q = i + 1;
  return q;
}

inline void quantize_block(const float* x, BlockNF4& y) {
  float amax = 0;
  for (int j = 0; j < 64; ++j) amax = std::max(amax, std::fabs(x[j]));
  y.absmax = amax;
  const float inv = amax > 0 ? 1.0f / amax : 0.0f;
  for (int j = 0; j < 32; ++j)
    y.qs[j] = static_cast<std::uint8_t>(nf4_code(x[j] * inv) | (nf4_code(x[j + 32] * inv) << 4));
}
}  // namespace detail

// Owner of a quantized matrix (blocks plus scales); hands out QuantMatrixView.
template <class F>
class QuantMatrix {
 public:
  using Block = typename F::Block;
  QuantMatrix() = default;
  QuantMatrix(std::size_t rows, std::size_t cols) : rows_(rows), cols_(cols) {
    check(cols % F::kBlockSize == 0, "QuantMatrix", F::kName, " needs columns divisible by ",
          F::kBlockSize, ", got ", cols);
    blocks_.resize(rows * (cols / F::kBlockSize));
    if constexpr (std::is_same_v<F, Int8Row>) scales_.resize(rows);
    if constexpr (std::is_same_v<F, Fp8Block>) {
      scale_stride_ = (cols + 127) / 128;
      scales_.resize(((rows + 127) / 128) * scale_stride_);
    }
  }
  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  // Writable blocks; drops the FP8 NaN check (nan_free) until the next repack().
  Block* blocks() {
    nan_free_ = false;
    return blocks_.data();
  }
  float* scales() { return scales_.data(); }
  QuantMatrixView<F> view() const {
    QuantMatrixView<F> v{blocks_.data(),
                         rows_,
                         cols_,
                         cols_ / F::kBlockSize,
                         scales_.empty() ? nullptr : scales_.data(),
                         scale_stride_};
    if constexpr (kRepackX8<F>)
      if (!packed_.empty()) v.packed = packed_.data();
    v.nan_free = nan_free_;
    return v;
  }
  // Prepares what the decode GEMV reads besides the blocks, from the current blocks; call again
  // after changing them. Q4_0 / Q8_0 / Q4_K: the 8-row interleaved copy (formats.hpp, repack_x8);
  // Fp8Block: the check that no weight is a NaN code (view().nan_free; no copy). No-op otherwise.
  void repack() {
    if constexpr (kRepackX8<F>) {
      QuantMatrixView<F> v = view();
      v.packed = nullptr;
      packed_.resize(repacked_x8_bytes(v));
      repack_x8(v, reinterpret_cast<typename RepackedX8<F>::Block*>(packed_.data()));
    }
    if constexpr (std::is_same_v<F, Fp8Block>) {
      std::size_t r, c;
      nan_free_ = !fp8_find_nan(view(), r, c);
    }
  }
  // Drops the interleaved copy (the kernels then read the blocks only).
  void drop_repacked() { packed_ = {}; }

 private:
  std::vector<Block> blocks_;      // (rows, cols / kBlockSize)
  std::vector<std::byte> packed_;  // 8-row interleaved copy (repack())
  std::vector<float> scales_;
  std::size_t rows_ = 0, cols_ = 0, scale_stride_ = 0;
  bool nan_free_ = false;  // Fp8Block: checked by repack()
};

// Quantizes the (rows, cols) row-major float matrix x (row stride ldx) to format F.
template <class F>
QuantMatrix<F> quantize(const float* x, std::size_t rows, std::size_t cols, std::size_t ldx) {
  const std::string op = "quantize_" + std::string(F::kName);
  check(cols % F::kBlockSize == 0, op, "row length ", cols, " is not a multiple of the block size ",
        F::kBlockSize);
  QuantMatrix<F> q(rows, cols);
  for (std::size_t r = 0; r < rows; ++r) detail::check_finite(x + r * ldx, cols, op, r, 0);
  if constexpr (std::is_same_v<F, Int8Row>) {
    for (std::size_t r = 0; r < rows; ++r) {
      const float* xr = x + r * ldx;
      float amax = 0;
      for (std::size_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(xr[c]));
      q.scales()[r] = amax / 127.f;
      const float id = amax > 0 ? 127.f / amax : 0.f;
      for (std::size_t c = 0; c < cols; ++c)
        q.blocks()[r * cols + c] =
            static_cast<std::int8_t>(std::clamp(detail::nearest_int(xr[c] * id), -127, 127));
    }
  } else if constexpr (std::is_same_v<F, Fp8Block>) {
    const std::size_t sc = (cols + 127) / 128;
    for (std::size_t rb = 0; rb < (rows + 127) / 128; ++rb)
      for (std::size_t cb = 0; cb < sc; ++cb) {
        const std::size_t r1 = std::min(rows, rb * 128 + 128), c1 = std::min(cols, cb * 128 + 128);
        float amax = 0;
        for (std::size_t r = rb * 128; r < r1; ++r)
          for (std::size_t c = cb * 128; c < c1; ++c)
            amax = std::max(amax, std::fabs(x[r * ldx + c]));
        const float s = amax / f8_e4m3::kMax;
        q.scales()[rb * sc + cb] = s;
        for (std::size_t r = rb * 128; r < r1; ++r)
          for (std::size_t c = cb * 128; c < c1; ++c)
            q.blocks()[r * cols + c] = f8_e4m3::from_float(s > 0 ? x[r * ldx + c] / s : 0.f);
      }
    q.repack();  // checks for NaN codes (there are none: |x / s| <= 448)
  } else {
    const std::size_t nb = cols / F::kBlockSize;
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t b = 0; b < nb; ++b)
        detail::quantize_block(x + r * ldx + b * F::kBlockSize, q.blocks()[r * nb + b]);
  }
  return q;
}

template <class F>
QuantMatrix<F> quantize(const float* x, std::size_t rows, std::size_t cols) {
  return quantize<F>(x, rows, cols, cols);
}

// bf16 input: widened to float exactly, then quantized.
template <class F>
QuantMatrix<F> quantize(const bf16* x, std::size_t rows, std::size_t cols) {
  std::vector<float> f(rows * cols);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = x[i].to_float();
  return quantize<F>(f.data(), rows, cols, cols);
}

// Repacks one bitsandbytes NF4 block (32 bytes, element 2i in the high nibble of byte i,
// element 2i+1 in the low nibble; absmax from its separate array) into BlockNF4.
inline BlockNF4 nf4_from_bitsandbytes(const std::uint8_t* packed, float absmax) {
  BlockNF4 b{absmax, {}};
  std::uint8_t code[64];
  for (int i = 0; i < 32; ++i) {
    code[2 * i] = packed[i] >> 4;
    code[2 * i + 1] = packed[i] & 15;
  }
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<std::uint8_t>(code[j] | (code[j + 32] << 4));
  return b;
}

}  // namespace tmoe::quant
