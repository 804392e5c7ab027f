// Norms and RoPE against their references, on every ISA and weight type; the R1 YaRN self-checks
// of r1-architecture.md section 12. Bounds are stated per check.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "layer_test_util.hpp"
#include "tmoe/backend/reference/norms.hpp"
#include "tmoe/backend/reference/rope.hpp"
#include "tmoe/layers/norms.hpp"
#include "tmoe/layers/rope.hpp"

using namespace tmoe;

namespace {
constexpr double kEps = std::numeric_limits<float>::epsilon();
}

TEST_CASE_TEMPLATE("RMSNorm and LayerNorm match the reference on every ISA", WT, float, bf16, f16) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t n : {1u, 7u, 16u, 33u, 100u, 257u}) {
      const std::size_t T = 3;
      auto x = test::random_matrix<float>(T, n, n, -3.f, 3.f);
      auto w = test::random_vector<WT>(n, n + 1, 0.5f, 1.5f);
      auto b = test::random_vector<WT>(n, n + 2);
      Matrix<float> y(T, n), r(T, n);
      // Bound: float32 statistics over n values, (n + 8) eps relative to the row's scale.
      const double bound = (double(n) + 8) * kEps;
      RMSNorm<WT> rms(w.cview(), 1e-6f);
      rms.forward(pool, x.cview(), y.view(), k);
      reference::rms_norm<WT>(x.cview(), w.data(), r.view(), 1e-6f);
      CHECK(test::rel_error(y.cview(), r.cview()) <= bound);
      for (bool with_bias : {false, true}) {
        LayerNorm<WT> ln(w.cview(), with_bias ? b.cview() : empty_view<VectorView<const WT>>(),
                         1e-5f);
        ln.forward(pool, x.cview(), y.view(), k);
        reference::layer_norm<WT>(x.cview(), w.data(), with_bias ? b.data() : nullptr, r.view(),
                                  1e-5f);
        CHECK(test::rel_error(y.cview(), r.cview()) <= 2 * bound);
      }
      // HF bf16 rounding: every output is a bf16 value within one bf16 ulp of the reference's
      // (the fp32 sum of squares may round differently in SIMD order).
      RMSNorm<WT> hf(w.cview(), 1e-6f, NormRounding::hf_bf16);
      hf.forward(pool, x.cview(), y.view(), k);
      reference::rms_norm<WT>(x.cview(), w.data(), r.view(), 1e-6f, true);
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t i = 0; i < n; ++i) {
          CHECK(round_to<bf16>(y(t, i)) == y(t, i));
          CHECK(std::abs(y(t, i) - r(t, i)) <= std::abs(r(t, i)) * 0x1p-7 + 1e-30);
        }
    }
  });
}

TEST_CASE("fused residual add + RMSNorm equals add then norm") {
  ThreadPool pool(2);
  const std::size_t T = 4, n = 45;
  auto h = test::random_matrix<float>(T, n, 1), r = test::random_matrix<float>(T, n, 2);
  auto w = test::random_vector<bf16>(n, 3);
  Matrix<float> h2 = h.clone(), y(T, n), want(T, n);
  RMSNorm<bf16> norm(w.cview(), 1e-6f);
  norm.add_forward(pool, h.view(), r.cview(), y.view());
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t i = 0; i < n; ++i) h2(t, i) += r(t, i);
  CHECK(test::rel_error(h.cview(), h2.cview()) == 0.0);
  reference::rms_norm<bf16>(h2.cview(), w.data(), want.view(), 1e-6f);
  CHECK(test::rel_error(y.cview(), want.cview()) <= (n + 8) * kEps);
}

TEST_CASE("hybrid norm policy: LayerNorm below the split, RMSNorm from it") {
  HybridNormPolicy p{3};
  CHECK(p.kind_for(0) == NormKind::layer);
  CHECK(p.kind_for(2) == NormKind::layer);
  CHECK(p.kind_for(3) == NormKind::rms);
  auto w = test::random_vector<float>(8, 1);
  CHECK(p.make<float>(5, w.cview(), empty_view<VectorView<const float>>(), 1e-6f).kind() ==
        NormKind::rms);
  CHECK(p.make<float>(1, w.cview(), empty_view<VectorView<const float>>(), 1e-6f).kind() ==
        NormKind::layer);
  CHECK(HybridNormPolicy{}.kind_for(0) == NormKind::rms);
}

TEST_CASE("norm shape errors name the op") {
  ThreadPool pool(1);
  auto w = test::random_vector<float>(8, 1);
  Matrix<float> x(2, 7), y(2, 7);
  CHECK_THROWS_WITH(RMSNorm<float>(w.cview(), 1e-6f).forward(pool, x.cview(), y.view()),
                    "[rms_norm] x has 7 columns, the norm weight has 8");
}

namespace {
RopeConfig r1_rope() {
  RopeConfig c;
  c.type = RopeType::yarn;
  c.layout = RopeLayout::interleaved;
  c.dim = 64;
  c.theta = 10000.f;
  c.factor = 40.f;
  c.original_max_position = 4096;
  c.beta_fast = 32.f, c.beta_slow = 1.f, c.mscale = 1.f, c.mscale_all_dim = 1.f;
  return c;
}
}  // namespace

TEST_CASE("YaRN frequencies reproduce R1's self-check values") {
  const RopeFrequencies f = rope_frequencies(r1_rope());
  CHECK(f.yarn_low == 10.f);
  CHECK(f.yarn_high == 23.f);
  // r1-architecture.md 5.1 table (fp64; fp32 agrees to ~1e-7 relative). Bound 1e-6 relative.
  const double table[32] = {
      1.0,         0.7498942,   0.5623413,   0.4216965,   0.3162278,   0.2371374,   0.1778279,
      0.1333521,   0.1,         0.07498942,  0.05623413,  0.03900693,  0.02687936,  0.01837815,
      0.01244796,  8.334509e-3, 5.5e-3,      3.561997e-3, 2.249365e-3, 1.370514e-3, 7.905694e-4,
      4.149904e-4, 1.778279e-4, 3.333804e-5, 2.5e-5,      1.874736e-5, 1.405853e-5, 1.054241e-5,
      7.905694e-6, 5.928434e-6, 4.445699e-6, 3.333804e-6};
  for (int i = 0; i < 32; ++i) CHECK(std::abs(f.inv_freq[i] / table[i] - 1.0) <= 1e-6);
  CHECK(std::abs(f.inv_freq[8] / 0.1 - 1.0) <= 1e-7);
  CHECK(f.attention_factor == 1.f);
  const double scale = 1.0 / std::sqrt(192.0) * f.softmax_scale_factor;
  CHECK(std::abs(scale / 0.13523378 - 1.0) <= 1e-6);
}

TEST_CASE("default and llama3 frequencies") {
  RopeConfig c;
  c.dim = 128;
  const auto d = rope_frequencies(c);
  for (int i = 0; i < 64; ++i)
    CHECK(std::abs(d.inv_freq[i] / std::pow(10000.0, -2.0 * i / 128) - 1.0) <= 4e-7);
  c.type = RopeType::llama3;
  c.theta = 500000.f, c.factor = 8.f, c.original_max_position = 8192;
  c.low_freq_factor = 1.f, c.high_freq_factor = 4.f;
  const auto l = rope_frequencies(c);
  int low = 0, mid = 0, high = 0;
  for (int i = 0; i < 64; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 128), wl = 2 * std::numbers::pi / f;
    double want = f;
    if (wl > 8192)
      want = f / 8, ++low;
    else if (wl >= 2048) {
      const double s = (8192 / wl - 1) / 3;
      want = (1 - s) * f / 8 + s * f, ++mid;
    } else
      ++high;
    CHECK(std::abs(l.inv_freq[i] / want - 1.0) <= 2e-6);
  }
  CHECK((low > 0 && mid > 0 && high > 0));  // all three regimes are exercised
  CHECK(l.attention_factor == 1.f);
}

TEST_CASE("Rope::apply matches the reference for both layouts, sub-ranges and offsets") {
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    RopeConfig c = r1_rope();
    c.layout = layout;
    const Rope rope(c, 5000);
    // 3 heads of width 96 = [32 untouched ; 64 rotated], 4 tokens from position 4090.
    const std::size_t H = 3, W = 96, T = 4;
    auto x = test::random_matrix<float>(T, H * W, 11);
    Matrix<float> y = x.clone(), r = x.clone();
    rope.apply(y.view(), H, W, 32, 4090);
    reference::apply_rope(c, r.view(), H, W, 32, 4090);
    // Bound: fp32 cos/sin and two products: 4 eps of the pair's magnitude.
    CHECK(test::rel_error(y.cview(), r.cview()) <= 8 * kEps);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t i = 0; i < 32; ++i) CHECK(y(t, h * W + i) == x(t, h * W + i));
  }
}

TEST_CASE("HF's de-interleave + half-split equals interleaved rotation, permuted") {
  RopeConfig c = r1_rope();
  const Rope inter(c, 100);
  c.layout = RopeLayout::half_split;
  const Rope half(c, 100);
  auto x = test::random_matrix<float>(1, 64, 5);
  Matrix<float> a = x.clone(), b(1, 64);
  for (int j = 0; j < 32; ++j) b(0, j) = x(0, 2 * j), b(0, 32 + j) = x(0, 2 * j + 1);
  inter.apply(a.view(), 1, 64, 0, 77);
  half.apply(b.view(), 1, 64, 0, 77);
  for (int j = 0; j < 32; ++j) {
    CHECK(a(0, 2 * j) == b(0, j));
    CHECK(a(0, 2 * j + 1) == b(0, 32 + j));
  }
}

TEST_CASE("Rope rejects positions beyond its table") {
  RopeConfig c;
  c.dim = 64;
  const Rope rope(c, 8);
  Matrix<float> x(2, 64);
  CHECK_THROWS_WITH(rope.apply(x.view(), 1, 64, 0, 7),
                    "[rope] position 8 is beyond the table of 8 positions");
}
