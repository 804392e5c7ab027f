// tmoe/backend/reference/router.hpp: scalar ground truth for the MoE routers of
// layers/router.hpp: logits in double, then the selection rule written the obvious way (full
// sorts of (score, index) pairs; softmax and sums in double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "tmoe/backend/reference/blas.hpp"
#include "tmoe/layers/router.hpp"

namespace tmoe::reference {

inline void route(const RouterConfig& cfg, const float* logits, const float* bias,
                  std::int32_t* idx, float* w) {
  const std::size_t n = cfg.n_experts;
  std::vector<double> score(n), choose(n);
  if (cfg.method == RouterMethod::noaux_tc) {
    for (std::size_t e = 0; e < n; ++e) {
      score[e] = float(1.0f / (1.0f + std::exp(-logits[e])));
      choose[e] = float(float(score[e]) + (bias ? bias[e] : 0.f));
    }
  } else {
    double m = *std::max_element(logits, logits + n), sum = 0;
    for (std::size_t e = 0; e < n; ++e) sum += std::exp(double(logits[e]) - m);
    for (std::size_t e = 0; e < n; ++e)
      choose[e] = score[e] = std::exp(double(logits[e]) - m) / sum;
  }
  auto desc = [](const std::pair<double, int>& a, const std::pair<double, int>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (cfg.method == RouterMethod::noaux_tc || cfg.method == RouterMethod::group_greedy) {
    const std::size_t per = n / cfg.n_group;
    std::vector<std::pair<double, int>> groups;
    for (std::size_t g = 0; g < cfg.n_group; ++g) {
      std::vector<double> c(choose.begin() + long(g * per), choose.begin() + long((g + 1) * per));
      std::sort(c.rbegin(), c.rend());
      const double s = cfg.method == RouterMethod::noaux_tc ? c[0] + (per > 1 ? c[1] : 0.0) : c[0];
      groups.push_back({s, int(g)});
    }
    std::sort(groups.begin(), groups.end(), desc);
    std::vector<bool> keep(cfg.n_group, false);
    for (std::size_t g = 0; g < cfg.topk_group; ++g) keep[std::size_t(groups[g].second)] = true;
    for (std::size_t e = 0; e < n; ++e)
      if (!keep[e / per]) choose[e] = 0.0;
  }
  std::vector<std::pair<double, int>> all;
  for (std::size_t e = 0; e < n; ++e) all.push_back({choose[e], int(e)});
  std::sort(all.begin(), all.end(), desc);
  double sum = 0;
  for (std::size_t k = 0; k < cfg.top_k; ++k) sum += score[std::size_t(all[k].second)];
  for (std::size_t k = 0; k < cfg.top_k; ++k) {
    idx[k] = all[k].second;
    const double s = score[std::size_t(all[k].second)];
    w[k] = float((cfg.norm_topk_prob ? s / (sum + 1e-20) : s) * cfg.routed_scaling_factor);
  }
}

// idx (T, top_k), w (T, top_k) for x (T, d) and gate (n_experts, d).
template <class WT>
void router(const RouterConfig& cfg, MatrixView<const WT> gate, const float* bias,
            MatrixView<const float> x, MatrixView<std::int32_t> idx, MatrixView<float> w) {
  Matrix<float> logits(x.rows(), cfg.n_experts);
  matmul<WT>(gate, x, logits.view());
  for (std::size_t t = 0; t < x.rows(); ++t) route(cfg, logits.row(t), bias, idx.row(t), w.row(t));
}

}  // namespace tmoe::reference
