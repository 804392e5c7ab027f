// Quantized formats: block layouts (bit-exact dequantization of hand-made blocks), quantizers
// (hand-derived values, round-trip bounds from quant/quantize.hpp) and input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.hpp"
#include "tmoe/quant/formats.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;
using namespace tmoe::quant;

TEST_CASE("the traits table matches the GGUF block sizes") {
  static_assert(quant_type_info(QuantType::q4_k).block_bytes == 144);
  CHECK(quant_type_info(QuantType::q8_0).block_bytes == 34);
  CHECK(quant_type_info(QuantType::q4_0).block_bytes == 18);
  CHECK(quant_type_info(QuantType::q6_k).block_bytes == 210);
  CHECK(quant_type_info(QuantType::q6_k).block_size == 256);
  CHECK(quant_type_info(QuantType::nf4).block_bytes == 36);
  CHECK(quant_type_info(QuantType::fp8_block).name == "FP8_BLOCK");
  CHECK(!quant_type_info(QuantType::fp8_block).q8_activations);
  CHECK(quant_type_info(QuantType::int8_row).q8_activations);
}

TEST_CASE("Q8_0 and Q4_0 hand-made blocks dequantize exactly") {
  BlockQ8_0 b8{f16::from_bits(0x3800), {}};  // d = 0.5
  for (int j = 0; j < 32; ++j) b8.qs[j] = static_cast<std::int8_t>(j * 8 - 128);
  float y[32];
  QuantTraits<Q8_0>::dequantize_block(b8, y);
  for (int j = 0; j < 32; ++j) CHECK(y[j] == 0.5f * (j * 8 - 128));

  BlockQ4_0 b4{f16::from_bits(0x4000), {}};  // d = 2
  for (int j = 0; j < 16; ++j) b4.qs[j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
  QuantTraits<Q4_0>::dequantize_block(b4, y);
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == 2.f * (j - 8));       // low nibbles: elements 0..15
    CHECK(y[j + 16] == 2.f * (7 - j));  // high nibbles: elements 16..31
  }
}

TEST_CASE("Q4_K hand-made block dequantizes exactly") {
  BlockQ4_K b{};
  b.d = f16::from_bits(0x3c00);     // 1
  b.dmin = f16::from_bits(0x3800);  // 0.5
  int sc[8], mn[8];
  for (int s = 0; s < 8; ++s) {
    sc[s] = s < 4 ? s + 1 : 40 + s;  // sub-blocks 4..7 use the high 2 bits
    mn[s] = s < 4 ? 2 * s + 1 : 50 + s;
  }
  // Packing by the definition: bytes 0..3 hold sc[0..3] (low 6 bits) and the high bits of sc[4..7];
  // bytes 4..7 the same for the mins; bytes 8..11 the low nibbles of sc[4..7] | mn[4..7] << 4.
  for (int s = 0; s < 4; ++s) {
    b.scales[s] = static_cast<std::uint8_t>(sc[s] | ((sc[s + 4] >> 4) << 6));
    b.scales[s + 4] = static_cast<std::uint8_t>(mn[s] | ((mn[s + 4] >> 4) << 6));
    b.scales[s + 8] = static_cast<std::uint8_t>((sc[s + 4] & 15) | ((mn[s + 4] & 15) << 4));
  }
  for (int e = 0; e < 256; ++e) {  // element e: chunk e/64, low nibble if e%64 < 32
    const int code = (e * 5) % 16;
    std::uint8_t& byte = b.qs[32 * (e / 64) + e % 32];
    byte =
        static_cast<std::uint8_t>(e % 64 < 32 ? (byte & 0xf0) | code : (byte & 0x0f) | (code << 4));
  }
  float y[256];
  QuantTraits<Q4_K>::dequantize_block(b, y);
  for (int e = 0; e < 256; ++e)
    CHECK(y[e] == 1.0f * sc[e / 32] * ((e * 5) % 16) - 0.5f * mn[e / 32]);
}

TEST_CASE("Q6_K hand-made block dequantizes exactly") {
  BlockQ6_K b{};
  b.d = f16::from_bits(0x3400);  // 0.25
  for (int k = 0; k < 16; ++k) b.scales[k] = static_cast<std::int8_t>(k * 17 - 128);
  auto code = [](int e) { return (e * 7 + 3) % 64; };
  for (int e = 0; e < 256; ++e) {  // half h, group g (of 32), lane l
    const int h = e / 128, g = (e % 128) / 32, l = e % 32, c = code(e);
    std::uint8_t& lo = b.ql[64 * h + 32 * (g % 2) + l];
    lo = static_cast<std::uint8_t>(g < 2 ? (lo & 0xf0) | (c & 15) : (lo & 0x0f) | ((c & 15) << 4));
    b.qh[32 * h + l] = static_cast<std::uint8_t>(b.qh[32 * h + l] | ((c >> 4) << (2 * g)));
  }
  float y[256];
  QuantTraits<Q6_K>::dequantize_block(b, y);
  for (int e = 0; e < 256; ++e)
    CHECK(y[e] == 0.25f * float(b.scales[e / 16]) * float(code(e) - 32));
}

TEST_CASE("NF4, Int8Row and Fp8Block dequantize exactly") {
  BlockNF4 b{2.0f, {}};
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<std::uint8_t>((j % 16) | ((15 - j % 16) << 4));
  float y[64];
  QuantTraits<NF4>::dequantize_block(b, y);
  for (int j = 0; j < 32; ++j) {
    CHECK(y[j] == 2.0f * kNf4Codebook[j % 16]);
    CHECK(y[j + 32] == 2.0f * kNf4Codebook[15 - j % 16]);
  }
  CHECK(kNf4Codebook[7] == 0.0f);
  // bitsandbytes order: element 2i high nibble, 2i+1 low nibble.
  std::uint8_t packed[32];
  for (int i = 0; i < 32; ++i)
    packed[i] = static_cast<std::uint8_t>(((2 * i) % 16) << 4 | ((2 * i + 1) % 16));
  const BlockNF4 rb = nf4_from_bitsandbytes(packed, 1.0f);
  QuantTraits<NF4>::dequantize_block(rb, y);
  for (int j = 0; j < 64; ++j) CHECK(y[j] == kNf4Codebook[j % 16]);

  // FP8: 130 x 200 -> scale tiles (2, 2), edge tiles partial; known e4m3 patterns.
  QuantMatrix<Fp8Block> m(130, 200);
  const std::uint8_t pats[6] = {0x38, 0x01, 0x7e, 0xfe, 0x08, 0x81};
  const float vals[6] = {1.0f, 0.001953125f, 448.f, -448.f, 0.015625f, -0.001953125f};
  for (std::size_t i = 0; i < 130 * 200; ++i) m.blocks()[i] = f8_e4m3::from_bits(pats[i % 6]);
  const float tile[4] = {0.5f, 3.0f, 1e-3f, 7.0f};
  std::memcpy(m.scales(), tile, sizeof(tile));
  std::vector<float> row(200);
  for (std::size_t r : {0u, 127u, 128u, 129u}) {
    dequantize_row(m.view(), r, row.data());
    for (std::size_t c = 0; c < 200; ++c)
      REQUIRE(row[c] == vals[(r * 200 + c) % 6] * tile[(r / 128) * 2 + c / 128]);
  }
  QuantMatrix<Int8Row> q(2, 3);
  const std::int8_t iv[6] = {-128, 0, 127, 1, -1, 5};
  std::memcpy(q.blocks(), iv, 6);
  q.scales()[0] = 0.5f;
  q.scales()[1] = -2.f;
  float r3[3];
  dequantize_row(q.view(), 1, r3);
  CHECK(r3[0] == -2.f);
  CHECK(r3[2] == -10.f);
}

TEST_CASE("fp8_find_nan finds each NaN code at every column; quantize and repack certify") {
  const std::size_t rows = 3, cols = 21;  // two 8-byte words and a 5-byte tail per row
  QuantMatrix<Fp8Block> m(rows, cols);
  for (std::size_t i = 0; i < rows * cols; ++i)  // every non-NaN code (0x7e, 0xfe, 0x80, ...)
    m.blocks()[i] = f8_e4m3::from_bits(static_cast<std::uint8_t>((i * 37) % 256));
  for (std::size_t i = 0; i < rows * cols; ++i)
    if ((m.blocks()[i].bits & 0x7f) == 0x7f) m.blocks()[i] = f8_e4m3::from_bits(0x7e);
  std::size_t r = 99, c = 99;
  CHECK(!fp8_find_nan(m.view(), r, c));
  m.repack();
  CHECK(m.view().nan_free);
  for (std::size_t at = 0; at < rows * cols; ++at)
    for (std::uint8_t nan : {std::uint8_t{0x7f}, std::uint8_t{0xff}}) {
      auto q = m;
      q.blocks()[at] = f8_e4m3::from_bits(nan);
      CHECK(!q.view().nan_free);  // writable access drops the check
      REQUIRE(fp8_find_nan(q.view(), r, c));
      CHECK(r == at / cols);
      CHECK(c == at % cols);
      q.repack();
      CHECK(!q.view().nan_free);
    }
  std::vector<float> x(200 * 130);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i)) * 1e3f;
  CHECK(quantize<Fp8Block>(x.data(), 200, 130).view().nan_free);
}

TEST_CASE("quantizers give the values derived from the definitions") {
  float x[256];
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16);
  {  // Q8_0: d = 16 / 127, q = round(x * 127 / 16)
    const auto q = quantize<Q8_0>(x, 1, 32);
    const BlockQ8_0& b = q.view().blocks[0];
    CHECK(b.d == f16::from_float(16.f / 127.f));
    CHECK(b.qs[0] == -127);
    CHECK(b.qs[17] == 8);   // 1 * 7.9375
    CHECK(b.qs[18] == 16);  // 15.875
    CHECK(b.qs[15] == -8);
    CHECK(b.qs[16] == 0);
  }
  {  // Q4_0: largest |x| is -16 -> d = 2, q = min(15, trunc(x / 2 + 8.5))
    const auto q = quantize<Q4_0>(x, 1, 32);
    const BlockQ4_0& b = q.view().blocks[0];
    CHECK(b.d.bits == 0x4000);
    CHECK((b.qs[0] & 15) == 0);    // -16 -> 0.5 -> 0
    CHECK((b.qs[1] & 15) == 1);    // -15 -> 1.0
    CHECK((b.qs[2] & 15) == 1);    // -14 -> 1.5 -> 1
    CHECK((b.qs[15] & 15) == 8);   // -1 -> 8.0
    CHECK((b.qs[0] >> 4) == 8);    // 0 -> 8.5 -> 8
    CHECK((b.qs[15] >> 4) == 15);  // 15 -> 16 -> clamped to 15
  }
  {  // Q6_K of a constant 1: every sub-block scale is -1/32, d = 2^-12, scales -128, codes 0.
    for (float& v : x) v = 1.0f;
    const auto q = quantize<Q6_K>(x, 1, 256);
    const BlockQ6_K& b = q.view().blocks[0];
    CHECK(b.d.bits == 0x0c00);
    for (int k = 0; k < 16; ++k) CHECK(b.scales[k] == -128);
    for (int k = 0; k < 128; ++k) CHECK(b.ql[k] == 0);
    for (int k = 0; k < 64; ++k) CHECK(b.qh[k] == 0);
    float y[256];
    QuantTraits<Q6_K>::dequantize_block(b, y);
    CHECK(y[0] == 1.0f);
  }
  {  // Q4_K of a constant 1: scale 1/15, min 0; 6-bit scales all 63; d = (1/15)/63, dmin = 0;
     // codes 15.
    const auto q = quantize<Q4_K>(x, 1, 256);
    const BlockQ4_K& b = q.view().blocks[0];
    CHECK(b.d == f16::from_float((1.0f / 15.0f) / 63.f));
    CHECK(b.dmin.bits == 0);
    for (int k = 0; k < 4; ++k) {
      CHECK(b.scales[k] == 0xff);
      CHECK(b.scales[k + 4] == 0);
      CHECK(b.scales[k + 8] == 15);
    }
    for (int k = 0; k < 128; ++k) CHECK(b.qs[k] == 0xff);
  }
  {  // NF4: absmax 2, x / absmax exactly on code-book entries
    float v[64];
    for (int j = 0; j < 64; ++j) v[j] = 2.0f * kNf4Codebook[(j * 3) % 16];
    const auto q = quantize<NF4>(v, 1, 64);
    float y[64];
    QuantTraits<NF4>::dequantize_block(q.view().blocks[0], y);
    for (int j = 0; j < 64; ++j) CHECK(y[j] == v[j]);
  }
}

namespace {
template <class F>
void check_round_trip(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  auto x = test::random_floats(rows * cols, seed, -1.f, 1.f);
  for (std::size_t i = 0; i < x.size(); i += 97) x[i] *= 20.f;  // outliers
  for (std::size_t i = 5; i < x.size(); i += 331) x[i] = 0.f;
  const auto q = quantize<F>(x.data(), rows, cols);
  std::vector<float> y(cols);
  const std::size_t g = std::is_same_v<F, Q4_K>   ? 32
                        : std::is_same_v<F, Q6_K> ? 256
                                                  : F::kBlockSize;
  for (std::size_t r = 0; r < rows; ++r) {
    dequantize_row(q.view(), r, y.data());
    const float* xr = x.data() + r * cols;
    float row_amax = 0;
    for (std::size_t c = 0; c < cols; ++c) row_amax = std::max(row_amax, std::fabs(xr[c]));
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t b0 = c / g * g, b1 = std::min(cols, b0 + g), s0 = c / 256 * 256;
      float amax = 0, mx = 0, mn = 0, smx = 0, smn = 0;
      for (std::size_t i = b0; i < b1; ++i) {
        amax = std::max(amax, std::fabs(xr[i]));
        mx = std::max(mx, xr[i]);
        mn = std::min(mn, xr[i]);
      }
      for (std::size_t i = s0; i < std::min(cols, s0 + 256); ++i) {
        smx = std::max(smx, xr[i]);
        smn = std::min(smn, xr[i]);
      }
      double bound = 0;
      if constexpr (std::is_same_v<F, Q8_0>)
        bound = amax * (1.0 / 254 + 1.0 / 2048);
      else if constexpr (std::is_same_v<F, Q4_0>)
        bound = amax / 8.0 * 1.01;
      else if constexpr (std::is_same_v<F, Q4_K>)
        bound = (mx - mn) / 28.0 + (smx - smn) / 40.0;
      else if constexpr (std::is_same_v<F, Q6_K>)
        bound = amax / 64.0 * 1.1;
      else if constexpr (std::is_same_v<F, NF4>)
        bound = amax * 0.1520;
      else if constexpr (std::is_same_v<F, Int8Row>)
        bound = row_amax / 254.0 * (1 + 1e-6);
      REQUIRE(std::abs(double(y[c]) - xr[c]) <= bound);
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("quantize -> dequantize stays within the stated bounds", F, Q8_0, Q4_0, Q4_K,
                   Q6_K, NF4, Int8Row) {
  check_round_trip<F>(7, 512, 11);
}

TEST_CASE("Fp8Block round trip within |x| 2^-4 + scale 2^-10, partial edge tiles") {
  const std::size_t rows = 130, cols = 300;
  auto x = test::random_floats(rows * cols, 3, -5.f, 5.f);
  for (std::size_t i = 0; i < x.size(); i += 7) x[i] *= 1e-4f;  // subnormal range after scaling
  const auto q = quantize<Fp8Block>(x.data(), rows, cols);
  std::vector<float> y(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    dequantize_row(q.view(), r, y.data());
    for (std::size_t c = 0; c < cols; ++c) {
      const float s = q.view().scales[(r / 128) * 3 + c / 128];
      REQUIRE(std::abs(double(y[c]) - x[r * cols + c]) <=
              std::fabs(x[r * cols + c]) / 16.0 + s / 1024.0);
    }
  }
}

TEST_CASE("bf16 input quantizes like its float value") {
  std::vector<bf16> xb(64);
  std::vector<float> xf(64);
  for (int i = 0; i < 64; ++i) {
    xb[i] = bf16::from_float(std::sin(float(i)));
    xf[i] = xb[i].to_float();
  }
  const auto a = quantize<Q8_0>(xb.data(), 2, 32), b = quantize<Q8_0>(xf.data(), 2, 32);
  CHECK(std::memcmp(a.view().blocks, b.view().blocks, 2 * sizeof(BlockQ8_0)) == 0);
}

TEST_CASE("quantizers reject non-finite input and bad shapes") {
  std::vector<float> x(2 * 256, 0.5f);
  x[256 + 37] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(quantize<Q4_K>(x.data(), 2, 256),
                    "[quantize_Q4_K] non-finite input nan at row 1, column 37");
  x[256 + 37] = 0.f;
  x[3] = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(quantize<Fp8Block>(x.data(), 2, 256),
                    "[quantize_FP8_BLOCK] non-finite input -inf at row 0, column 3");
  CHECK_THROWS_WITH(quantize<Q8_0>(x.data(), 1, 40),
                    "[quantize_Q8_0] row length 40 is not a multiple of the block size 32");
}
