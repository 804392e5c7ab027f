// Routers and the MoE block against their references on every ISA; R1's router self-check
// (8 experts inside 4 groups of 32, weights sum to 2.5); HF's 0.0 group mask; proof that only
// the chosen experts' weights are read; expert-load statistics.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "layer_test_util.hpp"
#include "tmoe/backend/reference/moe.hpp"
#include "tmoe/backend/reference/router.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/layers/router.hpp"

using namespace tmoe;

namespace {
RouterConfig r1_router() {
  RouterConfig c;
  c.method = RouterMethod::noaux_tc;
  c.n_experts = 256, c.top_k = 8, c.n_group = 8, c.topk_group = 4;
  c.norm_topk_prob = true, c.routed_scaling_factor = 2.5f;
  return c;
}
std::vector<std::int32_t> route_one(const RouterConfig& c, const std::vector<float>& logits,
                                    const float* bias, std::vector<float>& w) {
  std::vector<std::int32_t> idx(c.top_k);
  w.resize(c.top_k);
  std::vector<float> s, ch;
  std::vector<std::int32_t> ord;
  route_token(c, logits.data(), bias, idx.data(), w.data(), s, ch, ord);
  return idx;
}
}  // namespace

TEST_CASE("R1-size noaux_tc router: 8 experts inside 4 groups of 32, weights sum to 2.5") {
  ThreadPool pool(2);
  const RouterConfig cfg = r1_router();
  const std::size_t d = 96, T = 40;
  auto gate = test::random_matrix<bf16>(256, d, 1);
  const auto bias = test::random_floats(256, 2, -0.05f, 0.05f);
  auto x = test::random_matrix<float>(T, d, 3);
  test::for_each_isa([&](const cpu::KernelTable& k) {
    Router<bf16> router(cfg, gate.cview(), bias.data());
    Matrix<std::int32_t> idx(T, 8), ridx(T, 8);
    Matrix<float> w(T, 8), rw(T, 8);
    router.forward(pool, x.cview(), idx.view(), w.view(), k);
    reference::router<bf16>(cfg, gate.cview(), bias.data(), x.cview(), ridx.view(), rw.view());
    for (std::size_t t = 0; t < T; ++t) {
      std::set<int> experts, groups;
      double sum = 0;
      for (std::size_t j = 0; j < 8; ++j) {
        experts.insert(idx(t, j));
        groups.insert(idx(t, j) / 32);
        sum += w(t, j);
        CHECK(idx(t, j) == ridx(t, j));
        CHECK(std::abs(w(t, j) - rw(t, j)) <= 1e-6 * std::abs(rw(t, j)));
      }
      CHECK(experts.size() == 8);
      CHECK(groups.size() <= 4);
      CHECK(std::abs(sum - 2.5) <= 1e-6);
    }
  });
}

TEST_CASE("noaux_tc: the bias only chooses; unused groups are masked with 0.0 like HF") {
  RouterConfig c;
  c.method = RouterMethod::noaux_tc;
  c.n_experts = 4, c.top_k = 2, c.n_group = 2, c.topk_group = 1;
  c.routed_scaling_factor = 1.f;
  std::vector<float> w;
  // Equal logits (s = 0.5); biases make group 0 win (-1 > -3), but its c = -0.5 is below the
  // 0.0 fill of the masked group, so HF picks experts 2 and 3 of the dropped group.
  const float bias[] = {-1.f, -1.f, -2.f, -2.f};
  auto idx = route_one(c, {0.f, 0.f, 0.f, 0.f}, bias, w);
  CHECK(std::set<int>(idx.begin(), idx.end()) == std::set<int>{2, 3});
  // Weights come from the unbiased sigmoid: equal scores, renormalized to 1/2 each.
  CHECK(w[0] == doctest::Approx(0.5f));
  CHECK(w[1] == doctest::Approx(0.5f));
  // A large positive bias forces an expert in, but its weight is still its sigmoid share.
  c.topk_group = 2;
  const float bias2[] = {0.f, 10.f, 0.f, 0.f};
  const std::vector<float> logits = {2.f, -1.f, 1.f, 0.f};
  idx = route_one(c, logits, bias2, w);
  CHECK(idx[0] == 1);
  CHECK(idx[1] == 0);
  const double s0 = 1 / (1 + std::exp(-2.0)), s1 = 1 / (1 + std::exp(1.0));
  CHECK(w[0] == doctest::Approx(s1 / (s0 + s1)).epsilon(1e-6));
}

TEST_CASE("Mixtral softmax top-2 of 16 renormalizes over the chosen pair") {
  RouterConfig c;
  c.method = RouterMethod::softmax_topk;
  c.n_experts = 16, c.top_k = 2;
  const auto logits = test::random_floats(16, 9, -3.f, 3.f);
  std::vector<float> w;
  auto idx = route_one(c, logits, nullptr, w);
  std::vector<int> order(16);
  for (int i = 0; i < 16; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  CHECK(idx[0] == order[0]);
  CHECK(idx[1] == order[1]);
  CHECK(w[0] == doctest::Approx(1 / (1 + std::exp(double(logits[order[1]]) - logits[order[0]])))
                    .epsilon(1e-6));
  CHECK(w[0] + w[1] == doctest::Approx(1.0).epsilon(1e-6));
}

TEST_CASE("every router method agrees with the reference") {
  for (RouterMethod m : {RouterMethod::softmax_topk, RouterMethod::noaux_tc,
                         RouterMethod::group_greedy, RouterMethod::greedy}) {
    RouterConfig c;
    c.method = m;
    c.n_experts = 24, c.top_k = 3, c.n_group = 4, c.topk_group = 2;
    c.norm_topk_prob = m != RouterMethod::group_greedy;
    c.routed_scaling_factor = m == RouterMethod::group_greedy ? 16.f : 1.f;
    const auto bias = test::random_floats(24, 5, -0.1f, 0.1f);
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      const auto logits = test::random_floats(24, seed, -4.f, 4.f);
      std::vector<float> w;
      auto idx = route_one(c, logits, m == RouterMethod::noaux_tc ? bias.data() : nullptr, w);
      std::vector<std::int32_t> ridx(3);
      std::vector<float> rw(3);
      reference::route(c, logits.data(), m == RouterMethod::noaux_tc ? bias.data() : nullptr,
                       ridx.data(), rw.data());
      for (int j = 0; j < 3; ++j) {
        CHECK(idx[j] == ridx[j]);
        CHECK(std::abs(w[j] - rw[j]) <= 1e-6 * std::abs(rw[j]) + 1e-7f);
        if (m == RouterMethod::group_greedy || m == RouterMethod::noaux_tc) {
          std::set<int> groups;
          for (int e : idx) groups.insert(e / 6);
          CHECK(groups.size() <= 2);
        }
      }
    }
  }
}

namespace {
template <class WT>
struct MoeFixture {
  std::size_t d, I, E;
  Matrix<WT> gate;
  std::vector<Matrix<WT>> g, u, dn;
  MoeFixture(std::size_t d_, std::size_t I_, std::size_t E_, std::size_t n_shared)
      : d(d_), I(I_), E(E_), gate(test::random_matrix<WT>(E_, d_, 77)) {
    for (std::size_t e = 0; e < E + n_shared; ++e) {
      g.push_back(test::random_matrix<WT>(I, d, 100 + 3 * e));
      u.push_back(test::random_matrix<WT>(I, d, 101 + 3 * e));
      dn.push_back(test::random_matrix<WT>(d, I, 102 + 3 * e));
    }
  }
  std::vector<SwigluMlp<WT>> mlps(std::size_t b, std::size_t e) const {
    std::vector<SwigluMlp<WT>> v;
    for (std::size_t i = b; i < e; ++i) v.emplace_back(g[i].cview(), u[i].cview(), dn[i].cview());
    return v;
  }
  std::vector<reference::MlpWeights<WT>> refs(std::size_t b, std::size_t e) const {
    std::vector<reference::MlpWeights<WT>> v;
    for (std::size_t i = b; i < e; ++i) v.push_back({g[i].cview(), u[i].cview(), dn[i].cview()});
    return v;
  }
};
}  // namespace

TEST_CASE_TEMPLATE("MoE matches the reference on every ISA", WT, float, bf16) {
  ThreadPool pool(3);
  const std::size_t d = 40, I = 24, E = 16;
  MoeFixture<WT> f(d, I, E, 1);
  const auto bias = test::random_floats(E, 8, -0.1f, 0.1f);
  for (RouterMethod m : {RouterMethod::softmax_topk, RouterMethod::noaux_tc}) {
    RouterConfig c;
    c.method = m;
    c.n_experts = E, c.top_k = 2;
    if (m == RouterMethod::noaux_tc)
      c.top_k = 3, c.n_group = 4, c.topk_group = 2, c.routed_scaling_factor = 2.5f;
    const std::size_t n_shared = m == RouterMethod::noaux_tc ? 1 : 0;
    test::for_each_isa([&](const cpu::KernelTable& k) {
      for (std::size_t T : {1u, 5u, 37u}) {
        auto x = test::random_matrix<float>(T, d, T, -2.f, 2.f);
        MoE<WT> moe(
            Router<WT>(c, f.gate.cview(), m == RouterMethod::noaux_tc ? bias.data() : nullptr),
            f.mlps(0, E), f.mlps(E, E + n_shared));
        Matrix<float> y(T, d), r(T, d);
        moe.forward(pool, x.cview(), y.view(), k);
        reference::moe<WT>(c, f.gate.cview(), m == RouterMethod::noaux_tc ? bias.data() : nullptr,
                           f.refs(0, E), f.refs(E, E + n_shared), x.cview(), r.view());
        // Bound: as SwigluMlp (4 (d + I) eps) plus the k-term combine.
        CHECK(test::rel_error(y.cview(), r.cview()) <=
              8.0 * double(d + I) * std::numeric_limits<float>::epsilon());
        const MoeStats& s = moe.stats();
        std::size_t total = 0, active = 0, mx = 0;
        for (auto n : s.tokens_per_expert) total += n, active += n > 0, mx = std::max(mx, n);
        CHECK(total == T * c.top_k);
        CHECK(s.tokens == T);
        CHECK(s.active_experts == active);
        CHECK(s.max_over_mean == doctest::Approx(double(mx) / (double(T * c.top_k) / E)));
      }
    });
  }
}

TEST_CASE("MoE reads only the chosen experts' weights") {
  // Experts 0..7 other than 2 and 5 have NaN weights; a bias steers every token to 2 and 5. Any
  // read of an inactive expert would poison the output.
  ThreadPool pool(2);
  const std::size_t d = 16, I = 8, E = 8;
  MoeFixture<float> f(d, I, E, 0);
  for (std::size_t e = 0; e < E; ++e)
    if (e != 2 && e != 5)
      for (auto* m : {&f.g[e], &f.u[e], &f.dn[e]})
        for (std::size_t i = 0; i < m->size(); ++i)
          m->data()[i] = std::numeric_limits<float>::quiet_NaN();
  RouterConfig c;
  c.method = RouterMethod::noaux_tc;
  c.n_experts = E, c.top_k = 2, c.n_group = 1, c.topk_group = 1;
  std::vector<float> bias(E, 0.f);
  bias[2] = bias[5] = 100.f;
  MoE<float> moe(Router<float>(c, f.gate.cview(), bias.data()), f.mlps(0, E));
  auto x = test::random_matrix<float>(9, d, 1);
  Matrix<float> y(9, d);
  moe.forward(pool, x.cview(), y.view());
  for (std::size_t t = 0; t < 9; ++t)
    for (std::size_t i = 0; i < d; ++i) CHECK(std::isfinite(y(t, i)));
  CHECK(moe.stats().active_experts == 2);
  CHECK(moe.stats().tokens_per_expert[2] == 9);
  CHECK(moe.stats().max_over_mean == doctest::Approx(4.0));
}

TEST_CASE("MoE and router report configuration errors") {
  RouterConfig c;
  c.method = RouterMethod::noaux_tc;
  c.n_experts = 10, c.top_k = 2, c.n_group = 3;
  auto gate = test::random_matrix<float>(10, 4, 1);
  CHECK_THROWS_WITH(Router<float>(c, gate.cview()),
                    "[router] n_experts 10 is not a multiple of n_group 3");
  c.n_group = 2;
  Router<float> r(c, gate.cview());
  CHECK_THROWS_WITH(MoE<float>(std::move(r), {}), "[moe] got 0 experts, router has n_experts = 10");
}

TEST_CASE("MoE decode path splits wide experts into several row blocks") {
  // I = 260 and d = 272 give 3 gate/up blocks and 2 down blocks per expert in the small-batch
  // path (T * top_k <= 64); T = 40 takes the per-expert path. Same bound as above.
  ThreadPool pool(3);
  const std::size_t d = 272, I = 260, E = 6;
  MoeFixture<bf16> f(d, I, E, 1);
  RouterConfig c;
  c.method = RouterMethod::softmax_topk;
  c.n_experts = E, c.top_k = 2;
  for (std::size_t T : {1u, 3u, 40u}) {
    auto x = test::random_matrix<float>(T, d, 50 + T);
    MoE<bf16> moe(Router<bf16>(c, f.gate.cview()), f.mlps(0, E), f.mlps(E, E + 1));
    Matrix<float> y(T, d), r(T, d);
    moe.forward(pool, x.cview(), y.view());
    reference::moe<bf16>(c, f.gate.cview(), nullptr, f.refs(0, E), f.refs(E, E + 1), x.cview(),
                         r.view());
    CHECK(test::rel_error(y.cview(), r.cview()) <=
          8.0 * double(d + I) * std::numeric_limits<float>::epsilon());
  }
}
