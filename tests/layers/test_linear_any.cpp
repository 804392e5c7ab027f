// AnyFormat (layers/linear_any.hpp): a run-time-typed weight must give bit for bit what the
// typed format gives: Linear, row slices, embedding rows, and MoE over mixed expert formats.
#include <doctest/doctest.h>

#include <vector>

#include "layer_test_util.hpp"
#include "tmoe/layers/linear_any.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;

static_assert(LinearFormat<AnyFormat>);

namespace {
template <class Q>
AnyKind kind_of() {
  if constexpr (std::is_same_v<Q, quant::Q8_0>) return AnyKind::q8_0;
  if constexpr (std::is_same_v<Q, quant::Q4_0>) return AnyKind::q4_0;
  if constexpr (std::is_same_v<Q, quant::Q4_K>) return AnyKind::q4_k;
  if constexpr (std::is_same_v<Q, quant::Q6_K>) return AnyKind::q6_k;
}
}  // namespace

TEST_CASE_TEMPLATE("Linear<AnyFormat> equals the typed block format bit for bit", Q, quant::Q8_0,
                   quant::Q4_0, quant::Q4_K, quant::Q6_K) {
  ThreadPool pool(2);
  const std::size_t out = 96, in = 512;
  const auto wf = test::random_matrix<float>(out, in, 11);
  const auto q = quant::quantize<Q>(wf.data(), out, in);
  const auto any = AnyMatrixView::of(kind_of<Q>(), q.view().blocks, out, in);
  CHECK(any.bytes() == out * (in / Q::kBlockSize) * sizeof(typename Q::Block));
  const auto bias = test::random_floats(out, 12);
  const auto x = test::random_matrix<float>(5, in, 13, -2.f, 2.f);
  Matrix<float> y(5, out), r(5, out);
  Linear<AnyFormat>(any, bias.data()).forward(pool, x.cview(), y.view());
  Linear<Q>(q.view(), bias.data()).forward(pool, x.cview(), r.view());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y.data()[i] == r.data()[i]);
  // Row slices and embedding rows address the same data.
  const auto s = LinearTraits<AnyFormat>::slice_rows(any, 32, 64);
  Matrix<float> ys(5, 64), rs(5, 64);
  LinearTraits<AnyFormat>::matmul(pool, s, x.cview(), ys.view(), nullptr, cpu::kernels());
  LinearTraits<Q>::matmul(pool, LinearTraits<Q>::slice_rows(q.view(), 32, 64), x.cview(), rs.view(),
                          nullptr, cpu::kernels());
  for (std::size_t i = 0; i < ys.size(); ++i) CHECK(ys.data()[i] == rs.data()[i]);
  CHECK_THROWS_AS(LinearTraits<AnyFormat>::slice_rows(any, 90, 7), Error);
  // With the interleaved copy (Q4_0 / Q8_0 / Q4_K) a slice keeps it where the typed slice does
  // (cut at its units: 32 rows, Q4_K 8; quant::x8_slice_keeps_copy) and gives the typed bits.
  if constexpr (quant::kRepackX8<Q>) {
    auto qp = q;
    qp.repack();
    AnyMatrixView ap = AnyMatrixView::of(kind_of<Q>(), qp.view().blocks, out, in);
    ap.packed = qp.view().packed;
    for (const auto& [b, n] : {std::pair<std::size_t, std::size_t>{32, 64}, {8, 40}, {64, 32}}) {
      CAPTURE(b);
      const auto sa = LinearTraits<AnyFormat>::slice_rows(ap, b, n);
      const auto st = LinearTraits<Q>::slice_rows(qp.view(), b, n);
      CHECK((st.packed != nullptr) == (b % (8 * quant::kX8Unit<Q>) == 0));
      CHECK((sa.packed != nullptr) == (st.packed != nullptr));
      Matrix<float> ya(5, n), yt(5, n);
      LinearTraits<AnyFormat>::matmul(pool, sa, x.cview(), ya.view(), nullptr, cpu::kernels());
      LinearTraits<Q>::matmul(pool, st, x.cview(), yt.view(), nullptr, cpu::kernels());
      for (std::size_t i = 0; i < ya.size(); ++i) CHECK(ya.data()[i] == yt.data()[i]);
    }
  }
  Embedding<AnyFormat> ea(any);
  Embedding<Q> eq(q.view());
  const std::int32_t ids[] = {0, 95, 40};
  Matrix<float> a(3, in), b(3, in);
  ea.forward(ids, a.view());
  eq.forward(ids, b.view());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a.data()[i] == b.data()[i]);
  // Block rows cannot be read as dense rows (MLA's absorbed kv_b).
  CHECK_THROWS_WITH_AS(LinearTraits<AnyFormat>::with_dense_rows(any, [](auto) {}),
                       doctest::Contains("cannot be read directly"), Error);
}

TEST_CASE_TEMPLATE("Linear<AnyFormat> equals the typed dense format bit for bit", E, float, bf16,
                   f16) {
  ThreadPool pool(2);
  const std::size_t out = 40, in = 64;
  const auto w = test::random_matrix<E>(out, in, 21);
  const auto x = test::random_matrix<float>(3, in, 22);
  Matrix<float> y(3, out), r(3, out);
  Linear<AnyFormat>(AnyMatrixView::of<E>(w.cview())).forward(pool, x.cview(), y.view());
  Linear<E>(w.cview()).forward(pool, x.cview(), r.view());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y.data()[i] == r.data()[i]);
  bool called = false;
  LinearTraits<AnyFormat>::with_dense_rows(AnyMatrixView::of<E>(w.cview()), [&](auto v) {
    called = std::is_same_v<decltype(v), MatrixView<const E>> &&
             static_cast<const void*>(v.data()) == static_cast<const void*>(w.data());
  });
  CHECK(called);
}

TEST_CASE("MoE<AnyFormat> with experts in different formats equals per-expert typed layers") {
  ThreadPool pool(2);
  const std::size_t d = 256, I = 256, E = 4, T = 6;
  RouterConfig rc;
  rc.n_experts = E, rc.top_k = 2, rc.method = RouterMethod::softmax_topk, rc.norm_topk_prob = true;
  const auto gate = test::random_matrix<float>(E, d, 31);
  std::vector<quant::QuantMatrix<quant::Q8_0>> q8;
  std::vector<quant::QuantMatrix<quant::Q4_K>> q4;
  std::vector<SwigluMlp<AnyFormat>> any_experts;
  for (std::size_t e = 0; e < E; ++e) {
    AnyMatrixView v[3];
    for (int m = 0; m < 3; ++m) {
      const auto wf = test::random_matrix<float>(I, d, 40 + 3 * e + m);
      if (e % 2 == 0) {
        q8.push_back(quant::quantize<quant::Q8_0>(wf.data(), I, d));
        v[m] = AnyMatrixView::of(AnyKind::q8_0, q8.back().view().blocks, I, d);
      } else {
        q4.push_back(quant::quantize<quant::Q4_K>(wf.data(), I, d));
        v[m] = AnyMatrixView::of(AnyKind::q4_k, q4.back().view().blocks, I, d);
      }
    }
    any_experts.emplace_back(v[0], v[1], v[2]);
  }
  MoE<AnyFormat> moe(Router<AnyFormat>(rc, AnyMatrixView::of<float>(gate.cview())),
                     std::move(any_experts));
  const auto x = test::random_matrix<float>(T, d, 50);
  Matrix<float> y(T, d);
  moe.forward(pool, x.cview(), y.view());
  // Reference: route with the float gate, then run each chosen expert as its typed format.
  Matrix<std::int32_t> idx(T, 2);
  Matrix<float> wgt(T, 2);
  Router<float>(rc, gate.cview()).forward(pool, x.cview(), idx.view(), wgt.view());
  std::size_t i8 = 0, i4 = 0;
  std::vector<std::size_t> slot(E);
  for (std::size_t e = 0; e < E; ++e) slot[e] = e % 2 == 0 ? 3 * i8++ : 3 * i4++;
  double err = 0, scale = 0;
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<float> ref(d, 0.f);
    for (std::size_t k = 0; k < 2; ++k) {
      const std::size_t e = static_cast<std::size_t>(idx(t, k));
      Matrix<float> o(1, d);
      const auto xt = x.cview().row_range(t, 1);
      if (e % 2 == 0)
        SwigluMlp<quant::Q8_0>(q8[slot[e]].view(), q8[slot[e] + 1].view(), q8[slot[e] + 2].view())
            .forward(pool, xt, o.view());
      else
        SwigluMlp<quant::Q4_K>(q4[slot[e]].view(), q4[slot[e] + 1].view(), q4[slot[e] + 2].view())
            .forward(pool, xt, o.view());
      for (std::size_t j = 0; j < d; ++j) ref[j] += wgt(t, k) * o(0, j);
    }
    for (std::size_t j = 0; j < d; ++j) {
      err = std::max(err, double(std::abs(y(t, j) - ref[j])));
      scale = std::max(scale, double(std::abs(ref[j])));
    }
  }
  // Same kernels on the same data; only the order of the weighted sum may differ.
  CHECK(err <= 1e-5 * scale);
}

TEST_CASE("SharedQ8Input: q/k/v-style products over one quantized x equal Linear::forward") {
  // Three matrices over the same x, as attention's q/k/v: a Q4_0 one with its 8-row interleaved
  // copy (the decode kernels), a Q8_0 one without, an F16 one (not quantized: runs on the float
  // rows); biases on two. Decode-sized T share one quantization, T >= kQuantGemmMinT does not
  // quantize at all; every product must be bit-identical to the per-matrix forward.
  ThreadPool pool(2);
  const std::size_t in = 256;
  auto q4 = quant::quantize<quant::Q4_0>(test::random_matrix<float>(40, in, 31).data(), 40, in);
  q4.repack();
  const auto q8 =
      quant::quantize<quant::Q8_0>(test::random_matrix<float>(24, in, 32).data(), 24, in);
  const auto wf16 = test::random_matrix<f16>(16, in, 33);
  const auto b4 = test::random_floats(40, 34), b16 = test::random_floats(16, 35);
  AnyMatrixView a4 = AnyMatrixView::of(AnyKind::q4_0, q4.view().blocks, 40, in);
  a4.packed = q4.view().packed;
  REQUIRE(a4.packed != nullptr);
  const Linear<AnyFormat> l4(a4, b4.data()),
      l8(AnyMatrixView::of(AnyKind::q8_0, q8.view().blocks, 24, in)),
      l16(AnyMatrixView::of(wf16.cview()), b16.data());
  CHECK(l4.reads_q8_acts());
  CHECK(l8.reads_q8_acts());
  CHECK_FALSE(l16.reads_q8_acts());
  CHECK_FALSE(Linear<float>().reads_q8_acts());
  SharedQ8Input shared;
  for (const std::size_t T : {std::size_t{1}, std::size_t{3}, cpu::kQuantGemmMinT}) {
    CAPTURE(T);
    const auto x = test::random_matrix<float>(T, in, 36 + T, -2.f, 2.f);
    shared.prepare<AnyFormat>(pool, x.cview(), {&l4, &l8, &l16});
    for (const Linear<AnyFormat>* l : {&l4, &l8, &l16}) {
      Matrix<float> y(T, l->out_features()), r(T, l->out_features());
      shared.forward(pool, *l, x.cview(), y.view());
      l->forward(pool, x.cview(), r.view());
      for (std::size_t i = 0; i < y.size(); ++i) CHECK(y.data()[i] == r.data()[i]);
    }
  }
  // Typed block format, no bias.
  const Linear<quant::Q4_0> t4(q4.view());
  const auto x = test::random_matrix<float>(2, in, 40, -2.f, 2.f);
  shared.prepare<quant::Q4_0>(pool, x.cview(), {&t4});
  Matrix<float> y(2, 40), r(2, 40);
  shared.forward(pool, t4, x.cview(), y.view());
  t4.forward(pool, x.cview(), r.view());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y.data()[i] == r.data()[i]);
}
