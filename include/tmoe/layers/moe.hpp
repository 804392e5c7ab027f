// tmoe/layers/moe.hpp: the Mixture-of-Experts block: a Router, routed SwiGLU experts and
// optional shared experts (DeepSeek: 1 shared expert, no gate on it).
//
//   y[t] = sum_k w[t,k] * E_{idx[t,k]}(x[t]) + sum_s S_s(x[t])        (float32 combine)
//
// Tokens are grouped by expert: for every expert that received at least one token, its tokens'
// rows are gathered into one (n_e, d) block and the expert runs once on that block (a GEMV for
// decode, a GEMM for prefill), so only the weights of active experts are ever read.
// Small batches (T * top_k <= 64, e.g. decode): all active experts' row blocks are the work
// items of one pool run for gate/up and one for down (experts in parallel, two fork-joins per
// layer). Larger batches: each expert's GEMM is split over the pool by output rows. Routed
// contributions are added into y in ascending expert order, then the shared experts. After each
// forward, stats() holds the expert load of that call (tokens per expert, the number of active
// experts and max/mean load). One forward at a time per object (scratch buffers).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/layers/mlp.hpp"
#include "tmoe/layers/router.hpp"

namespace tmoe {

struct MoeStats {
  std::vector<std::size_t> tokens_per_expert;  // (n_experts) for the last forward
  std::size_t tokens = 0;                      // T of the last forward
  std::size_t active_experts = 0;              // experts with >= 1 token
  // max_e tokens_per_expert / mean_e tokens_per_expert (mean = T * top_k / n_experts); 1 is
  // perfectly balanced, n_experts / top_k is the worst case of a single token.
  double max_over_mean = 0.0;
};

template <LinearFormat F>
class MoE {
 public:
  MoE() = default;
  // experts: n_experts routed SwiGLU experts (views into weights the loader owns); shared: zero
  // or more always-on experts (DeepSeek's n_shared_experts x moe_intermediate is one expert of
  // width n_shared * moe_intermediate in the checkpoint).
  MoE(Router<F> router, std::vector<SwigluMlp<F>> experts, std::vector<SwigluMlp<F>> shared = {})
      : router_(std::move(router)), experts_(std::move(experts)), shared_(std::move(shared)) {
    check(experts_.size() == router_.config().n_experts, "moe", "got ", experts_.size(),
          " experts, router has n_experts = ", router_.config().n_experts);
    for (const auto& e : experts_)
      check(e.hidden() == router_.hidden(), "moe", "expert hidden size ", e.hidden(),
            " differs from the router's ", router_.hidden());
    for (const auto& s : shared_)
      check(s.hidden() == router_.hidden(), "moe", "shared expert hidden size ", s.hidden(),
            " differs from the router's ", router_.hidden());
    stats_.tokens_per_expert.assign(experts_.size(), 0);
  }

  std::size_t hidden() const { return router_.hidden(); }
  std::size_t n_experts() const { return experts_.size(); }
  const Router<F>& router() const { return router_; }
  const MoeStats& stats() const { return stats_; }

  // y (T, d) = MoE(x (T, d)); y must not alias x.
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
               const cpu::KernelTable& k = cpu::kernels()) const {
    const std::size_t T = x.rows(), d = hidden(), K = router_.config().top_k, E = n_experts();
    check(x.cols() == d && y.rows() == T && y.cols() == d && y.stride(1) == 1 && x.stride(1) == 1,
          "moe", "x is (", x.rows(), ", ", x.cols(), "), y is (", y.rows(), ", ", y.cols(),
          "), expected (T, ", d, ") with contiguous rows");
    if (idx_.rows() < T) idx_ = Matrix<std::int32_t>(T, K), w_ = Matrix<float>(T, K);
    auto idx = idx_.view().row_range(0, T);
    auto w = w_.view().row_range(0, T);
    router_.forward(pool, x, idx, w, k);

    // Group (token, weight) pairs by expert, tokens in ascending order within an expert.
    auto& count = stats_.tokens_per_expert;
    count.assign(E, 0);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t j = 0; j < K; ++j) ++count[static_cast<std::size_t>(idx(t, j))];
    offset_.assign(E + 1, 0);
    for (std::size_t e = 0; e < E; ++e) offset_[e + 1] = offset_[e] + count[e];
    slot_token_.resize(T * K), slot_weight_.resize(T * K);
    fill_.assign(offset_.begin(), offset_.end() - 1);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t j = 0; j < K; ++j) {
        const auto e = static_cast<std::size_t>(idx(t, j));
        slot_token_[fill_[e]] = static_cast<std::uint32_t>(t);
        slot_weight_[fill_[e]++] = w(t, j);
      }

    for (std::size_t t = 0; t < T; ++t) std::fill(y.row(t), y.row(t) + d, 0.f);
    bool done = false;
    if constexpr (requires(const typename LinearTraits<F>::weight_view& wv) {
                    LinearTraits<F>::slice_rows(wv, std::size_t{0}, std::size_t{0});
                  }) {
      if (T * K <= kBlockedMaxRows) {
        forward_blocked(pool, x, y, k);
        done = true;
      }
    }
    if (!done) forward_per_expert(pool, x, y, k);

    std::size_t active = 0, mx = 0;
    for (std::size_t e = 0; e < E; ++e) active += count[e] > 0, mx = std::max(mx, count[e]);
    stats_.tokens = T;
    stats_.active_experts = active;
    const double mean = double(T * K) / double(E);
    stats_.max_over_mean = mean > 0 ? double(mx) / mean : 0.0;
  }

 private:
  // Large batches: each active expert runs as one (gathered) GEMM split over the pool by rows.
  void forward_per_expert(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                          const cpu::KernelTable& k) const {
    const std::size_t T = x.rows(), d = hidden(), E = n_experts();
    const auto& count = stats_.tokens_per_expert;
    std::size_t max_n = 0;
    for (std::size_t e = 0; e < E; ++e) max_n = std::max(max_n, count[e]);
    if (xe_.rows() < max_n || xe_.cols() != d)
      xe_ = Matrix<float>(max_n, d), ye_ = Matrix<float>(max_n, d);
    for (std::size_t e = 0; e < E; ++e) {
      const std::size_t n = count[e];
      if (n == 0) continue;
      auto xe = xe_.view().row_range(0, n), ye = ye_.view().row_range(0, n);
      for (std::size_t r = 0; r < n; ++r) {
        const float* src = x.row(slot_token_[offset_[e] + r]);
        std::copy(src, src + d, xe.row(r));
      }
      experts_[e].forward(pool, xe, ye, k);
      for (std::size_t r = 0; r < n; ++r)
        k.vec.axpy_f32(slot_weight_[offset_[e] + r], ye.row(r), y.row(slot_token_[offset_[e] + r]),
                       d);
    }
    if (!shared_.empty()) {
      if (se_.rows() < T || se_.cols() != d) se_ = Matrix<float>(T, d);
      auto se = se_.view().row_range(0, T);
      for (const auto& s : shared_) {
        s.forward(pool, x, se, k);
        for (std::size_t t = 0; t < T; ++t) k.vec.add(se.row(t), y.row(t), d);
      }
    }
  }

  // Small batches (decode): every active expert (and shared expert) is cut into row blocks and
  // all blocks of all experts are work items of one pool run per phase (gate/up + SwiGLU, then
  // down): two fork-joins per layer instead of three per expert. Each item runs the matmul
  // kernel on its rows with an inline one-thread pool.
  struct Job {
    const SwigluMlp<F>* mlp;
    std::size_t row0, n;  // rows [row0, row0 + n) of the gathered buffers
  };
  void forward_blocked(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                       const cpu::KernelTable& k) const requires
      requires(const typename LinearTraits<F>::weight_view& wv) {
    LinearTraits<F>::slice_rows(wv, std::size_t{0}, std::size_t{0});
  }
  {
    using Tr = LinearTraits<F>;
    static ThreadPool inline_pool(1);  // size 1 runs inline and holds no shared state
    const std::size_t T = x.rows(), d = hidden(), E = n_experts();
    const auto& count = stats_.tokens_per_expert;
    jobs_.clear();
    std::size_t rows = 0, imax = 0;
    for (std::size_t e = 0; e < E; ++e)
      if (count[e])
        jobs_.push_back({&experts_[e], offset_[e], count[e]}),
            imax = std::max(imax, experts_[e].intermediate());
    const std::size_t routed_rows = offset_[E];
    rows = routed_rows;
    for (const auto& s : shared_)
      jobs_.push_back({&s, rows, T}), rows += T, imax = std::max(imax, s.intermediate());
    if (xg_.rows() < rows || xg_.cols() != d)
      xg_ = Matrix<float>(rows, d), yg_ = Matrix<float>(rows, d);
    if (hg_.rows() < rows || hg_.cols() != imax)
      hg_ = Matrix<float>(rows, imax), ug_ = Matrix<float>(rows, imax);
    for (std::size_t r = 0; r < routed_rows; ++r)
      std::copy(x.row(slot_token_[r]), x.row(slot_token_[r]) + d, xg_.row(r));
    for (std::size_t r = routed_rows; r < rows; ++r) {
      const float* src = x.row((r - routed_rows) % T);
      std::copy(src, src + d, xg_.row(r));
    }
    auto sub = [](Matrix<float>& m, std::size_t row0, std::size_t n, std::size_t col0,
                  std::size_t nc) {
      return MatrixView<float>(m.row(row0) + col0, DExtents<2>(n, nc),
                               {static_cast<std::ptrdiff_t>(m.cols()), 1});
    };
    // Formats with matmul_acts (quantized, AnyFormat): the gathered rows are quantized once per
    // layer here instead of once per work item and matrix (bit-identical).
    constexpr bool kActs =
        requires(ThreadPool & p, const typename Tr::weight_view& wv, const cpu::QuantActs& a,
                 MatrixView<float> yv, const cpu::KernelTable& kt) {
      Tr::matmul_acts(p, wv, a, yv, kt);
    };
    if constexpr (kActs) xq_.quantize(pool, xg_.cview().row_range(0, rows), k);
    // Phase 1: h = silu(gate x) * up x, blocks of kUpRows intermediate rows.
    items_.clear();
    for (std::size_t j = 0; j < jobs_.size(); ++j)
      for (std::size_t b = 0; b < jobs_[j].mlp->intermediate(); b += kUpRows)
        items_.push_back({j, b});
    pool.run(items_.size(), [&](std::size_t it, int) {
      const Job& job = jobs_[items_[it].first];
      const std::size_t b = items_[it].second, n = std::min(kUpRows, job.mlp->intermediate() - b);
      MatrixView<const float> xs = xg_.cview().row_range(job.row0, job.n);
      auto g = sub(hg_, job.row0, job.n, b, n), u = sub(ug_, job.row0, job.n, b, n);
      const auto gw = Tr::slice_rows(job.mlp->gate().weight(), b, n);
      const auto uw = Tr::slice_rows(job.mlp->up().weight(), b, n);
      if constexpr (kActs) {
        const cpu::QuantActs a = xq_.acts(job.row0, job.n);
        Tr::matmul_acts(inline_pool, gw, a, g, k);
        Tr::matmul_acts(inline_pool, uw, a, u, k);
      } else {
        Tr::matmul(inline_pool, gw, xs, g, nullptr, k);
        Tr::matmul(inline_pool, uw, xs, u, nullptr, k);
      }
      for (std::size_t r = 0; r < job.n; ++r) k.vec.silu_mul(g.row(r), u.row(r), g.row(r), n);
    });
    if constexpr (kActs) {
      if (hq_.size() < jobs_.size()) hq_.resize(jobs_.size());
      pool.run(jobs_.size(), [&](std::size_t j, int) {
        const Job& job = jobs_[j];
        hq_[j].quantize(inline_pool, sub(hg_, job.row0, job.n, 0, job.mlp->intermediate()), k);
      });
    }
    // Phase 2: out = down h, blocks of kDownRows output rows.
    items_.clear();
    for (std::size_t j = 0; j < jobs_.size(); ++j)
      for (std::size_t b = 0; b < d; b += kDownRows) items_.push_back({j, b});
    pool.run(items_.size(), [&](std::size_t it, int) {
      const Job& job = jobs_[items_[it].first];
      const std::size_t b = items_[it].second, n = std::min(kDownRows, d - b);
      const auto dw = Tr::slice_rows(job.mlp->down().weight(), b, n);
      if constexpr (kActs) {
        Tr::matmul_acts(inline_pool, dw, hq_[items_[it].first].acts(),
                        sub(yg_, job.row0, job.n, b, n), k);
      } else {
        MatrixView<const float> hs = sub(hg_, job.row0, job.n, 0, job.mlp->intermediate());
        Tr::matmul(inline_pool, dw, hs, sub(yg_, job.row0, job.n, b, n), nullptr, k);
      }
    });
    // Combine in float32: routed experts in ascending order, then the shared experts.
    for (std::size_t r = 0; r < routed_rows; ++r)
      k.vec.axpy_f32(slot_weight_[r], yg_.row(r), y.row(slot_token_[r]), d);
    for (std::size_t r = routed_rows; r < rows; ++r)
      k.vec.add(yg_.row(r), y.row((r - routed_rows) % T), d);
  }

  static constexpr std::size_t kBlockedMaxRows = 64;  // T * top_k up to which forward_blocked runs
  static constexpr std::size_t kUpRows = 128, kDownRows = 256;

  Router<F> router_;
  std::vector<SwigluMlp<F>> experts_, shared_;
  mutable MoeStats stats_;
  mutable Matrix<std::int32_t> idx_{std::size_t{0}, std::size_t{0}};  // (T, top_k)
  mutable Matrix<float> w_{std::size_t{0}, std::size_t{0}};           // (T, top_k)
  mutable Matrix<float> xe_{std::size_t{0}, std::size_t{0}}, ye_{std::size_t{0}, std::size_t{0}},
      se_{std::size_t{0}, std::size_t{0}};  // (n_e, d), (n_e, d), (T, d)
  mutable std::vector<std::size_t> offset_, fill_;
  mutable std::vector<std::uint32_t> slot_token_;
  mutable std::vector<float> slot_weight_;
  mutable std::vector<Job> jobs_;
  mutable std::vector<std::pair<std::size_t, std::size_t>> items_;  // (job, first row)
  mutable Matrix<float> xg_{std::size_t{0}, std::size_t{0}},
      yg_{std::size_t{0}, std::size_t{0}};  // (rows, d)
  mutable Matrix<float> hg_{std::size_t{0}, std::size_t{0}},
      ug_{std::size_t{0}, std::size_t{0}};  // (rows, I)
  mutable cpu::Q8Acts xq_;                  // xg_ quantized (formats with matmul_acts)
  mutable std::vector<cpu::Q8Acts> hq_;     // each job's rows of hg_ quantized
};

}  // namespace tmoe
