// Helpers shared by the GPU model tests (test_model.cpp, test_deepseek.cpp,
// test_deepseek_prefill.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/models/model.hpp"
#include "tmoe/runtime/sampler.hpp"

namespace tmoe::test {

// n tokens after `prompt` drawn by the CPU Sampler (cfg) from the model's own logits, one
// forward() per token on a fresh state: the host reference for a device-sampled continuation
// with a greedy cfg (a seeded non-greedy cfg draws differently on the device).
inline std::vector<std::int32_t> host_sampled(const models::Model& m,
                                              const std::vector<std::int32_t>& prompt,
                                              std::size_t n, const SamplerConfig& cfg) {
  ThreadPool pool(1);
  auto st = m.new_state(prompt.size() + n);
  Matrix<float> lg(1, m.vocab_size());
  m.forward(pool, *st, prompt, lg.view());
  std::vector<std::int32_t> hist = prompt, out;
  Sampler cpu(cfg);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int32_t t = cpu.sample(std::span<float>(lg.data(), m.vocab_size()), hist);
    out.push_back(t);
    hist.push_back(t);
    if (i + 1 < n) m.forward(pool, *st, std::span<const std::int32_t>(&t, 1), lg.view());
  }
  return out;
}

// max |got - want| / max |want| (infinite when got holds a non-finite value or the sizes
// differ).
inline double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double e = 0, m = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e = std::max(e, std::abs(double(got[i]) - want[i]));
    m = std::max(m, std::abs(double(want[i])));
  }
  return e / m;
}

}  // namespace tmoe::test
