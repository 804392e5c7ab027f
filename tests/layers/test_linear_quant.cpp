// The quantized block formats as Linear / Embedding / MoE formats (layers/linear_quant.hpp):
// each must give what the same layer gives over the dequantized float weights.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "layer_test_util.hpp"
#include "tmoe/layers/linear_quant.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;

namespace {
// The float matrix a quantized one stands for.
template <class Q>
Matrix<float> dequantized(const quant::QuantMatrixView<Q>& w) {
  Matrix<float> m(w.rows, w.cols);
  for (std::size_t r = 0; r < w.rows; ++r) quant::dequantize_row(w, r, m.row(r));
  return m;
}
}  // namespace

static_assert(LinearFormat<quant::Q8_0> && LinearFormat<quant::Q4_0> && LinearFormat<quant::Q4_K> &&
              LinearFormat<quant::Q6_K> && LinearFormat<quant::NF4> &&
              LinearFormat<quant::Int8Row> && LinearFormat<quant::Fp8Block>);

TEST_CASE_TEMPLATE("Linear<Q> equals Linear<float> over the dequantized weight", Q, quant::Q8_0,
                   quant::Q4_0, quant::Q4_K, quant::Q6_K, quant::NF4, quant::Int8Row,
                   quant::Fp8Block) {
  ThreadPool pool(2);
  const std::size_t out = 300, in = 512;
  const auto wf = test::random_matrix<float>(out, in, 3);
  const auto q = quant::quantize<Q>(wf.data(), out, in);
  const auto deq = dequantized(q.view());
  const auto bias = test::random_floats(out, 4);
  for (std::size_t T : {1u, 7u}) {
    const auto x = test::random_matrix<float>(T, in, 5 + T, -2.f, 2.f);
    Matrix<float> y(T, out), r(T, out);
    Linear<Q>(q.view(), bias.data()).forward(pool, x.cview(), y.view());
    Linear<float>(deq.cview(), bias.data()).forward(pool, x.cview(), r.view());
    // Integer formats quantize x per 32 to int8: each product term moves by at most
    // |w| * max|x_block| / 254; bound the sum by in * max|w| * 2 / 254 (x in [-2, 2)) plus
    // float rounding. Float-activation formats (NF4, FP8) differ by rounding only.
    double wmax = 0;
    for (std::size_t i = 0; i < out * in; ++i)
      wmax = std::max(wmax, std::abs(double(deq.data()[i])));
    const double bound = quant::kUsesQ8Act<Q>
                             ? double(in) * wmax * 2.0 / 254.0 + 1e-3
                             : 4.0 * double(in) * std::numeric_limits<float>::epsilon() * wmax * 2;
    double err = 0;
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t o = 0; o < out; ++o)
        err = std::max(err, std::abs(double(y(t, o) - r(t, o))));
    CHECK(err <= bound);
  }
  SUBCASE("row slices address the same rows") {
    const auto s = LinearTraits<Q>::slice_rows(q.view(), 128, 128);
    std::vector<float> a(in), b(in);
    quant::dequantize_row(s, 5, a.data());
    quant::dequantize_row(q.view(), 133, b.data());
    CHECK(a == b);
    CHECK_THROWS_AS(LinearTraits<Q>::slice_rows(q.view(), 200, 101), Error);
  }
  SUBCASE("embedding rows decode exactly") {
    Embedding<Q> emb(q.view());
    const std::int32_t ids[] = {0, 299, 17};
    Matrix<float> e(3, in);
    emb.forward(ids, e.view());
    for (std::size_t t = 0; t < 3; ++t)
      for (std::size_t i = 0; i < in; ++i) CHECK(e(t, i) == deq(std::size_t(ids[t]), i));
    const std::int32_t bad[] = {300};
    Matrix<float> e1(1, in);
    CHECK_THROWS_AS(emb.forward(bad, e1.view()), Error);
  }
}

TEST_CASE("FP8-block slices must start on a 128-row scale tile") {
  const auto wf = test::random_matrix<float>(256, 128, 9);
  const auto q = quant::quantize<quant::Fp8Block>(wf.data(), 256, 128);
  CHECK_THROWS_AS(LinearTraits<quant::Fp8Block>::slice_rows(q.view(), 64, 64), Error);
}

// MoE<Fp8Block> (float activations, so routing cannot flip) against MoE<float> over the
// dequantized experts, in the decode (row-blocked) and prefill (per-expert) paths.
TEST_CASE("MoE<Fp8Block> equals MoE<float> over the dequantized experts") {
  using Q = quant::Fp8Block;
  ThreadPool pool(2);
  const std::size_t d = 256, I = 384, E = 8;
  std::vector<quant::QuantMatrix<Q>> qs;
  std::vector<Matrix<float>> fs;
  for (std::size_t e = 0; e < 3 * (E + 1); ++e) {
    const bool down = e % 3 == 2;
    const auto w = test::random_matrix<float>(down ? d : I, down ? I : d, 100 + e, -0.5f, 0.5f);
    qs.push_back(quant::quantize<Q>(w.data(), w.rows(), w.cols()));
    fs.push_back(dequantized(qs.back().view()));
  }
  const auto gw = test::random_matrix<float>(E, d, 7);
  const auto gq = quant::quantize<Q>(gw.data(), E, d);
  const auto gf = dequantized(gq.view());
  RouterConfig c;
  c.method = RouterMethod::softmax_topk;
  c.n_experts = E, c.top_k = 2;
  std::vector<SwigluMlp<Q>> eq, sq;
  std::vector<SwigluMlp<float>> ef, sf;
  for (std::size_t e = 0; e <= E; ++e) {
    auto& tq = e < E ? eq : sq;
    auto& tf = e < E ? ef : sf;
    tq.emplace_back(qs[3 * e].view(), qs[3 * e + 1].view(), qs[3 * e + 2].view());
    tf.emplace_back(fs[3 * e].cview(), fs[3 * e + 1].cview(), fs[3 * e + 2].cview());
  }
  MoE<Q> mq(Router<Q>(c, gq.view()), std::move(eq), std::move(sq));
  MoE<float> mf(Router<float>(c, gf.cview()), std::move(ef), std::move(sf));
  for (std::size_t T : {1u, 40u}) {
    const auto x = test::random_matrix<float>(T, d, 11 + T);
    Matrix<float> y(T, d), r(T, d);
    mq.forward(pool, x.cview(), y.view());
    mf.forward(pool, x.cview(), r.view());
    CHECK(test::rel_error(y.cview(), r.cview()) <=
          8.0 * double(d + I) * std::numeric_limits<float>::epsilon());
  }
}
