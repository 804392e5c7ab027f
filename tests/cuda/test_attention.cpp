// The decoder kernels of the CUDA backend against the CPU reference (backend/reference):
// the q/k/v epilogue (bias + RoPE + KV-cache store) and flash-decoding GQA attention, embedding,
// argmax, the float GEMV and the cuBLAS prefill GEMMs. Inputs are fresh random values; outputs are
// poisoned (NaN) first and must come back finite.
// Bounds: attention output and cache contents within 1e-5 absolute (values and v in [-1, 1], so
// |out| <= 1: fp32 online softmax against the reference's double softmax); GEMV / GEMM rows within
// 1e-5 * sum_i |W x| of a double-precision sum over the same stored values; embedding and argmax
// exact.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_test_util.hpp"
#include "tmoe/backend/cuda/api.hpp"
#include "tmoe/backend/reference/attention.hpp"
#include "tmoe/backend/reference/rope.hpp"

using namespace tmoe;
using tmoe::test::poisoned;
using tmoe::test::random_floats;
using tmoe::test::to_device;
using tmoe::test::to_host;

namespace {

struct AttnCase {
  std::size_t H, Hkv, D, T, rope_dim;
};

// Runs T tokens of random q/k/v (with bias) at positions 0..T-1 through gqa_qkv_store and
// gqa_attention (every token a query), and compares with reference::apply_rope +
// reference::attention.
void check_attention(const AttnCase& c, std::size_t n_split, std::uint64_t seed) {
  const std::size_t H = c.H, Hkv = c.Hkv, D = c.D, T = c.T, cap = T + 5;
  const std::size_t ld = (H + 2 * Hkv) * D;
  auto qkv = random_floats(T * ld, seed);
  auto bias = random_floats(ld, seed + 1, -0.5f, 0.5f);
  RopeConfig rc;
  rc.dim = c.rope_dim;
  rc.layout = tmoe::RopeLayout::half_split;
  rc.theta = 10000.f;
  const RopeFrequencies f = rope_frequencies(rc);

  // Reference: bias, RoPE on q and k, causal attention.
  Matrix<float> q(T, H * D), k(T, Hkv * D), v(T, Hkv * D), want(T, H * D);
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t i = 0; i < ld; ++i) {
      const float x = qkv[t * ld + i] + bias[i];
      if (i < H * D)
        q(t, i) = x;
      else if (i < (H + Hkv) * D)
        k(t, i - H * D) = x;
      else
        v(t, i - (H + Hkv) * D) = x;
    }
  reference::apply_rope(rc, q.view(), H, D, 0, 0);
  reference::apply_rope(rc, k.view(), Hkv, D, 0, 0);
  const float scale = 1.0f / std::sqrt(float(D));
  reference::attention(q.view(), k.view(), v.view(), H, Hkv, D, D, 0, scale, want.view());

  std::vector<std::int32_t> pos(T);
  for (std::size_t t = 0; t < T; ++t) pos[t] = std::int32_t(t);
  auto d_qkv = to_device(qkv);
  auto d_bias = to_device(bias);
  auto d_pos = to_device(pos);
  auto d_freq = to_device(f.inv_freq);
  auto d_k = poisoned<float>(Hkv * cap * D), d_v = poisoned<float>(Hkv * cap * D);
  auto d_out = poisoned<float>(T * H * D);
  cuda::DeviceBuffer<float> ws(
      std::max<std::size_t>(1, cuda::gqa_attention_workspace(T, H, D, n_split)));
  cuda::gqa_qkv_store(d_qkv.data(), ld, d_bias.data(), d_k.data(), d_v.data(), cap, d_pos.data(), T,
                      H, Hkv, D, c.rope_dim, d_freq.data(), f.attention_factor,
                      cuda::RopeLayout::half_split);
  cuda::gqa_attention(d_qkv.data(), ld, d_k.data(), d_v.data(), cap, d_pos.data(), T, H, Hkv, D,
                      scale, d_out.data(), H * D, n_split, ws.data());
  const auto out = to_host(d_out);
  const auto kc = to_host(d_k), vc = to_host(d_v);
  const auto qr = to_host(d_qkv);  // q roped in place
  double worst = 0, worst_cache = 0;
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t i = 0; i < H * D; ++i) {
      REQUIRE(std::isfinite(out[t * H * D + i]));
      worst = std::max(worst, std::abs(double(out[t * H * D + i]) - want(t, i)));
      worst_cache = std::max(worst_cache, std::abs(double(qr[t * ld + i]) - q(t, i)));
    }
    for (std::size_t g = 0; g < Hkv; ++g)
      for (std::size_t i = 0; i < D; ++i) {
        const float kg = kc[(g * cap + t) * D + i], vg = vc[(g * cap + t) * D + i];
        REQUIRE(std::isfinite(kg));
        worst_cache = std::max(worst_cache, std::abs(double(kg) - k(t, g * D + i)));
        worst_cache = std::max(worst_cache, std::abs(double(vg) - v(t, g * D + i)));
      }
  }
  INFO("H " << H << " Hkv " << Hkv << " D " << D << " T " << T << " split " << n_split
            << ": attention err " << worst << ", q/k/v err " << worst_cache);
  CHECK(worst <= 1e-5);
  CHECK(worst_cache <= 1e-5);
}

double dot_abs(const float* w, const float* x, std::size_t n, double& sum_abs) {
  double s = 0;
  sum_abs = 0;
  for (std::size_t i = 0; i < n; ++i) {
    s += double(w[i]) * double(x[i]);
    sum_abs += std::abs(double(w[i]) * double(x[i]));
  }
  return s;
}

}  // namespace

TEST_CASE("GQA q/k/v epilogue and flash-decoding attention match the reference") {
  // Qwen2-1.5B heads (12/2 of 128), the fixtures' 64-wide heads, a 16-head group (two head
  // blocks), MHA with 256-wide heads, partial rotary dims.
  const AttnCase cases[] = {{12, 2, 128, 37, 128},
                            {4, 2, 64, 11, 64},
                            {16, 1, 64, 20, 64},
                            {4, 4, 256, 9, 256},
                            {6, 3, 128, 70, 64}};
  std::uint64_t seed = 100;
  for (const auto& c : cases)
    for (std::size_t split : {1, 3, 16, 128}) check_attention(c, split, seed++);
}

TEST_CASE("decode attention reads the position from device memory") {
  // One query at position P against a cache filled by an earlier prefill: same answer as the
  // reference's last row, for several P with one captured set of arguments.
  const std::size_t H = 12, Hkv = 2, D = 128, P = 300, cap = 512, ld = (H + 2 * Hkv) * D;
  const auto qkv = random_floats((P + 1) * ld, 7);
  RopeConfig rc;
  rc.dim = D;
  const RopeFrequencies f = rope_frequencies(rc);
  std::vector<std::int32_t> pos(P + 1);
  for (std::size_t t = 0; t <= P; ++t) pos[t] = std::int32_t(t);
  auto d_qkv = to_device(qkv);
  auto d_pos = to_device(pos);
  auto d_freq = to_device(f.inv_freq);
  auto d_k = poisoned<float>(Hkv * cap * D), d_v = poisoned<float>(Hkv * cap * D);
  cuda::gqa_qkv_store(d_qkv.data(), ld, nullptr, d_k.data(), d_v.data(), cap, d_pos.data(), P + 1,
                      H, Hkv, D, D, d_freq.data(), 1.f, cuda::RopeLayout::half_split);
  const auto roped = to_host(d_qkv);
  const float scale = 1.0f / std::sqrt(float(D));
  const std::size_t split = 64;
  cuda::DeviceBuffer<float> ws(cuda::gqa_attention_workspace(1, H, D, split));
  cuda::DeviceBuffer<std::int32_t> d_p(1);
  auto d_out = poisoned<float>(H * D);
  const auto kc = to_host(d_k), vc = to_host(d_v);
  for (std::size_t p :
       {std::size_t(0), std::size_t(1), std::size_t(63), std::size_t(64), std::size_t(129), P}) {
    const std::int32_t pi = std::int32_t(p);
    d_p.upload(&pi);
    cuda::gqa_attention(d_qkv.data() + p * ld, ld, d_k.data(), d_v.data(), cap, d_p.data(), 1, H,
                        Hkv, D, scale, d_out.data(), H * D, split, ws.data());
    const auto out = to_host(d_out);
    Matrix<float> q(1, H * D), k(p + 1, Hkv * D), v(p + 1, Hkv * D), want(1, H * D);
    for (std::size_t i = 0; i < H * D; ++i) q(0, i) = roped[p * ld + i];
    for (std::size_t j = 0; j <= p; ++j)
      for (std::size_t g = 0; g < Hkv; ++g)
        for (std::size_t i = 0; i < D; ++i) {
          k(j, g * D + i) = kc[(g * cap + j) * D + i];
          v(j, g * D + i) = vc[(g * cap + j) * D + i];
        }
    // reference::attention is causal from row 0: put the query in the last row of p + 1 rows.
    Matrix<float> qs(p + 1, H * D), all(p + 1, H * D);
    for (std::size_t i = 0; i < H * D; ++i) qs(p, i) = q(0, i);
    reference::attention(qs.view(), k.view(), v.view(), H, Hkv, D, D, 0, scale, all.view());
    double worst = 0;
    for (std::size_t i = 0; i < H * D; ++i) {
      REQUIRE(std::isfinite(out[i]));
      worst = std::max(worst, std::abs(double(out[i]) - all(p, i)));
    }
    INFO("position " << p << ": err " << worst);
    CHECK(worst <= 1e-5);

    // The fused decode kernel from the raw (unroped) projection row, with position p of the
    // caches poisoned: it must store k and v there and give the same attention.
    auto d_k2 = to_device(kc), d_v2 = to_device(vc);
    for (std::size_t g = 0; g < Hkv; ++g) {
      cuda::fill_bytes(d_k2.data() + (g * cap + p) * D, 0xff, D * sizeof(float));
      cuda::fill_bytes(d_v2.data() + (g * cap + p) * D, 0xff, D * sizeof(float));
    }
    auto d_raw = to_device(std::vector<float>(qkv.begin() + p * ld, qkv.begin() + (p + 1) * ld));
    auto d_out2 = poisoned<float>(H * D);
    cuda::gqa_decode_attention(d_raw.data(), nullptr, d_k2.data(), d_v2.data(), cap, d_p.data(), H,
                               Hkv, D, d_freq.data(), 1.f, scale, d_out2.data(), split, ws.data());
    const auto out2 = to_host(d_out2);
    const auto kc2 = to_host(d_k2), vc2 = to_host(d_v2);
    double worst2 = 0, worst_cache = 0;
    for (std::size_t i = 0; i < H * D; ++i) {
      REQUIRE(std::isfinite(out2[i]));
      worst2 = std::max(worst2, std::abs(double(out2[i]) - all(p, i)));
    }
    for (std::size_t g = 0; g < Hkv; ++g)
      for (std::size_t i = 0; i < D; ++i) {
        const std::size_t at = (g * cap + p) * D + i;
        REQUIRE(std::isfinite(kc2[at]));
        worst_cache = std::max(worst_cache, double(std::abs(kc2[at] - kc[at])));
        worst_cache = std::max(worst_cache, double(std::abs(vc2[at] - vc[at])));
      }
    INFO("fused decode at position " << p << ": err " << worst2 << ", cache err " << worst_cache);
    CHECK(worst2 <= 1e-5);
    CHECK(worst_cache <= 1e-5);
  }
}

TEST_CASE("attention and epilogue reject bad arguments with one-line errors") {
  CHECK_THROWS_WITH_AS(cuda::gqa_attention(nullptr, 96, nullptr, nullptr, 8, nullptr, 1, 2, 1, 48,
                                           1.f, nullptr, 96, 1, nullptr),
                       doctest::Contains("[cuda::gqa_attention] head_dim"), tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::gqa_attention(nullptr, 384, nullptr, nullptr, 8, nullptr, 1, 3, 2, 128,
                                           1.f, nullptr, 384, 1, nullptr),
                       doctest::Contains("multiple of Hkv"), tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::gqa_qkv_store(nullptr, 10, nullptr, nullptr, nullptr, 8, nullptr, 1, 2,
                                           1, 64, 64, nullptr, 1.f, cuda::RopeLayout::half_split),
                       doctest::Contains("[cuda::gqa_qkv_store] ld"), tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::argmax(nullptr, 2, 10, nullptr, reinterpret_cast<std::int32_t*>(16)),
                       doctest::Contains("advance needs rows == 1"), tmoe::Error);
}

TEST_CASE("embedding lookup and argmax") {
  const std::size_t V = 1000, dim = 200;
  const auto table = random_floats(V * dim, 11);
  const auto table_b = test::rounded<bf16>(table);
  const std::vector<std::int32_t> toks = {5, 999, 0, 5, 421};
  auto d_table = to_device(table);
  auto d_table_b = to_device(table_b);
  auto d_tok = to_device(toks);
  auto d_out = poisoned<float>(toks.size() * dim), d_out_b = poisoned<float>(toks.size() * dim);
  cuda::embedding(d_table.data(), dim, d_tok.data(), toks.size(), d_out.data());
  cuda::embedding(d_table_b.data(), dim, d_tok.data(), toks.size(), d_out_b.data());
  const auto out = to_host(d_out), out_b = to_host(d_out_b);
  for (std::size_t t = 0; t < toks.size(); ++t)
    for (std::size_t i = 0; i < dim; ++i) {
      REQUIRE(out[t * dim + i] == table[std::size_t(toks[t]) * dim + i]);
      REQUIRE(out_b[t * dim + i] == to_float(table_b[std::size_t(toks[t]) * dim + i]));
    }

  // Rows of a 151936-wide vocabulary with a planted maximum (twice: the first index wins).
  const std::size_t W = 151936, rows = 3;
  auto logits = random_floats(rows * W, 12, -5.f, 5.f);
  const std::size_t at[rows] = {7, 151935, 80000};
  for (std::size_t r = 0; r < rows; ++r) logits[r * W + at[r]] = 9.f;
  logits[2 * W + 90000] = 9.f;  // a tie after row 2's first maximum
  auto d_logits = to_device(logits);
  auto d_idx = poisoned<std::int32_t>(rows);
  cuda::argmax(d_logits.data(), rows, W, d_idx.data());
  const auto idx = to_host(d_idx);
  for (std::size_t r = 0; r < rows; ++r) CHECK(idx[r] == std::int32_t(at[r]));
  // The two-phase (workspace) version, also on a row shorter than its 128 blocks.
  cuda::DeviceBuffer<std::byte> ws(cuda::argmax_workspace(rows));
  auto d_idx2 = poisoned<std::int32_t>(rows);
  cuda::argmax(d_logits.data(), rows, W, d_idx2.data(), nullptr, nullptr, ws.data());
  const auto idx2 = to_host(d_idx2);
  for (std::size_t r = 0; r < rows; ++r) CHECK(idx2[r] == std::int32_t(at[r]));
  const std::vector<float> tiny = {0.5f, 3.f, -1.f, 3.f, 2.f};
  auto d_tiny = to_device(tiny);
  cuda::argmax(d_tiny.data(), 1, tiny.size(), d_idx2.data(), nullptr, nullptr, ws.data());
  CHECK(to_host(d_idx2)[0] == 1);

  // advance + history: the position moves on and the token is recorded at the new position.
  const std::vector<std::int32_t> p0 = {41};
  auto d_p = to_device(p0);
  auto d_hist = poisoned<std::int32_t>(64);
  auto d_one = poisoned<std::int32_t>(1);
  cuda::argmax(d_logits.data() + W, 1, W, d_one.data(), d_p.data(), d_hist.data());
  CHECK(to_host(d_p)[0] == 42);
  CHECK(to_host(d_hist)[42] == 151935);
  CHECK(to_host(d_one)[0] == 151935);
  cuda::argmax(d_logits.data() + 2 * W, 1, W, d_one.data(), d_p.data(), d_hist.data(), ws.data());
  CHECK(to_host(d_p)[0] == 43);
  CHECK(to_host(d_hist)[43] == 80000);
}

TEST_CASE("float GEMV and the cuBLAS prefill GEMMs") {
  struct Shape {
    std::size_t out, in, T;
  };
  for (const Shape s : {Shape{2048, 1536, 5}, Shape{129, 208, 3}, Shape{37, 131, 2}}) {
    const auto w = random_floats(s.out * s.in, s.out + 1);
    const auto x = random_floats(s.T * s.in, s.in + 2);
    const auto wb = test::rounded<bf16>(w), xb = test::rounded<bf16>(x);
    const auto wbf = test::widened(wb), xbf = test::widened(xb);
    auto d_w = to_device(w), d_x = to_device(x);
    auto d_wb = to_device(wb), d_xb = to_device(xb);
    auto d_y = poisoned<float>(s.T * s.out), d_yb = poisoned<float>(s.T * s.out);
    auto d_yv = poisoned<float>(s.out);
    cuda::gemm_f32(d_w.data(), s.in, d_x.data(), s.in, d_y.data(), s.out, s.T, s.out, s.in);
    cuda::gemm_bf16(d_wb.data(), s.in, d_xb.data(), s.in, d_yb.data(), s.out, s.T, s.out, s.in);
    cuda::gemv_f32(d_w.data(), s.in, d_x.data(), d_yv.data(), s.out, s.in);
    const auto y = to_host(d_y), yb = to_host(d_yb), yv = to_host(d_yv);
    double worst = 0;
    for (std::size_t t = 0; t < s.T; ++t)
      for (std::size_t o = 0; o < s.out; ++o) {
        double abs_f, abs_b;
        const double rf = dot_abs(&w[o * s.in], &x[t * s.in], s.in, abs_f);
        const double rb = dot_abs(&wbf[o * s.in], &xbf[t * s.in], s.in, abs_b);
        REQUIRE(std::isfinite(y[t * s.out + o]));
        REQUIRE(std::isfinite(yb[t * s.out + o]));
        worst = std::max(worst, std::abs(y[t * s.out + o] - rf) / (1e-5 * abs_f));
        worst = std::max(worst, std::abs(yb[t * s.out + o] - rb) / (1e-5 * abs_b));
        if (t == 0) {
          REQUIRE(std::isfinite(yv[o]));
          worst = std::max(worst, std::abs(yv[o] - rf) / (1e-5 * abs_f));
        }
      }
    INFO(s.out << "x" << s.in << " T " << s.T << ": worst error / bound " << worst);
    CHECK(worst <= 1.0);
  }
  // The SwiGLU epilogue over interleaved gate/up rows. Bound: the GEMV bound of each of g and u
  // carried through silu (|silu'| <= 1.1) and the product, doubled.
  for (const Shape s : {Shape{8960, 1536, 1}, Shape{100, 64, 1}, Shape{3, 16, 1}}) {
    const std::size_t width = s.out, in = s.in;
    const auto w = random_floats(2 * width * in, width + 5);
    const auto x = random_floats(in, in + 6);
    const auto wb = test::rounded<bf16>(w);
    const auto wbf = test::widened(wb);
    auto d_w = to_device(w), d_x = to_device(x);
    auto d_wb = to_device(wb);
    auto d_y = poisoned<float>(width), d_yb = poisoned<float>(width);
    cuda::gemv_swiglu_f32(d_w.data(), in, d_x.data(), d_y.data(), width, in);
    cuda::gemv_swiglu_bf16(d_wb.data(), in, d_x.data(), d_yb.data(), width, in);
    const auto y = to_host(d_y), yb = to_host(d_yb);
    double worst = 0;
    for (int which = 0; which < 2; ++which) {
      const auto& ww = which == 0 ? w : wbf;
      const auto& got = which == 0 ? y : yb;
      for (std::size_t i = 0; i < width; ++i) {
        double ag, au;
        const double g = dot_abs(&ww[2 * i * in], x.data(), in, ag);
        const double u = dot_abs(&ww[(2 * i + 1) * in], x.data(), in, au);
        const double sg = g / (1 + std::exp(-g));
        const double bound =
            2 * (1.1e-5 * ag * std::abs(u) + std::abs(sg) * 1e-5 * au) + 1e-6 * std::abs(sg * u);
        REQUIRE(std::isfinite(got[i]));
        worst = std::max(worst, std::abs(got[i] - sg * u) / bound);
      }
    }
    INFO("swiglu " << width << "x" << in << ": worst error / bound " << worst);
    CHECK(worst <= 1.0);
  }
  CHECK_THROWS_WITH_AS(cuda::gemv_swiglu_bf16(reinterpret_cast<const bf16*>(16), 12,
                                              reinterpret_cast<const float*>(16),
                                              reinterpret_cast<float*>(16), 4, 12),
                       doctest::Contains("needs 16-byte rows"), tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::gemm_f32(nullptr, 4, nullptr, 8, nullptr, 8, 2, 8, 8),
                       doctest::Contains("[cuda::gemm_f32] strides"), tmoe::Error);
}
