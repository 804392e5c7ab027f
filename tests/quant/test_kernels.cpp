// Quantized matmul kernels of every format and ISA against the scalar reference.
// Bounds (per output y[t, o], eps = float epsilon):
//   integer formats, T < kQuantGemmMinT, vs reference::matmul_quant_q8act (same Q8 activations,
//   double sums):
//     |y - r| <= (in / 16 + 24) * eps * M,  M = sum_i (|w_i| + |offset term_i|) * |xq_i|
//   every format vs the exact product with float x, reference::matmul_quant:
//     |y - r| <= sum_i |w_i| * e_i + (in / 16 + 24) * eps * M',  e_i = d_act(i) / 2 for the integer
//     formats (activation rounding), 0 for NF4 / Fp8Block; M' = sum_i |w_i x_i| (+ M), times 2
//     for NF4 / Fp8Block and for the prefill GEMM (T >= kQuantGemmMinT, float activations, e_i =
//     0).
// Weights are random bytes (every code, scale and min, including Q8's -128 and Q6_K's scale
// -128) with random finite f16 scales, so the kernels are tested independently of the quantizers.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "test_util.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/backend/reference/quant.hpp"
#include "tmoe/layers/linear_quant.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;
using namespace tmoe::quant;

namespace {
constexpr double kEps = std::numeric_limits<float>::epsilon();

template <class F>
QuantMatrix<F> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  QuantMatrix<F> m(rows, cols);
  std::mt19937_64 rng(seed);
  const std::size_t n = rows * (cols / F::kBlockSize);
  auto* bytes = reinterpret_cast<std::uint8_t*>(m.blocks());
  for (std::size_t i = 0; i < n * sizeof(typename F::Block); ++i)
    bytes[i] = static_cast<std::uint8_t>(rng());
  std::uniform_real_distribution<float> d(0.001f, 0.05f);
  auto h = [&] { return f16::from_float(rng() % 2 ? d(rng) : -d(rng)); };
  for (std::size_t i = 0; i < n; ++i) {
    auto& b = m.blocks()[i];
    if constexpr (std::is_same_v<F, Q8_0> || std::is_same_v<F, Q4_0> || std::is_same_v<F, Q6_K>)
      b.d = h();
    if constexpr (std::is_same_v<F, Q4_K>) {
      b.d = f16::from_float(d(rng));
      b.dmin = f16::from_float(d(rng));
    }
    if constexpr (std::is_same_v<F, NF4>) b.absmax = d(rng) * 20;
    if constexpr (std::is_same_v<F, Fp8Block>)
      if ((b.bits & 0x7f) == 0x7f) b.bits = 0x7e;  // no NaN weights
  }
  if constexpr (std::is_same_v<F, Int8Row> || std::is_same_v<F, Fp8Block>) {
    const std::size_t ns =
        std::is_same_v<F, Int8Row> ? rows : ((rows + 127) / 128) * ((cols + 127) / 128);
    for (std::size_t i = 0; i < ns; ++i)
      m.scales()[i] = d(rng) * (std::is_same_v<F, Fp8Block> ? 0.01f : 1.f);
  }
  return m;
}

// sum_i c_i |xq_i| where c_i bounds the magnitude of the weight terms the kernel adds separately.
template <class F>
double term_magnitude(const QuantMatrixView<F>& w, std::size_t o, const float* x) {
  std::vector<float> row(w.cols);
  dequantize_row(w, o, row.data());
  double m = 0;
  for (std::size_t i = 0; i < w.cols; ++i) m += std::abs(double(row[i]) * x[i]);
  if constexpr (std::is_same_v<F, Q4_K>)
    for (std::size_t b = 0; b < w.blocks_per_row(); ++b) {
      const auto& blk = w.row(o)[b];
      for (int s = 0; s < 8; ++s) {
        int sc, mn;
        q4k_scale_min(blk.scales, s, sc, mn);
        for (int l = 0; l < 32; ++l)
          m += (std::abs(blk.dmin.to_float() * mn) + 15.0 * std::abs(blk.d.to_float() * sc)) *
               std::abs(x[b * 256 + 32 * s + l]);
      }
    }
  if constexpr (std::is_same_v<F, Q4_0> || std::is_same_v<F, Q6_K>)
    for (std::size_t i = 0; i < w.cols; ++i)
      m += 64.0 * std::abs(double(row[i]) * x[i]) + 1e-3 * std::abs(x[i]);
  return m;
}

template <class F>
void check_format(const cpu::KernelTable& k, ThreadPool& pool, std::size_t out, std::size_t in,
                  std::size_t T, std::uint64_t seed) {
  const auto w = random_matrix<F>(out, in, seed);
  Matrix<float> x(T, in);  // (T, in)
  const auto xf = test::random_floats(T * in, seed + 1, -2.f, 2.f);
  std::copy(xf.begin(), xf.end(), x.data());
  if (T > 1)
    for (std::size_t i = 0; i < in; ++i) x(1, i) = 0.f;  // an all-zero activation row
  Matrix<float> y(T, out), exact(T, out), r8(T, out);    // (T, out)
  cpu::matmul_quant<F>(pool, w.view(), x.cview(), y.view(), k);
  if constexpr (std::is_same_v<F, Fp8Block>) {
    // Checked once for NaN codes (repack), the GEMV leaves out its own NaN test: same bits.
    auto wc = w;
    REQUIRE(!wc.view().nan_free);
    wc.repack();
    REQUIRE(wc.view().nan_free);
    Matrix<float> yc(T, out);
    cpu::matmul_quant<F>(pool, wc.view(), x.cview(), yc.view(), k);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t o = 0; o < out; ++o)
        REQUIRE(std::bit_cast<std::uint32_t>(yc(t, o)) == std::bit_cast<std::uint32_t>(y(t, o)));
  }
  reference::matmul_quant<F>(w.view(), x.cview(), exact.view());
  if constexpr (kUsesQ8Act<F>) reference::matmul_quant_q8act<F>(w.view(), x.cview(), r8.view());
  {
    // Activations quantized once and shared (cpu::Q8Acts, as MoE layers use them): the same
    // bits as above, for all rows and, on the decode path, for a sub-range of rows.
    cpu::Q8Acts qa;
    qa.quantize(pool, x.cview(), k);
    Matrix<float> y2(T, out);
    cpu::matmul_quant<F>(pool, w.view(), qa.acts(), in, y2.view(), k);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t o = 0; o < out; ++o) REQUIRE(y2(t, o) == y(t, o));
    if (T > 2 && T < cpu::kQuantGemmMinT) {
      Matrix<float> y3(T - 2, out);
      cpu::matmul_quant<F>(pool, w.view(), qa.acts(1, T - 2), in, y3.view(), k);
      for (std::size_t t = 0; t + 2 < T; ++t)
        for (std::size_t o = 0; o < out; ++o) REQUIRE(y3(t, o) == y(t + 1, o));
    }
  }
  const std::size_t nq = (in + 31) / 32;
  std::vector<BlockQ8Act> act(nq);
  std::vector<float> xq(nq * 32), row(in);
  for (std::size_t t = 0; t < T; ++t) {
    reference::quantize_act(&x(t, 0), in, act.data());
    for (std::size_t i = 0; i < in; ++i) xq[i] = act[i / 32].d * act[i / 32].qs[i % 32];
    for (std::size_t o = 0; o < out; ++o) {
      const double slack = (double(in) / 16 + 24) * kEps;
      if (kUsesQ8Act<F> && T < cpu::kQuantGemmMinT) {
        const double m = term_magnitude(w.view(), o, xq.data());
        REQUIRE(std::abs(double(y(t, o)) - r8(t, o)) <= slack * m + 1e-30);
        dequantize_row(w.view(), o, row.data());
        double act_err = 0;
        for (std::size_t i = 0; i < in; ++i)
          act_err += std::abs(double(row[i])) * act[i / 32].d * 0.5;
        REQUIRE(std::abs(double(y(t, o)) - exact(t, o)) <=
                act_err * (1 + 1e-5) + slack * m + 1e-30);
      } else {  // float activations (NF4, Fp8Block, and every format's prefill GEMM)
        const double m = term_magnitude(w.view(), o, &x(t, 0));
        REQUIRE(std::abs(double(y(t, o)) - exact(t, o)) <= 2 * slack * m + 1e-30);
      }
      if (T > 1 && t == 1) REQUIRE(y(t, o) == 0.f);
    }
  }
}
}  // namespace

TEST_CASE("activation quantization is bit-identical to the reference on every ISA") {
  auto x = test::random_floats(101, 5, -3.f, 3.f);
  for (int i = 32; i < 64; ++i) x[i] = 0.f;  // an all-zero block
  x[70] = 1e30f;
  test::for_each_isa([&](const cpu::KernelTable& k) {
    std::vector<BlockQ8Act> a(4), r(4);
    k.quant.quantize_act(x.data(), x.size(), a.data());
    reference::quantize_act(x.data(), x.size(), r.data());
    CHECK(std::memcmp(a.data(), r.data(), 4 * sizeof(BlockQ8Act)) == 0);
  });
  // Many blocks, among them near-ties of x / d: the FMA TUs once rounded x * (1 / d) + 1.5 * 2^23
  // as one fused op (random_floats(864, 28) holds such a case, found by the x8 prefill test).
  for (const auto& y : {test::random_floats(864, 28, -2.f, 2.f),
                        test::random_floats(std::size_t{1} << 16, 3, -2.f, 2.f)}) {
    const std::size_t nb = y.size() / 32;
    test::for_each_isa([&](const cpu::KernelTable& k) {
      std::vector<BlockQ8Act> a(nb), r(nb);
      k.quant.quantize_act(y.data(), y.size(), a.data());
      reference::quantize_act(y.data(), y.size(), r.data());
      std::size_t differ = 0;
      for (std::size_t b = 0; b < nb; ++b)
        differ += std::memcmp(&a[b], &r[b], sizeof(BlockQ8Act)) != 0;
      CHECK(differ == 0);
    });
  }
}

// Values the reference's nearbyint -> int cast leaves undefined (NaN, x * 0 for an infinite
// element): every ISA must still give the portable kernel's blocks (the vector path mirrors its
// scalar steps), and a NaN element must not poison its block's scale.
TEST_CASE("activation quantization of NaN, infinities and -0 is the same on every ISA") {
  auto x = test::random_floats(160, 11, -3.f, 3.f);
  x[3] = x[29] = std::numeric_limits<float>::quiet_NaN();  // block 0 (v[0] and v[3] of 8 lanes)
  x[40] = std::numeric_limits<float>::infinity();          // block 1
  x[70] = -std::numeric_limits<float>::infinity(), x[71] = x[3];  // block 2
  for (int i = 96; i < 128; ++i) x[i] = i % 2 ? -0.f : 0.f;       // block 3
  std::vector<BlockQ8Act> want(5);
  cpu::kernels_for(cpu::Isa::portable).quant.quantize_act(x.data(), x.size(), want.data());
  float amax0 = 0;
  for (int i = 0; i < 32; ++i)
    if (i != 3 && i != 29) amax0 = std::max(amax0, std::fabs(x[i]));
  CHECK(want[0].d == amax0 / 127.f);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    std::vector<BlockQ8Act> a(5);
    k.quant.quantize_act(x.data(), x.size(), a.data());
    CHECK(std::memcmp(a.data(), want.data(), 5 * sizeof(BlockQ8Act)) == 0);
  });
}

TEST_CASE_TEMPLATE("quantized matmul matches the reference on every ISA (block formats)", F, Q8_0,
                   Q4_0, Q4_K, Q6_K, NF4) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t out : {1u, 5u, 33u})
      for (std::size_t nb : {1u, 3u, 5u})
        for (std::size_t T : {1u, 3u, 23u, 24u, 35u})
          check_format<F>(k, pool, out, nb * F::kBlockSize, T, out * 7 + nb * 13 + T);
    // The prefill GEMM's edges: depth blocks of 256 columns with a tail, more rows of W than a
    // 16-row panel with a tail, more tokens than the X block (240 rows on AVX2, 480 on AVX-512).
    const std::size_t in = (600 + F::kBlockSize - 1) / F::kBlockSize * F::kBlockSize;
    check_format<F>(k, pool, 37, in, 29, 5);
    check_format<F>(k, pool, 18, F::kBlockSize, 490, 6);
  });
}

TEST_CASE_TEMPLATE("quantized matmul matches the reference on every ISA (Int8Row, Fp8Block)", F,
                   Int8Row, Fp8Block) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t out : {1u, 5u, 130u})
      for (std::size_t in : {1u, 7u, 32u, 100u, 129u, 300u})
        for (std::size_t T : {1u, 3u, 25u})
          check_format<F>(k, pool, out, in, T, out * 7 + in * 13 + T);
  });
}

// The FP8 GEMV scales x by a power of two chosen from max |x| (prep_fp8_x) so that its f32
// products of e4m3 / 2^120 stay clear of f32 subnormals: tiny and huge activations keep the
// float bound of check_format, and an Inf or NaN activation gives what the reference gives.
TEST_CASE("FP8 GEMV keeps float precision for tiny, huge and non-finite activations") {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    const std::size_t out = 6, in = 384 + 40;
    const auto w = random_matrix<Fp8Block>(out, in, 77);
    for (const float scale : {1e-35f, 1e-12f, 1.f, 1e25f, 1e34f}) {
      Matrix<float> x(1, in), y(1, out), r(1, out);
      const auto xf = test::random_floats(in, 78, -2.f, 2.f);
      for (std::size_t i = 0; i < in; ++i) x(0, i) = xf[i] * scale;
      cpu::matmul_quant<Fp8Block>(pool, w.view(), x.cview(), y.view(), k);
      reference::matmul_quant<Fp8Block>(w.view(), x.cview(), r.view());
      for (std::size_t o = 0; o < out; ++o) {
        const double m = term_magnitude(w.view(), o, &x(0, 0));
        CHECK(m > 0);
        REQUIRE(std::abs(double(y(0, o)) - r(0, o)) <= 2 * (double(in) / 16 + 24) * kEps * m);
      }
      x(0, 200) = std::numeric_limits<float>::infinity();
      cpu::matmul_quant<Fp8Block>(pool, w.view(), x.cview(), y.view(), k);
      reference::matmul_quant<Fp8Block>(w.view(), x.cview(), r.view());
      for (std::size_t o = 0; o < out; ++o) {
        REQUIRE(!std::isfinite(r(0, o)));
        if (std::isnan(r(0, o)))
          CHECK(std::isnan(y(0, o)));
        else
          CHECK(y(0, o) == r(0, o));
      }
    }
  });
}

TEST_CASE("edge values: max magnitudes, zeros, subnormal and NaN FP8") {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    const std::size_t in = 64;
    Matrix<float> x(1, in), y(1, 2), r(1, 2);
    for (std::size_t i = 0; i < in; ++i) x(0, i) = i % 2 ? -1e3f : 1e3f;
    {  // Q8_0: codes -128 / 127 against activations +-127: no int16 saturation
      QuantMatrix<Q8_0> w(2, in);
      for (std::size_t b = 0; b < 4; ++b) {
        w.blocks()[b].d = f16::from_float(b % 2 ? 65504.f : 1.f);
        for (int j = 0; j < 32; ++j)
          w.blocks()[b].qs[j] = static_cast<std::int8_t>(j % 2 ? -128 : (b < 2 ? 127 : 0));
      }
      cpu::matmul_quant<Q8_0>(pool, w.view(), x.cview(), y.view(), k);
      reference::matmul_quant_q8act<Q8_0>(w.view(), x.cview(), r.view());
      for (int o = 0; o < 2; ++o) REQUIRE(std::abs(y(0, o) - r(0, o)) <= 1e-6 * std::abs(r(0, o)));
      CHECK(r(0, 0) > 0);
    }
    {  // FP8 subnormals (bit patterns 0x01..0x07 and their negatives) and zeros
      QuantMatrix<Fp8Block> w(2, in);
      for (std::size_t i = 0; i < 2 * in; ++i)
        w.blocks()[i] =
            f8_e4m3::from_bits(static_cast<std::uint8_t>((i % 8) | (i % 16 < 8 ? 0 : 0x80)));
      w.scales()[0] = 4.0f;
      cpu::matmul_quant<Fp8Block>(pool, w.view(), x.cview(), y.view(), k);
      reference::matmul_quant<Fp8Block>(w.view(), x.cview(), r.view());
      for (int o = 0; o < 2; ++o)
        REQUIRE(std::abs(y(0, o) - r(0, o)) <= 1e-5 * 1e3 * 64 * 4 * 0.014);
      for (std::size_t i = 0; i < 2 * in; ++i)
        w.blocks()[i] = f8_e4m3::from_bits(i % 2 ? 0x80 : 0x00);  // +-0
      cpu::matmul_quant<Fp8Block>(pool, w.view(), x.cview(), y.view(), k);
      CHECK(y(0, 0) == 0.f);
      CHECK(y(0, 1) == 0.f);
    }
    {  // FP8 NaN weights (0x7f, 0xff) give NaN outputs like the reference, in the GEMV (full and
       // partial 128-column blocks, one row and row pairs) and in the prefill GEMM
      for (std::size_t cols : {std::size_t{300}, std::size_t{256}})
        for (std::size_t T : {std::size_t{1}, std::size_t{25}}) {
          QuantMatrix<Fp8Block> w(3, cols);
          for (std::size_t i = 0; i < 3 * cols; ++i) w.blocks()[i] = f8_e4m3::from_float(0.5f);
          w.blocks()[0 * cols + 5] = f8_e4m3::from_bits(0x7f);          // full block, row pair
          w.blocks()[2 * cols + cols - 30] = f8_e4m3::from_bits(0xff);  // last block, single row
          std::fill_n(w.scales(), (cols + 127) / 128, 1.0f);
          w.repack();  // finds the NaN codes: the view stays unchecked
          REQUIRE(!w.view().nan_free);
          Matrix<float> xx(T, cols), yy(T, 3);
          for (std::size_t i = 0; i < T * cols; ++i) xx.data()[i] = 1.0f;
          cpu::matmul_quant<Fp8Block>(pool, w.view(), xx.cview(), yy.view(), k);
          for (std::size_t t = 0; t < T; ++t) {
            CHECK(std::isnan(yy(t, 0)));
            CHECK(yy(t, 1) == doctest::Approx(0.5 * double(cols)));
            CHECK(std::isnan(yy(t, 2)));
          }
        }
    }
  });
}

TEST_CASE("matmul_quant and embedding_quant report shape errors") {
  ThreadPool pool(1);
  QuantMatrix<Q4_0> w(4, 64);
  Matrix<float> x(2, 32), y(2, 4);
  CHECK_THROWS_WITH(cpu::matmul_quant<Q4_0>(pool, w.view(), x.cview(), y.view()),
                    "[matmul_quant] x has 32 columns, Q4_0 weight (4, 64) needs 64");
  float row[64];
  CHECK_THROWS_WITH(cpu::embedding_quant<Q4_0>(w.view(), 4, row),
                    "[embedding_quant] row 4 out of range [0, 4)");
  cpu::embedding_quant<Q4_0>(w.view(), 3, row);
  CHECK(row[0] == 0.f);
}

// The decode GEMV on the 8-row interleaved copy (QuantMatrix::repack): per row it adds, block by
// block in order, fma(float(isum_b), float(d_w,b) * d_a,b, acc) with isum_b the exact integer
// block sum (Q4_K: per 32-element sub-block s of a super-block td = fma(float(sc_s isum_s), d_a,s,
// td), the mins in four chains t_k = fma(float(m_k+4), Q_k+4, float(m_k) Q_k) with
// Q_s = d_a,s * sum(a_s), tm = (t_0 + t_1) + (t_2 + t_3), then acc = fma(td, d, acc) and
// macc = fma(tm, dmin, macc), y = acc - macc); the model below computes
// the same in scalar code and must match bit for bit on the SIMD ISAs (the portable TU ignores
// the copy and must match the plain kernel). Against the plain kernels (dot4 / dot: 8 lanes per
// row summed at the end) only the float order differs:
//   |y_x8 - y_plain| <= (2 nq + 8) * 2^-24 * S    (nq = in / 32)
// S = sum over 32-blocks of |scale product| * sum_j c_j |a_j| (+ |m dmin d_a sum(a)| for Q4_K),
// c_j = |q_j| (Q8_0), |q_j - 8| + 16 (Q4_0), the unsigned code (Q4_K): it bounds the magnitudes
// of the partial integer sums either kernel converts to float (dot4 splits a block over 8 lanes
// and subtracts 8 * sum(a) in lane 0), so each result is within (nq + 4) 2^-24 S of the exact sum
// of the same terms.
namespace {
template <class F>
float x8_model(const QuantMatrixView<F>& w, std::size_t o, const BlockQ8Act* a, double* mag) {
  float acc = 0, macc = 0;
  *mag = 0;
  for (std::size_t b = 0; b < w.blocks_per_row(); ++b) {
    const auto& blk = w.row(o)[b];
    if constexpr (std::is_same_v<F, Q6_K>) {
      // dot_x8_q6k: activation block sb = 4h + G of the super-block, codes of its two halves.
      const float d = blk.d.to_float();
      for (int sb = 0; sb < 8; ++sb) {
        const BlockQ8Act& ab = a[8 * b + sb];
        int half[2] = {0, 0};
        double m = 0;
        for (int l = 0; l < 32; ++l) {
          const int q = QuantTraits<Q6_K>::code(blk, 32 * sb + l);
          half[l / 16] += q * ab.qs[l];
          m += std::abs(double(blk.scales[2 * sb + l / 16])) * (q + 32) * std::abs(ab.qs[l]);
        }
        const int p = (half[0] - 32 * ab.sum[0]) * blk.scales[2 * sb] +
                      (half[1] - 32 * ab.sum[1]) * blk.scales[2 * sb + 1];
        acc = std::fma(static_cast<float>(p), d * ab.d, acc);
        *mag += std::abs(double(d) * ab.d) * m;
      }
    } else if constexpr (std::is_same_v<F, Q4_K>) {
      const float d = blk.d.to_float(), dmin = blk.dmin.to_float();
      float td = 0, tq[8];
      for (int sb = 0; sb < 8; ++sb) {
        const BlockQ8Act& ab = a[8 * b + sb];
        int sc, m, isum = 0, isum_abs = 0;
        q4k_scale_min(blk.scales, sb, sc, m);
        for (int l = 0; l < 32; ++l) {
          const int q = sb % 2 ? blk.qs[32 * (sb / 2) + l] >> 4 : blk.qs[32 * (sb / 2) + l] & 15;
          isum += q * ab.qs[l];
          isum_abs += q * std::abs(ab.qs[l]);
        }
        const float qdsum = ab.d * static_cast<float>(ab.sum[0] + ab.sum[1]);
        td = std::fma(static_cast<float>(sc * isum), ab.d, td);
        tq[sb] = sb < 4 ? static_cast<float>(m) * qdsum
                        : std::fma(static_cast<float>(m), qdsum, tq[sb - 4]);
        *mag += std::abs(double(isum_abs) * sc * d * ab.d) + std::abs(double(m) * dmin * qdsum);
      }
      acc = std::fma(td, d, acc);
      macc = std::fma((tq[4] + tq[5]) + (tq[6] + tq[7]), dmin, macc);
    } else {
      int isum = 0, isum_abs = 0;
      for (int j = 0; j < 32; ++j) {
        int q;
        if constexpr (std::is_same_v<F, Q4_0>)
          q = (j < 16 ? blk.qs[j] & 15 : blk.qs[j - 16] >> 4) - 8;
        else
          q = blk.qs[j];
        isum += q * a[b].qs[j];
        isum_abs += (std::abs(q) + (std::is_same_v<F, Q4_0> ? 16 : 0)) * std::abs(a[b].qs[j]);
      }
      const float s = blk.d.to_float() * a[b].d;
      acc = std::fma(static_cast<float>(isum), s, acc);
      *mag += std::abs(double(isum_abs) * s);
    }
  }
  return acc - macc;
}

template <class F>
void check_x8(const cpu::KernelTable& k, std::size_t out, std::size_t nb, std::size_t T,
              std::uint64_t seed) {
  const std::size_t in = nb * F::kBlockSize, nq = in / 32;
  auto m = random_matrix<F>(out, in, seed);
  const auto plain_view = m.view();
  m.repack();
  const auto w = m.view();
  REQUIRE((w.packed != nullptr) == (out >= 8));
  Matrix<float> x(T, in), y(T, out), yp(T, out);  // (T, in), (T, out)
  const auto xf = test::random_floats(T * in, seed + 1, -2.f, 2.f);
  std::copy(xf.begin(), xf.end(), x.data());
  ThreadPool one(1), two(2);
  cpu::matmul_quant<F>(one, plain_view, x.cview(), yp.view(), k);
  cpu::matmul_quant<F>(one, w, x.cview(), y.view(), k);
  std::vector<BlockQ8Act> act(nq);
  for (std::size_t t = 0; t < T; ++t) {
    reference::quantize_act(&x(t, 0), in, act.data());
    for (std::size_t o = 0; o < out; ++o) {
      double mag;
      const float model = x8_model(w, o, act.data(), &mag);
      if (k.isa == cpu::Isa::portable)
        REQUIRE(y(t, o) == yp(t, o));  // the copy is not read; one scalar kernel per row
      else if (o < out / 8 * 8)
        REQUIRE(y(t, o) == model);  // tail rows: the plain kernel (dot4 or dot), the bound
      REQUIRE(std::abs(double(y(t, o)) - yp(t, o)) <= (2.0 * nq + 8) * 0x1p-24 * mag);
    }
  }
  // The row kernel on ranges cutting groups and units (Q4_0 / Q8_0: 4 groups per unit): rows of
  // whole groups inside the range run the interleaved kernels (single groups and pairs inside a
  // unit, whole units, the groups after the last unit), the bits of the full call; the rows of
  // cut groups run the plain kernel (the bound).
  if (out > 3) {
    std::vector<BlockQ8Act> q(T * nq);
    std::vector<float> qd(T * nq), qdsum(T * nq);
    for (std::size_t t = 0; t < T; ++t) reference::quantize_act(&x(t, 0), in, q.data() + t * nq);
    for (std::size_t i = 0; i < T * nq; ++i) {
      qd[i] = q[i].d;
      qdsum[i] = q[i].d * static_cast<float>(q[i].sum[0] + q[i].sum[1]);
    }
    cpu::QuantActs qa;
    qa.x = x.data();
    qa.ldx = in;
    qa.q = q.data();
    qa.ldq = nq;
    qa.qd = qd.data();
    qa.qdsum = qdsum.data();
    qa.T = T;
    const std::size_t ranges[][2] = {{3, out},
                                     {16, out},
                                     {8, std::min<std::size_t>(out, 20)},
                                     {std::min<std::size_t>(out, 40), out}};
    for (const auto& [ob, oe] : ranges) {
      if (ob >= oe) continue;
      CAPTURE(ob);
      CAPTURE(oe);
      Matrix<float> ye(T, out);
      cpu::detail::quant_rows_fn<F>(k)(w, qa, ye.data(), out, ob, oe);
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t o = ob; o < oe; ++o) {
          double mag;
          x8_model(w, o, q.data() + t * nq, &mag);
          if (o >= (ob + 7) / 8 * 8 && o < oe / 8 * 8)
            REQUIRE(ye(t, o) == y(t, o));
          else
            REQUIRE(std::abs(double(ye(t, o)) - yp(t, o)) <= (2.0 * nq + 8) * 0x1p-24 * mag);
        }
    }
  }
  // Two threads and row slices (a slice cutting the copy at a unit keeps it, another drops it:
  // Q4_0 / Q8_0 keep it from row 32 to the end, Q4_K from any multiple of 8): within the bound.
  Matrix<float> y2(T, out);
  cpu::matmul_quant<F>(two, w, x.cview(), y2.view(), k);
  for (std::size_t begin : {std::size_t{0}, std::size_t{3}, std::size_t{8}, std::size_t{32}}) {
    if (begin >= out) continue;
    const std::size_t count = out - begin;
    const auto s = LinearTraits<F>::slice_rows(w, begin, count);
    const bool keeps = begin % (8 * kX8Unit<F>) == 0;  // to the end: its last groups are w's
    REQUIRE((s.packed != nullptr) == (keeps && w.packed != nullptr));
    Matrix<float> ys(T, count);
    cpu::matmul_quant<F>(one, s, x.cview(), ys.view(), k);
    for (std::size_t t = 0; t < T; ++t) {
      reference::quantize_act(&x(t, 0), in, act.data());
      for (std::size_t o = 0; o < count; ++o) {
        double mag;
        x8_model(w, begin + o, act.data(), &mag);
        const double bound = (2.0 * nq + 8) * 0x1p-24 * mag;
        REQUIRE(std::abs(double(ys(t, o)) - yp(t, begin + o)) <= bound);
        if (begin == 0) REQUIRE(std::abs(double(y2(t, o)) - yp(t, o)) <= bound);
      }
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("the 8-row interleaved GEMV matches its scalar model and the plain kernel", F,
                   Q8_0, Q4_0, Q4_K, Q6_K) {
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t out : {1u, 7u, 8u, 9u, 17u, 40u, 67u, 100u})
      for (std::size_t nb : {1u, 2u, 7u})
        for (std::size_t T : {1u, 3u}) check_x8<F>(k, out, nb, T, out * 11 + nb * 5 + T);
  });
}

// Row slices keep the copy only where they cut it at units (x8_slice_keeps_copy); a kept slice
// reads its rows from the copy exactly as the whole matrix's call does (same bits).
TEST_CASE("row slices of the interleaved copy: kept at units, the same bits as the whole") {
  // 80 rows = 10 groups: units {0..3}, {4..7}, then groups 8, 9 stored one after another.
  CHECK(x8_slice_keeps_copy(4, 80, 0, 32));
  CHECK(x8_slice_keeps_copy(4, 80, 32, 48));       // a unit, then the matrix's last groups
  CHECK(x8_slice_keeps_copy(4, 80, 64, 16));       // the matrix's last groups only
  CHECK(x8_slice_keeps_copy(4, 80, 0, 36));        // rows 32..35: a cut group, read from the blocks
  CHECK_FALSE(x8_slice_keeps_copy(4, 80, 0, 40));  // group 4 would be read as stored alone
  CHECK_FALSE(x8_slice_keeps_copy(4, 80, 8, 32));  // starts inside a unit
  CHECK_FALSE(x8_slice_keeps_copy(4, 80, 32, 24));  // groups 4..6: part of a unit
  CHECK(x8_slice_keeps_copy(4, 80, 32, 40));        // a unit, then the matrix's group 8
  CHECK(x8_slice_keeps_copy(2, 80, 16, 48));        // Q4_K / Q6_K: units of two groups
  CHECK_FALSE(x8_slice_keeps_copy(2, 80, 8, 40));   // starts inside one
  auto m = random_matrix<Q4_0>(80, 96, 5);
  m.repack();
  const auto w = m.view();
  Matrix<float> x(1, 96), y(1, 80);
  const auto xf = test::random_floats(96, 6, -2.f, 2.f);
  std::copy(xf.begin(), xf.end(), x.data());
  test::for_each_isa([&](const cpu::KernelTable& k) {
    ThreadPool pool(2);
    cpu::matmul_quant<Q4_0>(pool, w, x.cview(), y.view(), k);
    for (const auto& [begin, count] :
         {std::pair<std::size_t, std::size_t>{0, 32}, {32, 48}, {64, 16}, {0, 64}, {0, 36}}) {
      const auto s = LinearTraits<Q4_0>::slice_rows(w, begin, count);
      REQUIRE(s.packed != nullptr);
      Matrix<float> ys(1, count);
      cpu::matmul_quant<Q4_0>(pool, s, x.cview(), ys.view(), k);
      for (std::size_t o = 0; o < count / 8 * 8; ++o) REQUIRE(ys(0, o) == y(0, begin + o));
    }
  });
}

TEST_CASE("the 8-row interleaved copy holds the blocks' bytes and survives Q8 extremes") {
  // Every row's block bytes reappear in the copy (d[r], then 4-byte groups at 32k + 4r), in
  // X8Order: 45 rows of 2 blocks = 5 groups, groups 0..3 one unit (group g's block b at 4b + g),
  // group 4 after it (at 4 * 2 + b); rows 40..44 stay out.
  auto m = random_matrix<Q4_0>(45, 64, 3);
  m.repack();
  const auto w = m.view();
  REQUIRE(repacked_x8_bytes(w) == 40 * 2 * sizeof(BlockQ4_0));
  const auto* p = static_cast<const BlockQ4_0x8*>(w.packed);
  for (std::size_t r = 0; r < 40; ++r)
    for (std::size_t b = 0; b < 2; ++b) {
      const auto& blk = w.row(r)[b];
      const std::size_t g = r / 8;
      const auto& x = p[g < 4 ? 4 * b + g : 8 + b];
      CHECK(x.d[r % 8].bits == blk.d.bits);
      for (std::size_t j = 0; j < 16; ++j)
        CHECK(x.qs[32 * (j / 4) + 4 * (r % 8) + j % 4] == blk.qs[j]);
    }
  // Q8_0 codes of -128 and 127 against activations of +-127 (maddubs pairs at 2 * 128 * 127).
  QuantMatrix<Q8_0> q(8, 32);
  for (std::size_t r = 0; r < 8; ++r) {
    q.blocks()[r].d = f16::from_float(1.f);
    for (int j = 0; j < 32; ++j) q.blocks()[r].qs[j] = static_cast<std::int8_t>(r % 2 ? 127 : -128);
  }
  q.repack();
  Matrix<float> x(1, 32), y(1, 8);
  for (int j = 0; j < 32; ++j) x(0, j) = 1.f;
  test::for_each_isa([&](const cpu::KernelTable& k) {
    ThreadPool pool(1);
    cpu::matmul_quant<Q8_0>(pool, q.view(), x.cview(), y.view(), k);
    for (std::size_t r = 0; r < 8; ++r)  // 32 * (-128 or 127) * 127 * (1 / 127)
      CHECK(y(0, r) == doctest::Approx(r % 2 ? 4064.0 : -4096.0).epsilon(1e-6));
  });
}

// unpack_x8 is repack_x8's exact inverse (every row of every block, random bytes: all Q4_K
// 6-bit scale / min combinations appear), and the prefill GEMM (float path: Q8_0, Q4_K; Q4_0 on
// the portable ISA) reads whole groups from the copy: with the stored blocks of those rows
// zeroed after repacking it gives the same bits as before (the rows % 8 tail still reads them).
TEST_CASE_TEMPLATE("the prefill GEMM reads the interleaved copy, unpack_x8 inverts repack_x8", F,
                   Q8_0, Q4_0, Q4_K, Q6_K) {
  const std::size_t out = 53, nb = 3, in = nb * F::kBlockSize, T = 30;  // a unit and 2 groups
  static_assert(T >= cpu::kQuantGemmMinT);
  auto m = random_matrix<F>(out, in, 91);
  m.repack();
  const auto w = m.view();
  const auto* pk = static_cast<const typename RepackedX8<F>::Block*>(w.packed);
  const X8Order order = x8_order(w);
  for (std::size_t r = 0; r < out / 8 * 8; ++r)
    for (std::size_t b = 0; b < nb; ++b) {
      const auto blk = unpack_x8<F>(pk[order.index(r / 8, b)], r % 8);
      REQUIRE(std::memcmp(&blk, &w.row(r)[b], sizeof(blk)) == 0);
    }
  Matrix<float> x(T, in), y(T, out), y2(T, out);
  const auto xf = test::random_floats(T * in, 92, -2.f, 2.f);
  std::copy(xf.begin(), xf.end(), x.data());
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    if (cpu::detail::int_prefill(w, k)) return;  // Q4_0's integer prefill: tested below
    auto poisoned = m;
    poisoned.repack();
    std::memset(static_cast<void*>(poisoned.blocks()), 0,
                out / 8 * 8 * nb * sizeof(typename F::Block));
    cpu::matmul_quant<F>(pool, w, x.cview(), y.view(), k);
    cpu::matmul_quant<F>(pool, poisoned.view(), x.cview(), y2.view(), k);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t o = 0; o < out; ++o)
        REQUIRE(std::bit_cast<std::uint32_t>(y2(t, o)) == std::bit_cast<std::uint32_t>(y(t, o)));
  });
}

// The prefill (T >= kQuantGemmMinT) of Q4_0 / Q8_0 / Q4_K with the interleaved copy where the ISA
// runs it (cpu::x8_int_prefill_on: Q4_0 on the SIMD ISAs, Q8_0 and Q4_K under AVX-512 VNNI): Q8
// activations and the integer multi-token kernel (gemm_x8_tile, gemm_x16_tile,
// gemm_x16_q4k_tile), whose per-row, per-token arithmetic is the decode GEMV's: every output equals
// the T = 1 decode of its token bit for bit (whole groups: x8_model above; the rows % 8 tail: the
// plain kernels), so the decode bound against reference::matmul_quant_q8act holds,
//   |y - r| <= (in / 16 + 24) * eps * M   (check_format's bound).
// Token counts leaving 0 .. 7 tokens after the 5-token (AVX2), 8-token (AVX-512 VNNI, 16 rows
// at a time) and 6-token (Q4_K, 16 rows) tiles, rows not multiples of 8 or 16 (Q4_K: an odd
// group left, per token), one and two threads, the shared-activation overload (Q8Acts): all the
// same bits. The portable TU keeps the float GEMM (checked by check_format), and so do Q8_0's and
// Q4_K's prefill on AVX2 (cpu::int_prefill: Q8_0's float GEMM measured faster there; their
// integer kernels run for 1 < T < kQuantGemmMinT, checked by check_format).
TEST_CASE_TEMPLATE("the x8 integer prefill equals the decode GEMV per token", F, Q4_0, Q8_0, Q4_K,
                   Q6_K) {
  static_assert(cpu::kQuantGemmMinT <= 24, "the token counts below must be prefill sizes");
  test::for_each_isa([&](const cpu::KernelTable& k) {
    if (!cpu::detail::x8_int_prefill_on<F>(k)) return;
    ThreadPool one(1), two(2);
    for (std::size_t out : {9u, 40u, 67u})
      for (std::size_t nb : {1u, 7u})
        for (std::size_t T :
             {std::size_t{24}, std::size_t{26}, std::size_t{27}, std::size_t{28}, std::size_t{29},
              std::size_t{30}, std::size_t{31}, std::size_t{33}, std::size_t{50}}) {
          const std::size_t in = nb * F::kBlockSize;
          auto m = random_matrix<F>(out, in, out * 13 + nb * 7 + T);
          m.repack();
          const auto w = m.view();
          Matrix<float> x(T, in), y(T, out), y2(T, out), y3(T, out), r8(T, out);
          const auto xf = test::random_floats(T * in, T + nb, -2.f, 2.f);
          std::copy(xf.begin(), xf.end(), x.data());
          for (std::size_t i = 0; i < in; ++i) x(2, i) = 0.f;  // an all-zero activation row
          cpu::matmul_quant<F>(two, w, x.cview(), y.view(), k);
          cpu::matmul_quant<F>(one, w, x.cview(), y2.view(), k);
          cpu::Q8Acts qa;
          qa.quantize(two, x.cview(), k);
          cpu::matmul_quant<F>(two, w, qa.acts(), in, y3.view(), k);
          reference::matmul_quant_q8act<F>(w, x.cview(), r8.view());
          std::vector<BlockQ8Act> act(in / 32);
          std::vector<float> xq(in);
          Matrix<float> y1(1, out);
          for (std::size_t t = 0; t < T; ++t) {
            cpu::matmul_quant<F>(one, w, x.cview().row_range(t, 1), y1.view(), k);  // decode
            reference::quantize_act(&x(t, 0), in, act.data());
            for (std::size_t i = 0; i < in; ++i) xq[i] = act[i / 32].d * act[i / 32].qs[i % 32];
            for (std::size_t o = 0; o < out; ++o) {
              REQUIRE(y(t, o) == y1(0, o));
              REQUIRE(y2(t, o) == y1(0, o));
              REQUIRE(y3(t, o) == y1(0, o));
              if (o < out / 8 * 8) {
                double mag;
                REQUIRE(y(t, o) == x8_model(w, o, act.data(), &mag));
              }
              const double m8 = term_magnitude(w, o, xq.data());
              REQUIRE(std::abs(double(y(t, o)) - r8(t, o)) <=
                      (double(in) / 16 + 24) * kEps * m8 + 1e-30);
              if (t == 2) REQUIRE(y(t, o) == 0.f);
            }
          }
        }
  });
}
