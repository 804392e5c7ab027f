// Linear, the SwiGLU MLP and the embedding against their references on every ISA and weight
// type; a toy quantized format plugged into Linear through LinearTraits.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "layer_test_util.hpp"
#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/backend/reference/moe.hpp"
#include "tmoe/layers/embedding.hpp"
#include "tmoe/layers/linear.hpp"
#include "tmoe/layers/mlp.hpp"

using namespace tmoe;

// A toy row-scaled int8 format, to show how a quantized format plugs into Linear.
namespace {
struct ToyInt8 {};
struct ToyInt8View {
  const std::int8_t* q;  // (out, in)
  const float* scale;    // (out)
  std::size_t out, in;
};
}  // namespace

template <>
struct tmoe::LinearTraits<ToyInt8> {
  using weight_view = ToyInt8View;
  static std::size_t out_features(const weight_view& w) { return w.out; }
  static std::size_t in_features(const weight_view& w) { return w.in; }
  static void matmul(ThreadPool&, const weight_view& w, MatrixView<const float> x,
                     MatrixView<float> y, const float* bias, const cpu::KernelTable&) {
    for (std::size_t t = 0; t < x.rows(); ++t)
      for (std::size_t o = 0; o < w.out; ++o) {
        float s = 0;
        for (std::size_t i = 0; i < w.in; ++i) s += float(w.q[o * w.in + i]) * x(t, i);
        y(t, o) = s * w.scale[o] + (bias ? bias[o] : 0.f);
      }
  }
};
static_assert(LinearFormat<ToyInt8>);
static_assert(LinearFormat<bf16>);
static_assert(!LinearFormat<int>);

TEST_CASE_TEMPLATE("Linear matches reference::matmul on every ISA", WT, float, bf16, f16) {
  ThreadPool pool(2);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (std::size_t out : {1u, 9u, 40u})
      for (std::size_t in : {3u, 17u, 130u}) {
        auto w = test::random_matrix<WT>(out, in, out * 7 + in);
        auto x = test::random_matrix<float>(5, in, in);
        const auto bias = test::random_floats(out, 3);
        Matrix<float> y(5, out), r(5, out);
        Linear<WT> lin(w.cview(), bias.data());
        CHECK(lin.out_features() == out);
        CHECK(lin.in_features() == in);
        lin.forward(pool, x.cview(), y.view(), k);
        reference::matmul<WT>(w.cview(), x.cview(), r.view(), bias.data());
        // Bound: float accumulation of `in` products, in * eps of sum |w x| <= in * max|ref|.
        CHECK(test::rel_error(y.cview(), r.cview()) <=
              4.0 * in * std::numeric_limits<float>::epsilon());
      }
  });
}

TEST_CASE("a quantized format plugs into Linear and SwigluMlp through LinearTraits") {
  ThreadPool pool(1);
  const std::size_t out = 6, in = 5;
  std::vector<std::int8_t> q(out * in);
  std::vector<float> scale(out);
  Matrix<float> wf(out, in);
  for (std::size_t o = 0; o < out; ++o) {
    scale[o] = 0.01f * float(o + 1);
    for (std::size_t i = 0; i < in; ++i) {
      q[o * in + i] = static_cast<std::int8_t>(int(o * 31 + i * 17) % 255 - 127);
      wf(o, i) = q[o * in + i] * scale[o];
    }
  }
  Linear<ToyInt8> lin(ToyInt8View{q.data(), scale.data(), out, in});
  auto x = test::random_matrix<float>(2, in, 1);
  Matrix<float> y(2, out), r(2, out);
  lin.forward(pool, x.cview(), y.view());
  reference::matmul<float>(wf.cview(), x.cview(), r.view());
  CHECK(test::rel_error(y.cview(), r.cview()) <= 1e-5);
}

TEST_CASE_TEMPLATE("SwigluMlp matches the reference on every ISA", WT, float, bf16, f16) {
  ThreadPool pool(3);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    for (auto [d, I] : {std::pair<std::size_t, std::size_t>{7, 5}, {40, 24}, {33, 130}})
      for (std::size_t T : {1u, 4u}) {
        auto g = test::random_matrix<WT>(I, d, d + I), u = test::random_matrix<WT>(I, d, d + I + 1);
        auto dn = test::random_matrix<WT>(d, I, d + I + 2);
        auto x = test::random_matrix<float>(T, d, T + d, -2.f, 2.f);
        Matrix<float> y(T, d), r(T, d);
        SwigluMlp<WT> mlp(g.cview(), u.cview(), dn.cview());
        mlp.forward(pool, x.cview(), y.view(), k);
        reference::swiglu_mlp<WT>({g.cview(), u.cview(), dn.cview()}, x.cview(), r.view());
        // Bound: two float accumulations (d then I products) plus exp: 4 (d + I) eps.
        CHECK(test::rel_error(y.cview(), r.cview()) <=
              4.0 * double(d + I) * std::numeric_limits<float>::epsilon());
      }
  });
}

TEST_CASE("SwigluMlp rejects inconsistent shapes") {
  auto g = test::random_matrix<float>(4, 6, 1), dn = test::random_matrix<float>(6, 5, 2);
  CHECK_THROWS_WITH(SwigluMlp<float>(g.cview(), g.cview(), dn.cview()),
                    "[swiglu_mlp] down is (6, 5), expected (6, 4)");
}

TEST_CASE_TEMPLATE("Embedding decodes rows exactly and rejects unknown ids", WT, float, bf16, f16) {
  auto table = test::random_matrix<WT>(11, 9, 4);
  Embedding<WT> emb(table.cview());
  CHECK(emb.vocab_size() == 11);
  const std::int32_t ids[] = {3, 0, 10, 3};
  Matrix<float> out(4, 9);
  emb.forward(ids, out.view());
  for (std::size_t t = 0; t < 4; ++t)
    for (std::size_t i = 0; i < 9; ++i) CHECK(out(t, i) == to_float(table(std::size_t(ids[t]), i)));
  const std::int32_t bad[] = {11};
  Matrix<float> one(1, 9);
  CHECK_THROWS_WITH(emb.forward(bad, one.view()),
                    "[embedding] token id 11 at position 0 is outside the vocabulary of 11");
}
