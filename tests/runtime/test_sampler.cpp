// Sampler: greedy, the filters, reproducibility per seed, and that draws follow the filtered
// distribution (frequency error bound: 5 standard deviations of a binomial over 20000 draws).
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <vector>

#include "tmoe/runtime/sampler.hpp"

using namespace tmoe;

namespace {
std::vector<double> softmax(const std::vector<float>& l, float t) {
  std::vector<double> p(l.size());
  double m = -1e300, s = 0;
  for (float x : l) m = std::max(m, double(x) / t);
  for (std::size_t i = 0; i < l.size(); ++i) s += (p[i] = std::exp(double(l[i]) / t - m));
  for (auto& x : p) x /= s;
  return p;
}
std::map<int, int> draw(SamplerConfig cfg, const std::vector<float>& logits, int n) {
  Sampler s(cfg);
  std::map<int, int> counts;
  for (int i = 0; i < n; ++i) {
    auto l = logits;
    counts[s.sample(l)]++;
  }
  return counts;
}
void expect_frequencies(const std::map<int, int>& counts, const std::vector<double>& want, int n) {
  for (std::size_t id = 0; id < want.size(); ++id) {
    const int c = counts.count(int(id)) ? counts.at(int(id)) : 0;
    const double sd = std::sqrt(n * want[id] * (1 - want[id])) + 1e-9;
    INFO("token " << id << " count " << c << " expected " << n * want[id]);
    CHECK(std::abs(c - n * want[id]) <= 5 * sd + 1);
  }
}
}  // namespace

TEST_CASE("greedy picks the argmax, ties to the lowest id") {
  Sampler s({.temperature = 0.f});
  std::vector<float> l{0.1f, 3.f, -1.f, 3.f};
  CHECK(s.sample(l) == 1);
  Sampler k1({.temperature = 1.f, .top_k = 1});
  l = {0.f, 0.5f, 2.f};
  CHECK(k1.sample(l) == 2);
}

TEST_CASE("temperature sampling follows softmax(logits / T)") {
  const std::vector<float> logits{1.f, 2.f, 0.5f, -1.f, 1.5f};
  const int n = 20000;
  auto counts = draw({.temperature = 0.7f, .seed = 1}, logits, n);
  expect_frequencies(counts, softmax(logits, 0.7f), n);
}

TEST_CASE("top-k, top-p and min-p restrict the support and renormalize") {
  const std::vector<float> logits{2.f, 1.f, 0.f, -1.f, -2.f};
  const int n = 20000;
  // top-k 2: only ids 0, 1 with renormalized softmax.
  {
    auto counts = draw({.temperature = 1.f, .top_k = 2, .seed = 2}, logits, n);
    auto p = softmax({2.f, 1.f}, 1.f);
    expect_frequencies(counts, {p[0], p[1], 0, 0, 0}, n);
  }
  // top-p 0.8: softmax = .636 .234 .086 .032 .012 -> prefix {0,1} reaches .870 >= .8.
  {
    auto counts = draw({.temperature = 1.f, .top_p = 0.8f, .seed = 3}, logits, n);
    auto p = softmax({2.f, 1.f}, 1.f);
    expect_frequencies(counts, {p[0], p[1], 0, 0, 0}, n);
  }
  // min-p 0.1: keep p >= 0.0636 -> {0, 1, 2}.
  {
    auto counts = draw({.temperature = 1.f, .min_p = 0.1f, .seed = 4}, logits, n);
    auto p = softmax({2.f, 1.f, 0.f}, 1.f);
    expect_frequencies(counts, {p[0], p[1], p[2], 0, 0}, n);
  }
}

TEST_CASE("distribution() is what sample() draws from (the CUDA sampler's reference)") {
  // logits {2, 1, 0, -1, NaN}, T = 1, top-k 3, top-p 0.8: softmax over {2, 1, 0} is
  // e^{0, -1, -2} / sum = 0.665, 0.245, 0.090; the prefix reaching 0.8 is the first two, which
  // renormalize to 0.731, 0.269.
  SamplerConfig cfg;
  cfg.temperature = 1.f, cfg.top_k = 3, cfg.top_p = 0.8f;
  std::vector<float> l = {2.f, 1.f, 0.f, -1.f, NAN};
  Sampler s(cfg);
  const auto d = s.distribution(l);
  REQUIRE(d.size() == 2);
  const double z = 1 + std::exp(-1.0);
  CHECK(d[0].first == 0);
  CHECK(d[1].first == 1);
  CHECK(d[0].second == doctest::Approx(1 / z).epsilon(1e-12));
  CHECK(d[1].second == doctest::Approx(std::exp(-1.0) / z).epsilon(1e-12));
  // Its support and probabilities are sample()'s frequencies.
  const std::vector<float> wide = {0.3f, -1.2f, 2.0f, 1.1f, 0.9f, -0.4f, 1.7f, 0.0f};
  SamplerConfig c2;
  c2.temperature = 0.8f, c2.top_p = 0.9f, c2.min_p = 0.05f;
  auto lw = wide;
  const auto d2 = Sampler(c2).distribution(lw);
  std::vector<double> want(wide.size(), 0.0);
  double sum = 0;
  for (const auto& [id, p] : d2) want[std::size_t(id)] = p, sum += p;
  CHECK(sum == doctest::Approx(1.0).epsilon(1e-12));
  const int n = 20000;
  expect_frequencies(draw(c2, wide, n), want, n);
  // Greedy configs: the argmax with probability 1, after the penalty.
  SamplerConfig g;
  g.temperature = 0.f, g.repetition_penalty = 4.f;
  auto lg = wide;
  const std::vector<std::int32_t> hist = {2};
  const auto dg = Sampler(g).distribution(lg, hist);
  REQUIRE(dg.size() == 1);
  CHECK(dg[0].first == 6);  // 2.0 / 4 = 0.5 falls below 1.7
  CHECK(dg[0].second == 1.0);
}

TEST_CASE("same seed, same tokens; different seed, different tokens") {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = float(i % 7) * 0.3f;
  auto run = [&](std::uint64_t seed) {
    Sampler s({.temperature = 1.f, .seed = seed});
    std::vector<int> out;
    for (int i = 0; i < 64; ++i) {
      auto l = logits;
      out.push_back(s.sample(l));
    }
    return out;
  };
  CHECK(run(7) == run(7));
  CHECK(run(7) != run(8));
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits once per token") {
  Sampler s({.temperature = 0.f, .repetition_penalty = 2.f});
  std::vector<float> l{4.f, 3.f, -1.f};
  const std::vector<std::int32_t> hist{0, 0, 2};
  CHECK(s.sample(l, hist) == 1);  // 4/2 = 2 < 3
  CHECK(l[0] == 2.f);
  CHECK(l[2] == -2.f);
}

TEST_CASE("bad sampler settings are errors") {
  CHECK_THROWS_WITH(Sampler({.top_p = 0.f}), "[sampler] top_p must be in (0, 1], got 0");
  CHECK_THROWS_WITH(Sampler({.repetition_penalty = 0.f}),
                    "[sampler] repetition_penalty must be > 0, got 0");
  Sampler s({.temperature = 1.f});
  std::vector<float> empty;
  CHECK_THROWS(s.sample(empty));
}
