// Decode GEMV (bf16 and FP8 block-scaled weights) against a double-precision CPU reference.
//
// Bound, per output row o: |y_o - ref_o| <= 1e-5 * sum_i |W_oi x_i|. The reference uses exactly
// the stored weights (bf16 / dequantized fp8 with its block scale) and activations; the GPU sums
// in fp32, whose error is a small multiple of 2^-24 times that absolute sum. A wrong index, a
// missed tail or a wrong scale block is off by O(1) of it.
#include <string>

#include "cuda_test_util.hpp"

using namespace tmoe;

namespace {

struct Shape {
  std::size_t out, in, ldw;
};

// Sizes: DeepSeek's (partial 128-row blocks at 576 rows), odd rows, tails of the 16-byte
// loop, 128-column blocks cut short, padded rows, and shapes that take the element-wise kernel.
const Shape kShapes[] = {{576, 7168, 7168}, {2048, 7168, 7168}, {7168, 2048, 2048},
                         {129, 208, 208},   {37, 1552, 1552},   {5, 4096, 4112},
                         {301, 131, 131},   {64, 200, 203},     {1, 16, 16}};

template <class X>
std::vector<X> make_x(std::size_t n, std::uint64_t seed) {
  return test::rounded<X>(test::random_floats(n, seed, -2.f, 2.f));
}

void check_rows(const std::vector<float>& y, const std::vector<double>& ref,
                const std::vector<double>& abs_sum, const std::string& what) {
  std::vector<double> bound(abs_sum.size());
  for (std::size_t i = 0; i < bound.size(); ++i) bound[i] = 1e-5 * abs_sum[i] + 1e-30;
  const double r = test::worst_ratio(y, ref, bound);
  INFO(what, ": worst |y - ref| / bound = ", r);
  CHECK(r <= 1.0);
}

// Random e4m3 weights: every finite pattern (subnormals included), never a NaN.
void fill_e4m3(std::vector<f8_e4m3>& w, std::mt19937_64& rng) {
  for (auto& v : w) {
    std::uint8_t b;
    do b = std::uint8_t(rng());
    while ((b & 0x7f) == 0x7f);  // no NaN patterns
    v = f8_e4m3::from_bits(b);
  }
}

template <class X>
void run_bf16(const Shape& s, std::uint64_t seed) {
  const auto w = test::rounded<bf16>(test::random_floats(s.out * s.ldw, seed, -1.f, 1.f));
  const auto x = make_x<X>(s.in, seed + 1);
  std::vector<double> ref(s.out), abs_sum(s.out);
  for (std::size_t o = 0; o < s.out; ++o)
    for (std::size_t i = 0; i < s.in; ++i) {
      const double p = double(to_float(w[o * s.ldw + i])) * double(to_float(x[i]));
      ref[o] += p;
      abs_sum[o] += std::abs(p);
    }
  auto dw = test::to_device(w);
  auto dx = test::to_device(x);
  auto dy = test::poisoned<float>(s.out);
  cuda::gemv_bf16(dw.data(), s.ldw, dx.data(), dy.data(), s.out, s.in);
  check_rows(test::to_host(dy), ref, abs_sum,
             "bf16 " + std::to_string(s.out) + "x" + std::to_string(s.in));
}

template <class X>
void run_fp8(const Shape& s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<f8_e4m3> w(s.out * s.ldw);
  fill_e4m3(w, rng);
  const std::size_t rb = (s.out + 127) / 128, cb = (s.in + 127) / 128;
  // DeepSeek-like scales: max|w| / 448 for weights of magnitude ~1e-2..1, spread over blocks.
  auto scale = test::random_floats(rb * cb, seed + 2, 1e-5f, 3e-3f);
  const auto x = make_x<X>(s.in, seed + 1);
  std::vector<double> ref(s.out), abs_sum(s.out);
  for (std::size_t o = 0; o < s.out; ++o)
    for (std::size_t i = 0; i < s.in; ++i) {
      const double wv = double(to_float(w[o * s.ldw + i])) * scale[(o / 128) * cb + i / 128];
      const double p = wv * double(to_float(x[i]));
      ref[o] += p;
      abs_sum[o] += std::abs(p);
    }
  auto dw = test::to_device(w);
  auto ds = test::to_device(scale);
  auto dx = test::to_device(x);
  auto dy = test::poisoned<float>(s.out);
  cuda::gemv_fp8_block(dw.data(), s.ldw, ds.data(), dx.data(), dy.data(), s.out, s.in);
  check_rows(test::to_host(dy), ref, abs_sum,
             "fp8 " + std::to_string(s.out) + "x" + std::to_string(s.in));
}

}  // namespace

TEST_CASE("cuda gemv bf16 weights, float and bf16 activations") {
  std::uint64_t seed = 100;
  for (const Shape& s : kShapes) {
    CAPTURE(s.out);
    CAPTURE(s.in);
    CAPTURE(s.ldw);
    run_bf16<float>(s, seed++);
    run_bf16<bf16>(s, seed++);
  }
}

TEST_CASE("cuda gemv fp8 e4m3 weights with 128x128 block scales") {
  std::uint64_t seed = 200;
  for (const Shape& s : kShapes) {
    CAPTURE(s.out);
    CAPTURE(s.in);
    CAPTURE(s.ldw);
    run_fp8<float>(s, seed++);
    run_fp8<bf16>(s, seed++);
  }
}

TEST_CASE("cuda gemv fp8: every e4m3 value (subnormals included) decodes exactly") {
  // One row per byte value b: w[b, i] = b for all i, scale 1, x = e_0 + ...: y_b = sum_i x_i * b.
  const std::size_t out = 256, in = 128;
  std::vector<f8_e4m3> w(out * in);
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t i = 0; i < in; ++i) w[o * in + i] = f8_e4m3::from_bits(std::uint8_t(o));
  std::vector<float> x(in, 0.f), scale(2, 1.f);
  x[5] = 1.f;  // y_b = value of b exactly
  auto dw = test::to_device(w);
  auto ds = test::to_device(scale);
  auto dx = test::to_device(x);
  auto dy = test::poisoned<float>(out);
  cuda::gemv_fp8_block(dw.data(), in, ds.data(), dx.data(), dy.data(), out, in);
  const auto y = test::to_host(dy);
  for (std::size_t b = 0; b < out; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN patterns: not weights
    CAPTURE(b);
    CHECK(y[b] == f8_e4m3::from_bits(std::uint8_t(b)).to_float());
  }
}

namespace {

// Gathered GEMVs: `batch` of a pool of experts (repeats allowed), x shared or one per GEMV.
template <class W>
void run_gather(std::size_t out, std::size_t in, bool x_per, std::uint64_t seed) {
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  const std::size_t pool = 6, ldw = in, per = out * ldw;
  const std::vector<std::int32_t> idx = {3, 0, 5, 3, 1};
  const std::size_t batch = idx.size();
  std::vector<W> w(pool * per);
  std::mt19937_64 rng(seed);
  if constexpr (kFp8) {
    fill_e4m3(w, rng);
  } else {
    w = test::rounded<bf16>(test::random_floats(pool * per, seed, -1.f, 1.f));
  }
  const std::size_t rb = (out + 127) / 128, cb = (in + 127) / 128;
  const auto scale = test::random_floats(pool * rb * cb, seed + 1, 1e-5f, 3e-3f);
  const std::size_t x_stride = x_per ? in : 0;
  const auto x =
      test::rounded<bf16>(test::random_floats(x_per ? batch * in : in, seed + 2, -2.f, 2.f));
  std::vector<double> ref(batch * out), abs_sum(batch * out);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t i = 0; i < in; ++i) {
        const std::size_t e = std::size_t(idx[b]);
        double wv = to_float(w[e * per + o * ldw + i]);
        if constexpr (kFp8) wv *= scale[e * rb * cb + (o / 128) * cb + i / 128];
        const double p = wv * to_float(x[b * x_stride + i]);
        ref[b * out + o] += p;
        abs_sum[b * out + o] += std::abs(p);
      }
  auto dw = test::to_device(w);
  auto ds = test::to_device(scale);
  auto dx = test::to_device(x);
  auto di = test::to_device(idx);
  auto dy = test::poisoned<float>(batch * out);
  if constexpr (kFp8)
    cuda::gemv_fp8_block_gather(dw.data(), ldw, per, ds.data(), rb * cb, di.data(), batch,
                                dx.data(), x_stride, dy.data(), out, in);
  else
    cuda::gemv_bf16_gather(dw.data(), ldw, per, di.data(), batch, dx.data(), x_stride, dy.data(),
                           out, in);
  check_rows(test::to_host(dy), ref, abs_sum, std::string(kFp8 ? "fp8" : "bf16") + " gather");
}

}  // namespace

TEST_CASE("cuda gemv gather: several experts of a pool in one launch") {
  std::uint64_t seed = 500;
  for (const Shape& s : {Shape{256, 7168, 7168}, Shape{130, 208, 208}, Shape{37, 131, 131}})
    for (bool x_per : {false, true}) {
      CAPTURE(s.out);
      CAPTURE(s.in);
      CAPTURE(x_per);
      run_gather<bf16>(s.out, s.in, x_per, seed++);
      run_gather<f8_e4m3>(s.out, s.in, x_per, seed++);
    }
}

namespace {

// The normed GEMV (cuda::NormedX): h = h_in + delta in float (bit-exact, stored to h_out), x =
// h * rsqrt(mean(h^2) + eps) * gamma, y = W x. The reference computes x in double from the
// float h; the GPU's x differs by a few float roundings per element (relative ~1e-6), inside the
// GEMV bound 1e-5 * sum_i |W_oi x_i| (SwiGLU: the bound of the swiglu test above).
template <class W>
void run_normed(std::size_t out, std::size_t in, bool with_delta, bool swiglu, std::uint64_t seed) {
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  const std::size_t rows = swiglu ? 2 * out : out;
  std::vector<W> w(rows * in);
  std::mt19937_64 rng(seed);
  if constexpr (kFp8) {
    fill_e4m3(w, rng);
  } else if constexpr (std::is_same_v<W, bf16>) {
    w = test::rounded<bf16>(test::random_floats(rows * in, seed, -1.f, 1.f));
  } else {
    w = test::random_floats(rows * in, seed, -1.f, 1.f);
  }
  const std::size_t rb = (rows + 127) / 128, cb = (in + 127) / 128;
  const auto scale = test::random_floats(rb * cb, seed + 1, 1e-3f, 3e-2f);
  const auto h_in = test::random_floats(in, seed + 2, -2.f, 2.f);
  const auto delta = test::random_floats(in, seed + 3, -1.f, 1.f);
  const auto gamma = test::random_floats(in, seed + 4, 0.5f, 1.5f);
  const float eps = 1e-6f;
  std::vector<float> h(in);
  double ss = 0;
  for (std::size_t i = 0; i < in; ++i) {
    h[i] = with_delta ? h_in[i] + delta[i] : h_in[i];
    ss += double(h[i]) * h[i];
  }
  const double r = 1.0 / std::sqrt(ss / double(in) + eps);
  std::vector<double> ref(rows), abs_sum(rows);
  for (std::size_t o = 0; o < rows; ++o)
    for (std::size_t i = 0; i < in; ++i) {
      double wv = to_float(w[o * in + i]);
      if constexpr (kFp8) wv *= scale[(o / 128) * cb + i / 128];
      const double p = wv * (h[i] * r * gamma[i]);
      ref[o] += p;
      abs_sum[o] += std::abs(p);
    }
  auto dw = test::to_device(w);
  auto ds = test::to_device(scale);
  auto dh = test::to_device(h_in), dd = test::to_device(delta), dg = test::to_device(gamma);
  auto dh_out = test::poisoned<float>(in);
  auto dy = test::poisoned<float>(out);
  const cuda::NormedX nx{dh.data(), with_delta ? dd.data() : nullptr,
                         with_delta ? dh_out.data() : nullptr, dg.data(), eps};
  const std::string what = std::string(kFp8                      ? "fp8"
                                       : std::is_same_v<W, bf16> ? "bf16"
                                                                 : "f32") +
                           (swiglu ? " swiglu " : " ") + std::to_string(out) + "x" +
                           std::to_string(in);
  if constexpr (kFp8) {
    cuda::gemv_fp8_block(dw.data(), in, ds.data(), nx, dy.data(), out, in);
  } else if constexpr (std::is_same_v<W, bf16>) {
    if (swiglu)
      cuda::gemv_swiglu_bf16(dw.data(), in, nx, dy.data(), out, in);
    else
      cuda::gemv_bf16(dw.data(), in, nx, dy.data(), out, in);
  } else {
    if (swiglu)
      cuda::gemv_swiglu_f32(dw.data(), in, nx, dy.data(), out, in);
    else
      cuda::gemv_f32(dw.data(), in, nx, dy.data(), out, in);
  }
  const auto y = test::to_host(dy);
  if (swiglu) {
    double worst = 0;
    for (std::size_t i = 0; i < out; ++i) {
      const double g = ref[2 * i], u = ref[2 * i + 1], sg = g / (1 + std::exp(-g));
      const double bound =
          2 * (1.1e-5 * abs_sum[2 * i] * std::abs(u) + std::abs(sg) * 1e-5 * abs_sum[2 * i + 1]) +
          1e-6 * std::abs(sg * u) + 1e-30;
      REQUIRE(std::isfinite(y[i]));
      worst = std::max(worst, std::abs(y[i] - sg * u) / bound);
    }
    INFO(what, ": worst error / bound ", worst);
    CHECK(worst <= 1.0);
  } else {
    check_rows(y, ref, abs_sum, what);
  }
  if (with_delta) {
    const auto ho = test::to_host(dh_out);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < in; ++i) wrong += ho[i] != h[i];
    INFO(what, ": h_out elements not equal to h_in + delta: ", wrong);
    CHECK(wrong == 0);
  }
}

}  // namespace

TEST_CASE("cuda gemv with the residual add + RMSNorm prologue (NormedX)") {
  std::uint64_t seed = 700;
  for (bool with_delta : {true, false}) {
    CAPTURE(with_delta);
    run_normed<bf16>(2048, 1536, with_delta, false, seed++);  // Qwen-1.5B q/k/v
    run_normed<bf16>(8960, 1536, with_delta, true, seed++);   // Qwen-1.5B gate/up + SwiGLU
    run_normed<bf16>(5, 10240, with_delta, false, seed++);    // the largest `in`
    run_normed<bf16>(301, 16, with_delta, false, seed++);     // tiny rows, odd row count
    run_normed<float>(129, 208, with_delta, false, seed++);
    run_normed<float>(37, 1552, with_delta, true, seed++);
    run_normed<f8_e4m3>(576, 7168, with_delta, false, seed++);  // R1 kv_a, partial row block
  }
  auto buf = test::to_device(std::vector<float>(10256, 1.f));
  auto wb = test::to_device(std::vector<bf16>(16 * 10256));
  const float* p = buf.data();
  CHECK_THROWS_WITH_AS(
      cuda::gemv_bf16(wb.data(), 10256, cuda::NormedX{p, nullptr, nullptr, p}, buf.data(), 16,
                      10256),
      doctest::Contains("[cuda::gemv_bf16] in: expected a multiple of 8 and at most 10240"),
      tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::gemv_bf16(wb.data(), 16, cuda::NormedX{p, p + 16, buf.data(), p + 32},
                                       buf.data() + 64, 16, 16),
                       doctest::Contains("x.h_out aliases x.h_in or x.delta"), tmoe::Error);
  CHECK_THROWS_WITH_AS(
      cuda::gemv_swiglu_bf16(wb.data(), 16, cuda::NormedX{p, p + 16, nullptr, p + 32},
                             buf.data() + 64, 4, 16),
      doctest::Contains("x.h_out is null"), tmoe::Error);
}

TEST_CASE("cuda q/k/v GEMV with the bias + RoPE + KV-cache epilogue (gemv_qkv_rope)") {
  // Logical (checkpoint) rows: [q heads | k heads | v heads], half-split RoPE pairs (i, i + D/2).
  // The kernel takes q and k rows in pair order and writes q (pair order) to y, k (pair order)
  // and v (as is) to the caches at pos. Reference in double from the same bf16 / float weights.
  // Bound per output: the GEMV bound of both rows of its pair (1e-5 of the absolute sums, the
  // rotation mixes two rows) plus 1e-6 of the pair's magnitude for sincosf.
  const std::size_t H = 3, Hkv = 1, D = 64, cap = 9;
  const std::int32_t pos = 7;
  const float attn_factor = 1.25f;
  for (std::size_t in : {std::size_t(256), std::size_t(1536)})
    for (int normed = 0; normed < 2; ++normed)
      for (int f32 = 0; f32 < 2; ++f32) {
        CAPTURE(in);
        CAPTURE(normed);
        CAPTURE(f32);
        const std::size_t rows = (H + 2 * Hkv) * D, paired = (H + Hkv) * D;
        auto wl = test::random_floats(rows * in, 900 + in + normed, -1.f, 1.f);
        if (!f32) wl = test::widened(test::rounded<bf16>(wl));
        const auto bias_l = test::random_floats(rows, 901, -0.5f, 0.5f);
        const auto x = test::random_floats(in, 902, -2.f, 2.f);
        const auto gamma = test::random_floats(in, 903, 0.5f, 1.5f);
        std::vector<float> inv_freq(D / 2);
        for (std::size_t i = 0; i < D / 2; ++i)
          inv_freq[i] = float(std::pow(10000.0, -2.0 * double(i) / double(D)));
        // x as the kernel sees it: plain, or RMS-normed (no delta) in double.
        std::vector<double> xe(in);
        double ss = 0;
        for (float v : x) ss += double(v) * v;
        const double r = 1.0 / std::sqrt(ss / double(in) + 1e-6);
        for (std::size_t i = 0; i < in; ++i) xe[i] = normed ? x[i] * r * gamma[i] : x[i];
        std::vector<double> raw(rows), abs_sum(rows);
        for (std::size_t o = 0; o < rows; ++o) {
          for (std::size_t i = 0; i < in; ++i) {
            raw[o] += double(wl[o * in + i]) * xe[i];
            abs_sum[o] += std::abs(double(wl[o * in + i]) * xe[i]);
          }
          raw[o] += bias_l[o];
        }
        // Physical (pair-ordered) weights and bias.
        std::vector<float> wp(rows * in), bias_p(rows);
        for (std::size_t o = 0; o < rows; ++o) {
          std::size_t from = o;
          if (o < paired) from = (o / D) * D + (o % D) / 2 + (o % 2) * (D / 2);
          std::copy(&wl[from * in], &wl[from * in] + in, &wp[o * in]);
          bias_p[o] = bias_l[from];
        }
        auto d_x = test::to_device(x), d_g = test::to_device(gamma);
        auto d_b = test::to_device(bias_p), d_f = test::to_device(inv_freq);
        auto d_pos = test::to_device(std::vector<std::int32_t>{pos});
        auto d_k = test::poisoned<float>(Hkv * cap * D), d_v = test::poisoned<float>(Hkv * cap * D);
        auto d_y = test::poisoned<float>(rows);
        const cuda::QkvRope rope{d_b.data(), d_k.data(),  d_v.data(), cap, d_pos.data(),
                                 d_f.data(), attn_factor, H,          Hkv, D};
        const cuda::NormedX nx{d_x.data(), nullptr, nullptr, d_g.data(), 1e-6f};
        if (f32) {
          auto d_w = test::to_device(wp);
          cuda::gemv_qkv_rope_f32(d_w.data(), in, d_x.data(), normed ? &nx : nullptr, rope,
                                  d_y.data(), in);
        } else {
          auto d_w = test::to_device(test::rounded<bf16>(wp));
          cuda::gemv_qkv_rope_bf16(d_w.data(), in, d_x.data(), normed ? &nx : nullptr, rope,
                                   d_y.data(), in);
        }
        const auto y = test::to_host(d_y), kc = test::to_host(d_k), vc = test::to_host(d_v);
        double worst = 0;
        for (std::size_t head = 0; head < H + 2 * Hkv; ++head)
          for (std::size_t i = 0; i < D / 2; ++i) {
            const std::size_t a = head * D + i, b = a + D / 2;
            const double bound_pair = 2e-5 * (abs_sum[a] + abs_sum[b]) +
                                      1e-6 * (std::abs(raw[a]) + std::abs(raw[b])) + 1e-30;
            if (head < H + Hkv) {
              const double ang = double(pos) * inv_freq[i];
              const double c = std::cos(ang) * attn_factor, s = std::sin(ang) * attn_factor;
              const double ra = raw[a] * c - raw[b] * s, rb = raw[a] * s + raw[b] * c;
              const float* got =
                  head < H ? &y[head * D + 2 * i] : &kc[((head - H) * cap + pos) * D + 2 * i];
              REQUIRE(std::isfinite(got[0]));
              REQUIRE(std::isfinite(got[1]));
              worst = std::max(worst, std::abs(got[0] - ra) / bound_pair);
              worst = std::max(worst, std::abs(got[1] - rb) / bound_pair);
            } else {
              const std::size_t g = head - H - Hkv;
              for (std::size_t j : {i, i + D / 2}) {
                const double got = vc[(g * cap + pos) * D + j];
                worst = std::max(worst, std::abs(got - raw[head * D + j]) /
                                            (1e-5 * abs_sum[head * D + j] + 1e-30));
              }
            }
          }
        INFO("worst error / bound ", worst);
        CHECK(worst <= 1.0);
        // Only position pos of the caches is written (the rest stays NaN, poisoned).
        std::size_t touched = 0;
        for (std::size_t p = 0; p < cap; ++p)
          if (p != std::size_t(pos))
            for (std::size_t j = 0; j < D; ++j)
              touched += !std::isnan(kc[p * D + j]) || !std::isnan(vc[p * D + j]);
        CHECK(touched == 0);
      }
}
