// Layer benchmarks at DeepSeek-R1 and R1-Distill-Qwen-1.5B shapes, bf16 weights, float32
// activations. Decode steps are memory bound: each reports bytes/s (weights + KV cache read) to
// compare with BM_read_bandwidth, the pool-threaded streaming read measured in the same run.
//
// The MoE proof (BM_moe_vs_dense_r1): one-token decode through R1's MoE block (256 routed
// experts, top-8 by noaux_tc, + 1 shared expert, hidden 7168, moe_intermediate 2048) against a
// dense SwiGLU holding the same 9 experts' weights (intermediate 9 x 2048 = 18432), timed
// alternately in one benchmark; the counter `ratio` = MoE time / dense time must be <= 1.3.
// 256 distinct bf16 experts would need 22.5 GB, so the 256-entry expert table is built from views
// into 8 distinct routed experts (entry e -> pool[e % 8]) plus the shared one: 9 x 88 MB, the
// same bytes as the dense layer. Every expert (88 MB) is far larger than the last-level cache,
// so an aliased entry costs the same DRAM traffic as a distinct one; if the block touched
// inactive experts, its time would grow with the table (up to 257 / 9 = 28x), not stay at ~1x.
// That only the chosen experts' weights are read is also checked exactly (NaN-poisoned inactive
// experts) in tests/layers/test_router_moe.cpp.
//
// Threads: TMOE_THREADS or all hardware threads.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tmoe/layers/attention_gqa.hpp"
#include "tmoe/layers/attention_mla.hpp"
#include "tmoe/layers/mlp.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/layers/norms.hpp"
#include "tmoe/layers/rope.hpp"
#include "tmoe/layers/router.hpp"

using namespace tmoe;

namespace {

ThreadPool& pool() {
  static ThreadPool p([] {
    const char* e = std::getenv("TMOE_THREADS");
    return e ? std::atoi(e) : 0;
  }());
  return p;
}

// Deterministic pseudo-random bf16 fill, cheap enough for gigabytes.
Matrix<bf16> bf16_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed,
                         float amp = 0.02f) {
  Matrix<bf16> m(rows, cols);
  pool().parallel_for(rows, 64, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t r = b; r < e; ++r) {
      std::uint32_t s = seed * 2654435761u + static_cast<std::uint32_t>(r) * 40503u + 1u;
      for (std::size_t c = 0; c < cols; ++c) {
        s = s * 1664525u + 1013904223u;
        m(r, c) = bf16::from_float(amp * (static_cast<float>(s >> 8) * (1.0f / 8388608.0f) - 1.0f));
      }
    }
  });
  return m;
}
Matrix<float> f32_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  Matrix<float> m(rows, cols);
  std::uint32_t s = seed;
  for (std::size_t i = 0; i < m.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    m.data()[i] = static_cast<float>(s >> 8) * (1.0f / 8388608.0f) - 1.0f;
  }
  return m;
}

void set_bytes(benchmark::State& state, double bytes_per_iter, double flops_per_iter) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes_per_iter * double(state.iterations())));
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_iter * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(cpu::isa_name(cpu::kernels().isa)) +
                 " threads=" + std::to_string(pool().size()));
}

// ---- the limit: streaming read bandwidth with the same pool --------------------------------
void BM_read_bandwidth(benchmark::State& state) {
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB of floats
  static Vector<float> buf = [&] {
    Vector<float> v(n);
    pool().parallel_for(n, 1 << 20, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t i = b; i < e; ++i) v.data()[i] = 1.0f;
    });
    return v;
  }();
  std::vector<float> part(static_cast<std::size_t>(pool().size()) * 16);
  for (auto _ : state) {
    pool().parallel_for(n, 1 << 20, [&](std::size_t b, std::size_t e, int t) {
      part[static_cast<std::size_t>(t) * 16] += cpu::kernels().reduce.sum(buf.data() + b, e - b);
    });
    benchmark::DoNotOptimize(part.data());
  }
  set_bytes(state, double(n) * 4, double(n));
}
BENCHMARK(BM_read_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- norms and rope -------------------------------------------------------------------------
void BM_rms_norm_r1(benchmark::State& state) {
  const std::size_t T = static_cast<std::size_t>(state.range(0)), d = 7168;
  static Matrix<bf16> w = bf16_matrix(1, d, 1, 1.0f);
  auto x = f32_matrix(T, d, 2);
  Matrix<float> y(T, d);
  RMSNorm<bf16> norm(VectorView<const bf16>(w.data(), d), 1e-6f);
  for (auto _ : state) {
    norm.forward(pool(), x.cview(), y.view());
    benchmark::DoNotOptimize(y.data());
  }
  set_bytes(state, double(T * d * 8 + d * 2), double(T * d * 4));
}
BENCHMARK(BM_rms_norm_r1)->Arg(1)->Arg(64)->UseRealTime();

void BM_rope_r1_q(benchmark::State& state) {
  // 128 heads x [128 nope ; 64 rope], YaRN, interleaved, one decode token at position 4000.
  RopeConfig c;
  c.type = RopeType::yarn, c.layout = RopeLayout::interleaved, c.dim = 64, c.factor = 40.f;
  c.mscale = 1.f, c.mscale_all_dim = 1.f;
  static const Rope rope(c, 4096);
  auto q = f32_matrix(1, 128 * 192, 3);
  for (auto _ : state) {
    rope.apply(q.view(), 128, 192, 128, 4000);
    benchmark::DoNotOptimize(q.data());
  }
  set_bytes(state, 128.0 * 64 * 8, 128.0 * 64 * 3);
}
BENCHMARK(BM_rope_r1_q)->UseRealTime();

// ---- dense SwiGLU MLP and GQA at Distill-Qwen-1.5B shapes -----------------------------------
void BM_swiglu_qwen1p5b(benchmark::State& state) {
  const std::size_t T = static_cast<std::size_t>(state.range(0)), d = 1536, I = 8960;
  static Matrix<bf16> g = bf16_matrix(I, d, 10), u = bf16_matrix(I, d, 11),
                      dn = bf16_matrix(d, I, 12);
  SwigluMlp<bf16> mlp(g.cview(), u.cview(), dn.cview());
  auto x = f32_matrix(T, d, 4);
  Matrix<float> y(T, d);
  for (auto _ : state) {
    mlp.forward(pool(), x.cview(), y.view());
    benchmark::DoNotOptimize(y.data());
  }
  set_bytes(state, 3.0 * I * d * 2, 2.0 * 3 * I * d * T);
}
BENCHMARK(BM_swiglu_qwen1p5b)->Arg(1)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_gqa_qwen1p5b_decode(benchmark::State& state) {
  // hidden 1536, 12 query heads, 2 kv heads, head_dim 128, q/k/v bias; one token after `ctx`.
  const std::size_t ctx = static_cast<std::size_t>(state.range(0)), d = 1536, H = 12, Hkv = 2,
                    D = 128;
  static Matrix<bf16> q = bf16_matrix(H * D, d, 20), k = bf16_matrix(Hkv * D, d, 21),
                      v = bf16_matrix(Hkv * D, d, 22), o = bf16_matrix(d, H * D, 23);
  static std::vector<float> qb(H * D, 0.01f), kb(Hkv * D, 0.01f), vb(Hkv * D, 0.01f);
  GqaConfig cfg{d, H, Hkv, D, 0, 0.f};
  GqaWeights<bf16> w;
  w.q = q.cview(), w.k = k.cview(), w.v = v.cview(), w.o = o.cview();
  w.q_bias = qb.data(), w.k_bias = kb.data(), w.v_bias = vb.data();
  RopeConfig rc;
  rc.dim = D;
  const Rope rope(rc, ctx + 1);
  GqaAttention<bf16> attn(cfg, w, rope);
  KvCache cache = attn.make_cache(ctx + 1);
  auto xp = f32_matrix(ctx, d, 5);
  Matrix<float> yp(ctx, d);
  attn.forward(pool(), xp.cview(), yp.view(), cache);  // prefill the context once
  auto x = f32_matrix(1, d, 6);
  Matrix<float> y(1, d);
  for (auto _ : state) {
    attn.forward(pool(), x.cview(), y.view(), cache);
    cache.truncate(ctx);
    benchmark::DoNotOptimize(y.data());
  }
  const double wbytes = double(2 * H * D * d + 2 * Hkv * D * d) * 2;
  const double kv = double(2 * Hkv * D * (ctx + 1)) * 4;
  set_bytes(state, wbytes + kv, 2.0 * (2 * H * D * d + 2 * Hkv * D * d) + 4.0 * H * D * (ctx + 1));
}
BENCHMARK(BM_gqa_qwen1p5b_decode)
    ->Arg(512)
    ->Arg(4096)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// ---- MLA at R1 shapes ------------------------------------------------------------------------
struct R1Mla {
  static constexpr std::size_t d = 7168, H = 128, Rq = 1536, R = 512, Dn = 128, Dr = 64, Dv = 128;
  Matrix<bf16> q_a = bf16_matrix(Rq, d, 30), q_b = bf16_matrix(H * (Dn + Dr), Rq, 31),
               kv_a = bf16_matrix(R + Dr, d, 32), kv_b = bf16_matrix(H * (Dn + Dv), R, 33),
               o = bf16_matrix(d, H*Dv, 34), qn = bf16_matrix(1, Rq, 35, 1.f),
               kvn = bf16_matrix(1, R, 36, 1.f);
  MlaConfig cfg{d, H, Rq, R, Dn, Dr, Dv, 1e-6f, 0.f};
  MlaWeights<bf16> weights() const {
    MlaWeights<bf16> w;
    w.q_a = q_a.cview(), w.q_b = q_b.cview(), w.kv_a = kv_a.cview(), w.kv_b = kv_b.cview();
    w.o = o.cview();
    w.q_a_norm = VectorView<const bf16>(qn.data(), Rq),
    w.kv_a_norm = VectorView<const bf16>(kvn.data(), R);
    return w;
  }
  double weight_bytes() const {
    return double(q_a.size() + q_b.size() + kv_a.size() + kv_b.size() + o.size()) * 2;
  }
};

void BM_mla_r1_decode(benchmark::State& state) {
  const std::size_t ctx = static_cast<std::size_t>(state.range(0));
  const MlaForm form = state.range(1) ? MlaForm::absorbed : MlaForm::naive;
  static R1Mla m;
  RopeConfig rc;
  rc.type = RopeType::yarn, rc.layout = RopeLayout::interleaved, rc.dim = 64, rc.factor = 40.f;
  rc.mscale = 1.f, rc.mscale_all_dim = 1.f;
  const Rope rope(rc, ctx + 1);
  MlaAttention<bf16> attn(m.cfg, m.weights(), rope, form);
  MlaCache cache = attn.make_cache(ctx + 1);
  auto xp = f32_matrix(ctx, R1Mla::d, 7);
  Matrix<float> yp(ctx, R1Mla::d);
  attn.forward(pool(), xp.cview(), yp.view(), cache);
  auto x = f32_matrix(1, R1Mla::d, 8);
  Matrix<float> y(1, R1Mla::d);
  for (auto _ : state) {
    attn.forward(pool(), x.cview(), y.view(), cache);
    cache.truncate(ctx);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["cache_B_per_pos"] = double(cache.bytes_per_position());
  set_bytes(state, m.weight_bytes() + double(cache.bytes_per_position()) * double(ctx + 1),
            2.0 * m.weight_bytes() / 2);
  state.SetLabel(std::string(form == MlaForm::absorbed ? "absorbed " : "naive ") +
                 std::string(cpu::isa_name(cpu::kernels().isa)) +
                 " threads=" + std::to_string(pool().size()));
}
BENCHMARK(BM_mla_r1_decode)
    ->Args({256, 0})
    ->Args({256, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ---- router and the MoE proof at R1 shapes ---------------------------------------------------
constexpr std::size_t kD = 7168, kI = 2048, kE = 256, kDistinct = 8;

RouterConfig r1_router() {
  RouterConfig c;
  c.method = RouterMethod::noaux_tc;
  c.n_experts = kE, c.top_k = 8, c.n_group = 8, c.topk_group = 4, c.routed_scaling_factor = 2.5f;
  return c;
}

struct R1Experts {
  Matrix<bf16> gate = bf16_matrix(kE, kD, 40, 0.5f);
  std::vector<float> bias = std::vector<float>(kE, 0.f);
  std::vector<Matrix<bf16>> g, u, dn;  // kDistinct routed + 1 shared
  R1Experts() {
    for (std::size_t e = 0; e <= kDistinct; ++e) {
      g.push_back(bf16_matrix(kI, kD, 100 + std::uint32_t(3 * e)));
      u.push_back(bf16_matrix(kI, kD, 101 + std::uint32_t(3 * e)));
      dn.push_back(bf16_matrix(kD, kI, 102 + std::uint32_t(3 * e)));
    }
  }
  MoE<bf16> moe() const {
    std::vector<SwigluMlp<bf16>> experts, shared;
    for (std::size_t e = 0; e < kE; ++e) {
      const std::size_t p = e % kDistinct;
      experts.emplace_back(g[p].cview(), u[p].cview(), dn[p].cview());
    }
    shared.emplace_back(g[kDistinct].cview(), u[kDistinct].cview(), dn[kDistinct].cview());
    return MoE<bf16>(Router<bf16>(r1_router(), gate.cview(), bias.data()), std::move(experts),
                     std::move(shared));
  }
};
R1Experts& r1_experts() {
  static R1Experts e;
  return e;
}

void BM_router_r1(benchmark::State& state) {
  auto& ex = r1_experts();
  Router<bf16> router(r1_router(), ex.gate.cview(), ex.bias.data());
  auto x = f32_matrix(1, kD, 9);
  Matrix<std::int32_t> idx(1, 8);
  Matrix<float> w(1, 8);
  for (auto _ : state) {
    router.forward(pool(), x.cview(), idx.view(), w.view());
    benchmark::DoNotOptimize(w.data());
  }
  set_bytes(state, double(kE * kD) * 2, 2.0 * kE * kD);
}
BENCHMARK(BM_router_r1)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_moe_vs_dense_r1(benchmark::State& state) {
  auto& ex = r1_experts();
  MoE<bf16> moe = ex.moe();
  // The dense comparison: one SwiGLU of intermediate 9 x 2048 holding the same weights.
  static Matrix<bf16> dg = bf16_matrix(9 * kI, kD, 200), du = bf16_matrix(9 * kI, kD, 201),
                      ddn = bf16_matrix(kD, 9 * kI, 202);
  SwigluMlp<bf16> dense(dg.cview(), du.cview(), ddn.cview());
  std::vector<Matrix<float>> xs;
  for (std::uint32_t i = 0; i < 16; ++i) xs.push_back(f32_matrix(1, kD, 300 + i));
  Matrix<float> y(1, kD);
  using clock = std::chrono::steady_clock;
  double t_moe = 0, t_dense = 0, active = 0;
  std::size_t it = 0;
  for (auto _ : state) {
    const auto& x = xs[it++ % xs.size()];
    auto t0 = clock::now();
    dense.forward(pool(), x.cview(), y.view());
    auto t1 = clock::now();
    moe.forward(pool(), x.cview(), y.view());
    auto t2 = clock::now();
    benchmark::DoNotOptimize(y.data());
    t_dense += std::chrono::duration<double>(t1 - t0).count();
    t_moe += std::chrono::duration<double>(t2 - t1).count();
    active += double(moe.stats().active_experts);
  }
  const double n = double(state.iterations());
  state.counters["moe_ms"] = 1e3 * t_moe / n;
  state.counters["dense_ms"] = 1e3 * t_dense / n;
  state.counters["ratio"] = t_moe / t_dense;
  state.counters["active_experts"] = active / n;
  state.counters["moe_GB/s"] = 9.0 * 3 * kI * kD * 2 / (t_moe / n) / 1e9;
  state.counters["dense_GB/s"] = 9.0 * 3 * kI * kD * 2 / (t_dense / n) / 1e9;
  set_bytes(state, 2 * 9.0 * 3 * kI * kD * 2, 2 * 2.0 * 9 * 3 * kI * kD);
}
BENCHMARK(BM_moe_vs_dense_r1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
