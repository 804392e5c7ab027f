// Residual-add + RMSNorm, RoPE, SwiGLU and the two routers against small CPU references that
// follow the same rounding steps in double precision.
//
// Bounds: float outputs within 2e-6 of the largest |ref| (fp32 rounding; rsqrtf, expf and
// sincosf differ from double in the last bits); bf16 outputs within 2 bf16 ulps of the reference
// plus 1e-6 of the largest |ref| (|d| <= 2^-6 |ref| + 1e-6 max|ref|): an intermediate on the
// other side of a bf16 rounding boundary moves the result by one ulp, a chain has at most two
// roundings, and the floor covers fp32 cancellation in RoPE's a c - b s near zero.
// Routers: the same experts in the same order, weights within 1e-5 relative.
#include <algorithm>
#include <numeric>
#include <string>

#include "cuda_test_util.hpp"

using namespace tmoe;

namespace {

template <class T>
double tol(double ref, double scale) {
  if constexpr (std::is_same_v<T, float>)
    return 2e-6 * scale + 1e-30;
  else
    return std::ldexp(std::abs(ref), -6) + 1e-6 * scale;
}

template <class T>
void check_close(const std::vector<T>& got, const std::vector<double>& ref, const char* what) {
  double scale = 1e-30;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  std::vector<double> bound(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) bound[i] = tol<T>(ref[i], scale);
  const double r = test::worst_ratio(test::widened(got), ref, bound);
  INFO(what, ": worst |got - ref| / bound = ", r);
  CHECK(r <= 1.0);
}

template <class T>
void run_add_rmsnorm(std::size_t rows, std::size_t dim, bool with_x, std::uint64_t seed) {
  const float eps = 1e-6f;
  const auto x = test::rounded<T>(test::random_floats(rows * dim, seed, -1.f, 1.f));
  const auto res = test::rounded<T>(test::random_floats(rows * dim, seed + 1, -3.f, 3.f));
  const auto wt = test::rounded<T>(test::random_floats(dim, seed + 2, 0.5f, 1.5f));
  std::vector<double> ref_out(rows * dim), ref_res(rows * dim);
  for (std::size_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (std::size_t i = 0; i < dim; ++i) {
      float h = to_float(res[r * dim + i]);
      if (with_x) h = round_to<T>(h + to_float(x[r * dim + i]));
      ref_res[r * dim + i] = h;
      ss += double(h) * h;
    }
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (std::size_t i = 0; i < dim; ++i)
      ref_out[r * dim + i] =
          double(round_to<T>(float(ref_res[r * dim + i] * inv))) * to_float(wt[i]);
  }
  auto dx = test::to_device(x);
  auto dres = test::to_device(res);
  auto dw = test::to_device(wt);
  auto dout = test::poisoned<T>(rows * dim);
  cuda::add_rmsnorm(with_x ? dx.data() : nullptr, dres.data(), dw.data(), dout.data(), rows, dim,
                    eps);
  check_close(test::to_host(dout), ref_out, "rmsnorm out");
  // The residual is the exact rounded sum: no tolerance.
  const auto got_res = test::widened(test::to_host(dres));
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < got_res.size(); ++i) mismatches += got_res[i] != ref_res[i];
  CHECK(mismatches == 0);
}

template <class T>
void run_rope(std::size_t tokens, std::size_t heads, std::size_t ld_head, std::size_t ld_token,
              std::size_t rope_begin, std::size_t rope_dim, cuda::RopeLayout layout,
              std::uint64_t seed) {
  const std::size_t n = ld_token * tokens;
  const auto x = test::rounded<T>(test::random_floats(n, seed, -2.f, 2.f));
  std::mt19937_64 rng(seed + 1);
  std::vector<std::int32_t> pos(tokens);
  for (auto& p : pos) p = std::int32_t(rng() % 163840);
  std::vector<float> inv_freq(rope_dim / 2);
  for (std::size_t i = 0; i < inv_freq.size(); ++i)
    inv_freq[i] = float(std::pow(10000.0, -2.0 * double(i) / double(rope_dim)));
  const float attn = 1.25f;
  std::vector<double> ref(n);
  for (std::size_t i = 0; i < n; ++i) ref[i] = to_float(x[i]);
  const std::size_t half = rope_dim / 2;
  for (std::size_t t = 0; t < tokens; ++t)
    for (std::size_t h = 0; h < heads; ++h)
      for (std::size_t i = 0; i < half; ++i) {
        const std::size_t base = t * ld_token + h * ld_head + rope_begin;
        const std::size_t ia = layout == cuda::RopeLayout::interleaved ? base + 2 * i : base + i;
        const std::size_t ib =
            layout == cuda::RopeLayout::interleaved ? base + 2 * i + 1 : base + i + half;
        const float angle = float(pos[t]) * inv_freq[i];  // fp32 angle, as the kernel
        const double c = std::cos(double(angle)) * attn, s = std::sin(double(angle)) * attn;
        const double a = to_float(x[ia]), b = to_float(x[ib]);
        ref[ia] = a * c - b * s;
        ref[ib] = a * s + b * c;
      }
  auto dx = test::to_device(x);
  auto dpos = test::to_device(pos);
  auto dfreq = test::to_device(inv_freq);
  cuda::rope(dx.data(), tokens, heads, ld_token, ld_head, rope_begin, rope_dim, dpos.data(),
             dfreq.data(), attn, layout);
  // Elements outside the rope range must be untouched (ref keeps them as they were).
  check_close(test::to_host(dx), ref, "rope");
}

}  // namespace

TEST_CASE("cuda add_rmsnorm") {
  std::uint64_t seed = 300;
  for (std::size_t dim : {7168u, 1536u, 513u, 64u})
    for (bool with_x : {true, false}) {
      CAPTURE(dim);
      CAPTURE(with_x);
      run_add_rmsnorm<float>(3, dim, with_x, seed);
      run_add_rmsnorm<bf16>(3, dim, with_x, seed);
      seed += 3;
    }
}

TEST_CASE("cuda rope: interleaved and half-split on a sub-range of each head") {
  using L = cuda::RopeLayout;
  for (L layout : {L::interleaved, L::half_split}) {
    CAPTURE(int(layout));
    // MLA q: 5 tokens x 16 heads of 192, rope on dims [128, 192).
    run_rope<bf16>(5, 16, 192, 16 * 192, 128, 64, layout, 400);
    run_rope<float>(5, 16, 192, 16 * 192, 128, 64, layout, 401);
    // MLA k_pe: one head inside the kv_a output row of 576, dims [512, 576).
    run_rope<bf16>(7, 1, 576, 576, 512, 64, layout, 402);
    // Qwen2-style full head of 128, 3 heads.
    run_rope<float>(3, 3, 128, 3 * 128, 0, 128, layout, 403);
  }
}

TEST_CASE("cuda swiglu with separate and fused gate/up rows") {
  for (std::size_t width : {2048u, 18432u, 77u}) {
    const std::size_t rows = 3, ld = 2 * width;  // fused [gate | up] rows
    const auto gu = test::random_floats(rows * ld, width, -6.f, 6.f);
    auto run = [&]<class T>(T) {
      const auto g = test::rounded<T>(gu);
      std::vector<double> ref(rows * width);
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < width; ++j) {
          const double gv = to_float(g[r * ld + j]), uv = to_float(g[r * ld + width + j]);
          ref[r * width + j] = double(round_to<T>(float(gv / (1 + std::exp(-gv))))) * uv;
        }
      auto dg = test::to_device(g);
      auto dout = test::poisoned<T>(rows * width);
      cuda::swiglu(dg.data(), ld, dg.data() + width, ld, dout.data(), width, rows, width);
      check_close(test::to_host(dout), ref, "swiglu");
    };
    CAPTURE(width);
    run(float{});
    run(bf16{});
  }
}

namespace {

struct RouteRef {
  std::vector<std::int32_t> idx;
  std::vector<double> w;
};

// Indices of the k largest of v (ties: lower index first), best first.
std::vector<std::int32_t> top_indices(const std::vector<double>& v, std::size_t k) {
  std::vector<std::int32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  order.resize(k);
  return order;
}

RouteRef ref_sigmoid_grouped(const float* l, const float* bias, std::size_t E, std::size_t n_group,
                             std::size_t topk_group, std::size_t k, bool norm, double scale) {
  std::vector<double> s(E), c(E);
  for (std::size_t e = 0; e < E; ++e) {
    s[e] = 1.0 / (1.0 + std::exp(-double(l[e])));
    c[e] = s[e] + bias[e];
  }
  const std::size_t G = E / n_group;
  std::vector<double> gscore(n_group);
  for (std::size_t g = 0; g < n_group; ++g) {
    std::vector<double> grp(c.begin() + g * G, c.begin() + (g + 1) * G);
    std::partial_sort(grp.begin(), grp.begin() + 2, grp.end(), std::greater<>());
    gscore[g] = grp[0] + grp[1];
  }
  const auto kept = top_indices(gscore, topk_group);
  std::vector<double> masked(E, -INFINITY);
  for (int g : kept)
    for (std::size_t e = g * G; e < (g + 1) * G; ++e) masked[e] = c[e];
  RouteRef r;
  r.idx = top_indices(masked, k);
  double sum = 0;
  for (int e : r.idx) r.w.push_back(s[e]), sum += s[e];
  for (double& w : r.w) w = (norm ? w / (sum + 1e-20) : w) * scale;
  return r;
}

RouteRef ref_softmax(const float* l, std::size_t E, std::size_t k, bool norm, double scale) {
  std::vector<double> p(E);
  const double m = *std::max_element(l, l + E);
  double z = 0;
  for (std::size_t e = 0; e < E; ++e) z += p[e] = std::exp(double(l[e]) - m);
  for (double& v : p) v /= z;
  RouteRef r;
  r.idx = top_indices(p, k);
  double sum = 0;
  for (int e : r.idx) r.w.push_back(p[e]), sum += p[e];
  for (double& w : r.w) w = (norm ? w / sum : w) * scale;
  return r;
}

void check_routes(const std::vector<std::int32_t>& idx, const std::vector<float>& w, std::size_t t,
                  std::size_t k, const RouteRef& ref) {
  for (std::size_t j = 0; j < k; ++j) {
    CAPTURE(t);
    CAPTURE(j);
    CHECK(idx[t * k + j] == ref.idx[j]);
    CHECK(std::abs(w[t * k + j] - ref.w[j]) <= 1e-5 * std::abs(ref.w[j]));
  }
}

// The routers' optional counts: base + the number of times each expert was chosen.
void check_counts(const std::vector<std::int32_t>& idx, const std::vector<std::uint32_t>& counts,
                  std::size_t E, std::uint32_t base) {
  std::vector<std::uint32_t> want(E, base);
  for (std::int32_t e : idx) ++want[std::size_t(e)];
  CHECK(counts == want);
}

}  // namespace

TEST_CASE("cuda router: sigmoid, group-limited top-k with selection bias") {
  struct Cfg {
    std::size_t E, n_group, topk_group, k;
    bool norm;
    float scale;
  };
  // R1 (256 experts, 8 groups, 4 kept, top 8, x2.5); no groups; the kernel's limits.
  for (const Cfg& cfg : {Cfg{256, 8, 4, 8, true, 2.5f}, Cfg{64, 1, 1, 6, false, 1.f},
                         Cfg{1024, 32, 7, 32, true, 1.5f}, Cfg{72, 3, 2, 5, true, 1.f}}) {
    CAPTURE(cfg.E);
    CAPTURE(cfg.n_group);
    const std::size_t T = 9;
    const auto logits = test::random_floats(T * cfg.E, cfg.E, -4.f, 4.f);
    // Biases of either sign, larger than sigmoid differences, so they change the choice.
    const auto bias = test::random_floats(cfg.E, cfg.E + 1, -0.3f, 0.3f);
    auto dl = test::to_device(logits);
    auto db = test::to_device(bias);
    auto didx = test::poisoned<std::int32_t>(T * cfg.k);
    auto dw = test::poisoned<float>(T * cfg.k);
    auto dcount = test::to_device(std::vector<std::uint32_t>(cfg.E, 5u));
    cuda::router_sigmoid_grouped_topk(dl.data(), db.data(), didx.data(), dw.data(), T, cfg.E,
                                      cfg.n_group, cfg.topk_group, cfg.k, cfg.norm, cfg.scale,
                                      nullptr, dcount.data());
    const auto idx = test::to_host(didx);
    check_counts(idx, test::to_host(dcount), cfg.E, 5u);
    const auto w = test::to_host(dw);
    for (std::size_t t = 0; t < T; ++t)
      check_routes(idx, w, t, cfg.k,
                   ref_sigmoid_grouped(&logits[t * cfg.E], bias.data(), cfg.E, cfg.n_group,
                                       cfg.topk_group, cfg.k, cfg.norm, cfg.scale));
  }
}

TEST_CASE("cuda router: softmax top-k") {
  struct Cfg {
    std::size_t E, k;
    bool norm;
    float scale;
  };
  // Mixtral 8/2 renormalized; DeepSeek-V2-Lite 64/6 not renormalized; V2 160/6 x16; limits.
  for (const Cfg& cfg : {Cfg{8, 2, true, 1.f}, Cfg{64, 6, false, 1.f}, Cfg{160, 6, false, 16.f},
                         Cfg{1024, 32, true, 1.f}}) {
    CAPTURE(cfg.E);
    const std::size_t T = 5;
    const auto logits = test::random_floats(T * cfg.E, cfg.E + 7, -5.f, 5.f);
    auto dl = test::to_device(logits);
    auto didx = test::poisoned<std::int32_t>(T * cfg.k);
    auto dw = test::poisoned<float>(T * cfg.k);
    auto dcount = test::to_device(std::vector<std::uint32_t>(cfg.E, 0u));
    cuda::router_softmax_topk(dl.data(), didx.data(), dw.data(), T, cfg.E, cfg.k, cfg.norm,
                              cfg.scale, nullptr, dcount.data());
    const auto idx = test::to_host(didx);
    check_counts(idx, test::to_host(dcount), cfg.E, 0u);
    const auto w = test::to_host(dw);
    for (std::size_t t = 0; t < T; ++t)
      check_routes(idx, w, t, cfg.k,
                   ref_softmax(&logits[t * cfg.E], cfg.E, cfg.k, cfg.norm, cfg.scale));
  }
}
