// cuda::sample (sample.cuh) against the CPU Sampler's distribution (runtime/sampler.hpp,
// Sampler::distribution, the reference twin).
// Exactness by stratification: N copies of one row drawn with u_r = (r + 0.5) / N. The device
// walks the kept tokens in some fixed order with an inverse CDF, so token i is drawn for the u_r
// inside its interval of length p_i: count_i is within 1 of N p_i whatever the order (bound
// 1 + 1e-4 N p_i: fp32 exp against the CPU's fp64), and a token outside the CPU's kept set is
// never drawn.
#include <string>

#include "cuda_test_util.hpp"
#include "tmoe/runtime/sampler.hpp"

using namespace tmoe;

namespace {

// The same row of logits N times, drawn with stratified uniforms; compared with the CPU. grid:
// one call per row with a workspace (the row over all SMs); else one call of N rows.
void check_distribution(const std::vector<float>& logits, const SamplerConfig& cfg,
                        const std::vector<std::int32_t>& history, const std::string& what0) {
  for (bool grid : {false, true}) {
    const std::string what = what0 + (grid ? " (grid)" : " (block per row)");
    const std::size_t V = logits.size(), N = 4096;
    std::vector<float> rows(N * V);
    for (std::size_t r = 0; r < N; ++r) std::copy(logits.begin(), logits.end(), &rows[r * V]);
    std::vector<double> u(N);
    for (std::size_t r = 0; r < N; ++r) u[r] = (double(r) + 0.5) / double(N);
    auto d_rows = test::to_device(rows);
    auto d_u = test::to_device(u);
    auto d_h = test::to_device(history.empty() ? std::vector<std::int32_t>{0} : history);
    auto d_tok = test::to_device(std::vector<std::int32_t>(N, -7));
    if (grid) {
      cuda::DeviceBuffer<std::byte> ws(cuda::sample_workspace());
      for (std::size_t r = 0; r < N; ++r)
        cuda::sample(d_rows.data() + r * V, 1, V, cfg, d_u.data() + r,
                     history.empty() ? nullptr : d_h.data(), history.size(), d_tok.data() + r,
                     ws.data());
    } else {
      cuda::sample(d_rows.data(), N, V, cfg, d_u.data(), history.empty() ? nullptr : d_h.data(),
                   history.size(), d_tok.data());
    }
    const auto tok = test::to_host(d_tok);
    // The penalized logits: every row as the CPU penalizes its copy.
    std::vector<float> cpu = logits;
    Sampler ref(cfg);
    const auto dist = ref.distribution(cpu, history);
    const auto pen = test::to_host(d_rows);
    std::size_t pen_diff = 0;
    for (std::size_t i = 0; i < V; ++i)
      pen_diff += !(pen[i] == cpu[i] || (std::isnan(pen[i]) && std::isnan(cpu[i])));
    INFO(what, ": penalized logits that differ from the CPU's: ", pen_diff);
    CHECK(pen_diff == 0);
    std::vector<double> p(V, 0.0);
    for (const auto& [id, prob] : dist) p[std::size_t(id)] = prob;
    std::vector<long> count(V, 0);
    std::size_t bad = 0;
    for (std::int32_t t : tok) {
      if (t < 0 || std::size_t(t) >= V) {
        ++bad;
        continue;
      }
      ++count[std::size_t(t)];
    }
    CHECK(bad == 0);
    double worst = 0;
    std::size_t outside = 0;
    for (std::size_t i = 0; i < V; ++i) {
      if (p[i] == 0.0) {
        outside += count[i] != 0;
        continue;
      }
      const double want = double(N) * p[i];
      worst = std::max(worst, std::abs(double(count[i]) - want) / (1.0 + 1e-4 * want));
    }
    INFO(what, ": kept by the CPU ", dist.size(), " tokens; drawn outside them: ", outside,
         "; worst |count - N p| / (1 + 1e-4 N p) = ", worst);
    CHECK(outside == 0);
    CHECK(worst <= 1.0);
  }
}

}  // namespace

TEST_CASE("cuda sample draws from the CPU sampler's distribution") {
  const std::size_t V = 3001;
  auto logits = test::random_floats(V, 1234, -6.f, 6.f);
  logits[17] = NAN;
  logits[2000] = NAN;
  std::vector<float> tied = logits;  // few distinct values: cuts fall inside runs of equal keys
  for (float& l : tied)
    if (!std::isnan(l)) l = std::round(l * 2.f) / 2.f;
  SamplerConfig c;
  c.temperature = 0.7f;
  c.top_p = 1.f;
  check_distribution(logits, c, {}, "temperature 0.7");
  c.top_k = 50;
  check_distribution(logits, c, {}, "top-k 50");
  c.top_k = 0, c.temperature = 1.f, c.top_p = 0.9f;
  check_distribution(logits, c, {}, "top-p 0.9");
  c.temperature = 0.8f, c.top_k = 200, c.top_p = 0.95f, c.min_p = 0.02f;
  check_distribution(logits, c, {}, "top-k 200, top-p 0.95, min-p 0.02");
  c = SamplerConfig{};
  c.temperature = 1.f, c.top_k = 37, c.top_p = 0.5f;
  check_distribution(tied, c, {}, "ties: top-k 37, top-p 0.5");
  c.top_k = 0, c.top_p = 0.3f;
  check_distribution(tied, c, {}, "ties: top-p 0.3");
  c.top_p = 1.f, c.top_k = 600;
  check_distribution(tied, c, {}, "ties: top-k 600");
  // Repetition penalty over a window with repeats and ids outside the vocabulary.
  c = SamplerConfig{};
  c.temperature = 0.9f, c.top_p = 0.97f, c.repetition_penalty = 1.7f, c.repetition_window = 16;
  std::vector<std::int32_t> hist;
  for (int i = 0; i < 40; ++i) hist.push_back(std::int32_t((i * 37) % 50));
  hist.push_back(-3);
  hist.push_back(std::int32_t(V) + 5);
  check_distribution(logits, c, hist, "repetition penalty 1.7, window 16");
  // Greedy configs: the argmax (the first of equals, NaN skipped), the penalty applied first.
  c = SamplerConfig{};
  c.temperature = 0.f, c.repetition_penalty = 1.3f;
  check_distribution(tied, c, hist, "greedy (temperature 0) with a penalty");
  c.temperature = 2.f, c.top_k = 1;
  check_distribution(tied, c, {}, "greedy (top-k 1)");
}

TEST_CASE("cuda sample: a 151936-token row, an all-NaN row, errors") {
  const std::size_t V = 151936;
  SamplerConfig c;
  c.temperature = 0.6f, c.top_p = 0.95f;
  auto logits = test::random_floats(2 * V, 77, -10.f, 10.f);
  for (std::size_t i = V; i < 2 * V; ++i) logits[i] = NAN;
  auto d_l = test::to_device(logits);
  auto d_u = test::to_device(std::vector<double>{0.25, 0.5});
  auto d_tok = test::to_device(std::vector<std::int32_t>{-1, -1});
  cuda::sample(d_l.data(), 2, V, c, d_u.data(), nullptr, 0, d_tok.data());
  const auto tok = test::to_host(d_tok);
  // The same two rows over all SMs (fresh copies: the draws need not match the block kernel's).
  auto d_l2 = test::to_device(logits);
  auto d_tok2 = test::to_device(std::vector<std::int32_t>{-1, -1});
  cuda::DeviceBuffer<std::byte> ws(cuda::sample_workspace());
  for (std::size_t r = 0; r < 2; ++r)
    cuda::sample(d_l2.data() + r * V, 1, V, c, d_u.data() + r, nullptr, 0, d_tok2.data() + r,
                 ws.data());
  const auto tok2 = test::to_host(d_tok2);
  std::vector<float> row(logits.begin(), logits.begin() + V);
  Sampler ref(c);
  bool kept = false, kept2 = false;
  for (const auto& [id, p] : ref.distribution(row)) kept |= id == tok[0], kept2 |= id == tok2[0];
  CHECK(kept);
  CHECK(kept2);
  CHECK(tok[1] == 0);  // nothing drawable
  CHECK(tok2[1] == 0);
  SamplerConfig bad = c;
  bad.top_p = 0.f;
  CHECK_THROWS_WITH_AS(cuda::sample(d_l.data(), 1, V, bad, d_u.data(), nullptr, 0, d_tok.data()),
                       doctest::Contains("[cuda::sample] top_p must be in (0, 1]"), tmoe::Error);
  CHECK_THROWS_WITH_AS(cuda::sample(d_l.data(), 1, V, c, nullptr, nullptr, 0, d_tok.data()),
                       doctest::Contains("[cuda::sample] null pointer: u"), tmoe::Error);
}
