// tmoe/runtime/sampler.hpp: next-token sampling from a row of logits.
//
// Order of operations (as in llama.cpp and Hugging Face's logits processors):
//   1. repetition penalty over the recent tokens (CTRL-style: positive logits divided by the
//      penalty, negative ones multiplied),
//   2. temperature <= 0 (or top_k == 1): greedy argmax, ties to the lowest id,
//   3. otherwise: logits / temperature -> top-k -> softmax -> top-p (smallest prefix whose mass
//      reaches p, at least one token) -> min-p (drop tokens below min_p * max probability) ->
//      renormalize -> one draw from a seeded 64-bit generator.
// The generator is std::mt19937_64 turned into a double in [0, 1) by its top 53 bits, so a seed
// gives the same tokens on every platform.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <unordered_set>
#include <vector>

#include "tmoe/core/error.hpp"

namespace tmoe {

struct SamplerConfig {
  float temperature = 0.6f;         // <= 0: greedy
  int top_k = 0;                    // <= 0: all tokens
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  int repetition_window = 64;       // how many recent tokens the penalty looks at
  std::uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerConfig cfg = {}) : cfg_(cfg), rng_(cfg.seed) {
    check(std::isfinite(cfg.temperature), "sampler", "temperature must be finite");
    check(cfg.top_p > 0.f && cfg.top_p <= 1.f, "sampler", "top_p must be in (0, 1], got ",
          cfg.top_p);
    check(cfg.min_p >= 0.f && cfg.min_p < 1.f, "sampler", "min_p must be in [0, 1), got ",
          cfg.min_p);
    check(cfg.repetition_penalty > 0.f, "sampler", "repetition_penalty must be > 0, got ",
          cfg.repetition_penalty);
  }

  const SamplerConfig& config() const { return cfg_; }

  // Picks the next token id from `logits` (modified in place by the penalty), given the tokens
  // produced so far (prompt included) for the repetition penalty.
  std::int32_t sample(std::span<float> logits, std::span<const std::int32_t> history = {}) {
    check(!logits.empty(), "sampler", "empty logits row");
    apply_repetition_penalty(logits, history);
    if (cfg_.temperature <= 0.f || cfg_.top_k == 1) return argmax(logits);
    const std::size_t keep = candidates(logits);
    double kept = 0;
    for (std::size_t i = 0; i < keep; ++i) kept += cand_[i].prob;
    const double u = uniform() * kept;
    double acc = 0;
    for (std::size_t i = 0; i < keep; ++i) {
      acc += cand_[i].prob;
      if (u < acc) return cand_[i].id;
    }
    return cand_[keep - 1].id;
  }

  // The distribution sample() draws from (steps 1-3 without the draw; the reference twin of the
  // CUDA sampler): (id, probability) of every token that can be drawn, most likely first,
  // probabilities renormalized over that set. Greedy configs give the argmax with probability 1.
  // `logits` is modified in place by the penalty, as in sample().
  std::vector<std::pair<std::int32_t, double>> distribution(
      std::span<float> logits, std::span<const std::int32_t> history = {}) {
    check(!logits.empty(), "sampler", "empty logits row");
    apply_repetition_penalty(logits, history);
    if (cfg_.temperature <= 0.f || cfg_.top_k == 1) return {{argmax(logits), 1.0}};
    const std::size_t keep = candidates(logits);
    double kept = 0;
    for (std::size_t i = 0; i < keep; ++i) kept += cand_[i].prob;
    std::vector<std::pair<std::int32_t, double>> d(keep);
    for (std::size_t i = 0; i < keep; ++i) d[i] = {cand_[i].id, cand_[i].prob / kept};
    return d;
  }

  static std::int32_t argmax(std::span<const float> logits) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
    return static_cast<std::int32_t>(best);
  }

  // A double in [0, 1) from the top 53 bits of the generator.
  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

  // Step 1 alone: the repetition penalty over the last repetition_window tokens of history, once
  // per distinct token id.
  void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history) {
    if (cfg_.repetition_penalty == 1.f || history.empty()) return;
    const std::size_t w = std::min<std::size_t>(
        history.size(), static_cast<std::size_t>(std::max(0, cfg_.repetition_window)));
    seen_.clear();
    for (std::size_t i = history.size() - w; i < history.size(); ++i) {
      const std::int32_t id = history[i];
      if (id < 0 || static_cast<std::size_t>(id) >= logits.size() || !seen_.insert(id).second)
        continue;
      float& l = logits[static_cast<std::size_t>(id)];
      l = l > 0 ? l / cfg_.repetition_penalty : l * cfg_.repetition_penalty;
    }
  }

 private:
  struct Cand {
    std::int32_t id;
    float logit;
    double prob = 0;
  };

  // Step 3 up to the draw: fills cand_ (most likely first, probabilities of the top-k softmax)
  // and returns how many of them survive top-p and min-p.
  std::size_t candidates(std::span<const float> logits) {
    const float inv_t = 1.0f / cfg_.temperature;
    cand_.clear();
    for (std::size_t i = 0; i < logits.size(); ++i)
      if (!std::isnan(logits[i]))
        cand_.push_back({static_cast<std::int32_t>(i), logits[i] * inv_t});
    check(!cand_.empty(), "sampler", "every logit is NaN");
    auto by_logit = [](const Cand& a, const Cand& b) {
      return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    std::size_t k = cand_.size();
    if (cfg_.top_k > 0 && static_cast<std::size_t>(cfg_.top_k) < k) {
      k = static_cast<std::size_t>(cfg_.top_k);
      std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(),
                        by_logit);
      cand_.resize(k);
    } else {
      std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    // Softmax over the candidates (max-subtracted, double sums).
    const double m = cand_[0].logit;
    double total = 0;
    for (auto& c : cand_) total += (c.prob = std::exp(double(c.logit) - m));
    for (auto& c : cand_) c.prob /= total;
    // Top-p: keep the smallest prefix whose mass reaches top_p.
    std::size_t keep = cand_.size();
    if (cfg_.top_p < 1.f) {
      double mass = 0;
      for (std::size_t i = 0; i < cand_.size(); ++i) {
        mass += cand_[i].prob;
        if (mass >= cfg_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    // Min-p: drop tokens whose probability is below min_p times the largest.
    if (cfg_.min_p > 0.f) {
      const double floor_p = cfg_.min_p * cand_[0].prob;
      std::size_t i = 1;
      while (i < keep && cand_[i].prob >= floor_p) ++i;
      keep = i;
    }
    return keep;
  }

  SamplerConfig cfg_;
  std::mt19937_64 rng_;
  std::vector<Cand> cand_;
  std::unordered_set<std::int32_t> seen_;
};

}  // namespace tmoe
