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
  for (auto& v : w) {
    std::uint8_t b;
    do b = std::uint8_t(rng());
    while ((b & 0x7f) == 0x7f);  // no NaN patterns
    v = f8_e4m3::from_bits(b);
  }
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
    for (auto& v : w) {
      std::uint8_t b;
      do b = std::uint8_t(rng());
      while ((b & 0x7f) == 0x7f);
      v = f8_e4m3::from_bits(b);
    }
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
