// tmoe/layers/router.hpp: MoE routers (expert choice per token), float32 throughout.
//
//   logits = x W_gate^T                    (W_gate (n_experts, d), computed in float32 like HF)
//   softmax_topk (Mixtral):  p = softmax(logits); pick the top_k p; renormalize (norm_topk_prob).
//   noaux_tc (DeepSeek-V3/R1):
//     s = sigmoid(logits); c = s + correction_bias            (bias only chooses, never weighs)
//     group score g = sum of the 2 largest c in the group     (n_experts / n_group per group)
//     keep the topk_group best groups; c of the other groups := 0.0 (HF's fill, not -inf)
//     idx = top_k of c; w = s[idx]; w /= (sum w + 1e-20) if norm_topk_prob; w *=
//     routed_scaling_factor
//   group_greedy (DeepSeek-V2): p = softmax; group score = max p in the group; keep topk_group
//     groups (others := 0.0); idx = top_k of p; w = p[idx]; then as above.
//   greedy (DeepSeek-V2-Lite): p = softmax; idx = top_k of p; w = p[idx]; then as above.
// After selection every method renormalizes when norm_topk_prob and then multiplies by
// routed_scaling_factor (set it to 1 where the original model does not scale, e.g. Mixtral, or
// V2 checkpoints with norm_topk_prob true, which HF does not scale).
// Ties are broken toward the lower expert index. R1: 8 experts inside 4 of 8 groups of 32,
// weights sum to 2.5.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/linear.hpp"

namespace tmoe {

enum class RouterMethod { softmax_topk, noaux_tc, group_greedy, greedy };

struct RouterConfig {
  RouterMethod method = RouterMethod::softmax_topk;
  std::size_t n_experts = 0;
  std::size_t top_k = 0;
  std::size_t n_group = 1;     // expert groups (noaux_tc, group_greedy)
  std::size_t topk_group = 1;  // groups kept per token
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.f;

  void validate() const {
    check(n_experts > 0 && top_k > 0 && top_k <= n_experts, "router", "top_k ", top_k,
          " must be in [1, n_experts = ", n_experts, "]");
    if (method == RouterMethod::noaux_tc || method == RouterMethod::group_greedy) {
      check(n_group > 0 && n_experts % n_group == 0, "router", "n_experts ", n_experts,
            " is not a multiple of n_group ", n_group);
      check(topk_group >= 1 && topk_group <= n_group, "router", "topk_group ", topk_group,
            " must be in [1, n_group = ", n_group, "]");
      check(top_k <= topk_group * (n_experts / n_group), "router", "top_k ", top_k,
            " exceeds the experts of ", topk_group, " groups");
    }
  }
};

// Selects top_k experts for one token from its n_experts logits. bias: the noaux_tc correction
// bias (n_experts) or nullptr. score / choose / order are scratch, resized to n_experts.
inline void route_token(const RouterConfig& cfg, const float* logits, const float* bias,
                        std::int32_t* idx, float* w, std::vector<float>& score,
                        std::vector<float>& choose, std::vector<std::int32_t>& order) {
  const std::size_t n = cfg.n_experts;
  score.resize(n), choose.resize(n), order.resize(n);
  if (cfg.method == RouterMethod::noaux_tc) {
    for (std::size_t e = 0; e < n; ++e) {
      score[e] = 1.0f / (1.0f + std::exp(-logits[e]));
      choose[e] = score[e] + (bias ? bias[e] : 0.f);
    }
  } else {
    float m = logits[0];
    for (std::size_t e = 1; e < n; ++e) m = std::max(m, logits[e]);
    float sum = 0.f;
    for (std::size_t e = 0; e < n; ++e) sum += (score[e] = std::exp(logits[e] - m));
    for (std::size_t e = 0; e < n; ++e) choose[e] = (score[e] /= sum);
  }
  const auto by_choose = [&](std::int32_t a, std::int32_t b) {
    return choose[a] > choose[b] || (choose[a] == choose[b] && a < b);
  };
  if (cfg.method == RouterMethod::noaux_tc || cfg.method == RouterMethod::group_greedy) {
    const std::size_t G = cfg.n_group, per = n / G;
    float gscore[1024];
    std::int32_t gorder[1024];
    TMOE_ASSERT(G <= 1024);
    for (std::size_t g = 0; g < G; ++g) {
      const float* c = choose.data() + g * per;
      if (cfg.method == RouterMethod::noaux_tc) {  // sum of the two largest
        float a = -INFINITY, b = -INFINITY;
        for (std::size_t j = 0; j < per; ++j) {
          if (c[j] > a)
            b = a, a = c[j];
          else if (c[j] > b)
            b = c[j];
        }
        gscore[g] = per > 1 ? a + b : a;
      } else {
        gscore[g] = *std::max_element(c, c + per);
      }
      gorder[g] = static_cast<std::int32_t>(g);
    }
    std::partial_sort(gorder, gorder + cfg.topk_group, gorder + G,
                      [&](std::int32_t a, std::int32_t b) {
                        return gscore[a] > gscore[b] || (gscore[a] == gscore[b] && a < b);
                      });
    bool keep[1024] = {};
    for (std::size_t g = 0; g < cfg.topk_group; ++g) keep[gorder[g]] = true;
    for (std::size_t e = 0; e < n; ++e)
      if (!keep[e / per]) choose[e] = 0.0f;
  }
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(cfg.top_k),
                    order.end(), by_choose);
  float sum = 0.f;
  for (std::size_t k = 0; k < cfg.top_k; ++k) {
    idx[k] = order[k];
    w[k] = score[static_cast<std::size_t>(order[k])];
    sum += w[k];
  }
  const float norm = cfg.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (std::size_t k = 0; k < cfg.top_k; ++k) w[k] = w[k] * norm * cfg.routed_scaling_factor;
}

template <LinearFormat F>
class Router {
 public:
  using weight_view = typename LinearTraits<F>::weight_view;

  Router() = default;
  // gate (n_experts, d); correction_bias: n_experts floats (noaux_tc) or nullptr.
  Router(const RouterConfig& cfg, weight_view gate, const float* correction_bias = nullptr)
      : cfg_(cfg), gate_(gate), bias_(correction_bias) {
    cfg_.validate();
    check(gate_.out_features() == cfg_.n_experts, "router", "gate weight has ",
          gate_.out_features(), " rows, expected n_experts = ", cfg_.n_experts);
  }

  const RouterConfig& config() const { return cfg_; }
  std::size_t hidden() const { return gate_.in_features(); }

  // idx (T, top_k), w (T, top_k) for the tokens x (T, d).
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<std::int32_t> idx,
               MatrixView<float> w, const cpu::KernelTable& k = cpu::kernels()) const {
    const std::size_t T = x.rows();
    check(idx.rows() == T && idx.cols() == cfg_.top_k && w.rows() == T && w.cols() == cfg_.top_k,
          "router", "idx/w are (", idx.rows(), ", ", idx.cols(), "), expected (", T, ", ",
          cfg_.top_k, ")");
    if (logits_.rows() < T) logits_ = Matrix<float>(T, cfg_.n_experts);
    auto lg = logits_.view().row_range(0, T);
    gate_.forward(pool, x, lg, k);
    pool.parallel_for(T, 16, [&](std::size_t b, std::size_t e, int) {
      std::vector<float> score, choose;
      std::vector<std::int32_t> order;
      for (std::size_t t = b; t < e; ++t)
        route_token(cfg_, lg.row(t), bias_, idx.row(t), w.row(t), score, choose, order);
    });
  }

 private:
  RouterConfig cfg_{};
  Linear<F> gate_;
  const float* bias_ = nullptr;
  mutable Matrix<float> logits_{std::size_t{0}, std::size_t{0}};  // (T, n_experts) scratch
};

}  // namespace tmoe
