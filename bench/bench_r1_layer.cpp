// One DeepSeek-R1 decoder layer at full size, decoding one token, with every matrix in a
// quantized block format (Linear<quant::Q4_0> / Linear<quant::Fp8Block>, layers/linear_quant.hpp):
//   h += MLA(RMSNorm(h));  h += FFN(RMSNorm(h))
//   MLA: hidden 7168, 128 heads, q_lora 1536, kv_lora 512, nope 128 / rope 64 (YaRN) / v 128,
//        naive form (the absorbed form needs a float/bf16 kv_b), `kCtx` positions already cached;
//   FFN: dense SwiGLU 18432 (layers 0-2) or the MoE block: 256 distinct routed experts of width
//        2048, noaux_tc top-8 in 4 of 8 groups, + 1 shared expert (layers 3-60).
// Random weights written straight into the block format (Q4_0: f16 scale 0.02/8, random nibbles;
// FP8: random e4m3 bytes without the NaN code, 128x128 scales 0.02/448), so building the 6.4 GB
// (Q4_0) or 11.4 GB (FP8) MoE layer takes seconds. Only one layer lives at a time (24 GiB VM).
//
// Time: milliseconds per decoded token per layer (mean; `median_ms` the median). Counters: `bytes`
// the layer must read per token (its attention matrices, the router gate, the 8 routed + 1
// shared experts or the dense MLP, in the block format with scales, plus the naive MLA cache of
// kCtx positions); GB_per_s = bytes / median time; `bw_frac` = that rate over the read bandwidth
// measured between the decode steps (a 512 MiB pool-threaded sum after every step, outside the
// timing: on a shared machine the limit moves, so it is sampled beside each step), and
// `bw_frac_vs_first` over BM_read_bandwidth (1 GiB, measured once at the start); `attn_ms` is the
// median of norm + MLA alone, `attn_bw_frac` / `ffn_bw_frac` the two halves' fractions. Different
// inputs route to different experts, so each iteration reads fresh experts.
// Threads: TMOE_THREADS or all hardware threads.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tmoe/layers/attention_mla.hpp"
#include "tmoe/layers/linear_quant.hpp"
#include "tmoe/layers/mlp.hpp"
#include "tmoe/layers/moe.hpp"
#include "tmoe/layers/norms.hpp"
#include "tmoe/layers/rope.hpp"
#include "tmoe/layers/router.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;

namespace {

constexpr std::size_t kD = 7168, kH = 128, kRq = 1536, kR = 512, kDn = 128, kDr = 64, kDv = 128;
constexpr std::size_t kDense = 18432, kI = 2048, kE = 256, kTopK = 8;
constexpr std::size_t kCtx = 128;  // cached positions before the decoded token

ThreadPool& pool() {
  static ThreadPool p([] {
    const char* e = std::getenv("TMOE_THREADS");
    return e ? std::atoi(e) : 0;
  }());
  return p;
}

double g_read_bw = 0;  // bytes/s of BM_read_bandwidth, this run

void BM_read_bandwidth(benchmark::State& state) {
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB of floats
  Vector<float> buf(n);
  pool().parallel_for(n, 1 << 20, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b; i < e; ++i) buf.data()[i] = 1.0f;
  });
  std::vector<float> part(static_cast<std::size_t>(pool().size()) * 16);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    pool().parallel_for(n, 1 << 20, [&](std::size_t b, std::size_t e, int t) {
      part[static_cast<std::size_t>(t) * 16] += cpu::kernels().reduce.sum(buf.data() + b, e - b);
    });
    benchmark::DoNotOptimize(part.data());
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  g_read_bw = double(n) * 4 * double(state.iterations()) / s;
  state.SetBytesProcessed(static_cast<int64_t>(double(n) * 4 * double(state.iterations())));
  state.SetLabel("threads=" + std::to_string(pool().size()));
}
BENCHMARK(BM_read_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

// A (rows, cols) matrix of random blocks, filled by the pool (seeded per row: deterministic).
template <class Q>
quant::QuantMatrix<Q> random_quant(std::size_t rows, std::size_t cols, std::uint64_t seed) {
  quant::QuantMatrix<Q> m(rows, cols);
  const std::size_t nb = cols / Q::kBlockSize;
  pool().parallel_for(rows, 16, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t r = b; r < e; ++r) {
      std::uint64_t s = (seed << 32) ^ (r * 0x9e3779b97f4a7c15ull) ^ 0x2545f4914f6cdd1dull;
      auto next = [&] {  // xorshift64
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return s;
      };
      auto* blk = m.blocks() + r * nb;
      if constexpr (std::is_same_v<Q, quant::Q4_0>) {
        for (std::size_t k = 0; k < nb; ++k) {
          blk[k].d = f16::from_float(0.02f / 8);
          const std::uint64_t a = next(), c = next();
          std::memcpy(blk[k].qs, &a, 8), std::memcpy(blk[k].qs + 8, &c, 8);
        }
      } else {
        static_assert(std::is_same_v<Q, quant::Fp8Block>);
        for (std::size_t k = 0; k < nb; k += 8) {
          std::uint64_t v = next();
          for (std::size_t j = 0; j < 8 && k + j < nb; ++j, v >>= 8) {
            std::uint8_t byte = static_cast<std::uint8_t>(v);
            if ((byte & 0x7f) == 0x7f) byte ^= 1;  // 0x7f / 0xff are NaN in e4m3
            blk[k + j] = f8_e4m3::from_bits(byte);
          }
        }
      }
    }
  });
  if constexpr (std::is_same_v<Q, quant::Fp8Block>) {
    const std::size_t n = ((rows + 127) / 128) * ((cols + 127) / 128);
    std::fill(m.scales(), m.scales() + n, 0.02f / 448.f);
  }
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

// One R1 layer in format Q, owning its weights; `moe` picks the MoE or the dense FFN.
template <class Q>
struct R1Layer {
  std::vector<quant::QuantMatrix<Q>> mats;  // every matrix, in build order
  std::vector<float> ones = std::vector<float>(kD, 1.0f), bias = std::vector<float>(kE, 0.0f);
  Rope rope;
  std::unique_ptr<MlaAttention<Q, float>> attn;
  std::unique_ptr<SwigluMlp<Q>> dense;
  std::unique_ptr<MoE<Q>> moe;
  MlaCache cache;
  double weight_bytes = 0;       // read per decoded token
  double attn_weight_bytes = 0;  // of which the attention matrices
  std::uint64_t seed = 1;

  quant::QuantMatrixView<Q> mat(std::size_t rows, std::size_t cols, bool read = true) {
    mats.push_back(random_quant<Q>(rows, cols, seed++));
    if (read) weight_bytes += double(mats.back().view().weight_bytes());
    return mats.back().view();
  }

  explicit R1Layer(bool with_moe) {
    mats.reserve(8 + 3 * (kE + 1));  // views point into the elements: no reallocation
    RopeConfig rc;
    rc.type = RopeType::yarn, rc.layout = RopeLayout::interleaved, rc.dim = kDr;
    rc.factor = 40.f, rc.original_max_position = 4096, rc.mscale = rc.mscale_all_dim = 1.f;
    rope = Rope(rc, kCtx + 1);
    MlaWeights<Q, float> w;
    w.q_a = mat(kRq, kD), w.q_b = mat(kH * (kDn + kDr), kRq);
    w.kv_a = mat(kR + kDr, kD), w.kv_b = mat(kH * (kDn + kDv), kR), w.o = mat(kD, kH * kDv);
    w.q_a_norm = VectorView<const float>(ones.data(), kRq);
    w.kv_a_norm = VectorView<const float>(ones.data(), kR);
    attn = std::make_unique<MlaAttention<Q, float>>(
        MlaConfig{kD, kH, kRq, kR, kDn, kDr, kDv, 1e-6f, 0.f}, w, rope, MlaForm::naive);
    attn_weight_bytes = weight_bytes;
    if (with_moe) {
      RouterConfig r;
      r.method = RouterMethod::noaux_tc, r.n_experts = kE, r.top_k = kTopK, r.n_group = 8;
      r.topk_group = 4, r.routed_scaling_factor = 2.5f;
      Router<Q> router(r, mat(kE, kD), bias.data());
      std::vector<SwigluMlp<Q>> experts, shared;
      for (std::size_t e = 0; e <= kE; ++e) {
        const bool read = e == kE;  // routed experts: only top-8 are read, counted below
        auto g = mat(kI, kD, read), u = mat(kI, kD, read), dn = mat(kD, kI, read);
        (e < kE ? experts : shared).emplace_back(g, u, dn);
      }
      weight_bytes += double(kTopK) * (2 * double(mats[mats.size() - 3].view().weight_bytes()) +
                                       double(mats.back().view().weight_bytes()));
      moe = std::make_unique<MoE<Q>>(std::move(router), std::move(experts), std::move(shared));
    } else {
      auto g = mat(kDense, kD), u = mat(kDense, kD), dn = mat(kD, kDense);
      dense = std::make_unique<SwigluMlp<Q>>(g, u, dn);
    }
    cache = attn->make_cache(kCtx + 1);
    auto xp = f32_matrix(kCtx, kD, 7);
    Matrix<float> yp(kCtx, kD);
    attn->forward(pool(), xp.cview(), yp.view(), cache);  // the context, once
  }

  double cache_bytes() const { return double(cache.bytes_per_position()) * double(kCtx + 1); }

  // One decoded token: h (1, d) updated in place; *attn_s gets the seconds of norm + attention.
  void decode(MatrixView<float> h, MatrixView<float> x, MatrixView<float> r, double* attn_s) {
    const RMSNorm<float> norm(VectorView<const float>(ones.data(), kD), 1e-6f);
    const auto t0 = std::chrono::steady_clock::now();
    norm.forward(pool(), h, x);
    attn->forward(pool(), x, r, cache);
    cache.truncate(kCtx);
    *attn_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    norm.add_forward(pool(), h, r, x);
    if (moe)
      moe->forward(pool(), x, r);
    else
      dense->forward(pool(), x, r);
    for (std::size_t i = 0; i < kD; ++i) h(0, i) += r(0, i);
  }
};

// The one layer alive (another format's or kind's layer is freed before a new one is built).
std::shared_ptr<void> g_layer;
std::string g_key;

template <class Q>
R1Layer<Q>& layer(bool with_moe) {
  const std::string key = std::string(Q::kName) + (with_moe ? "/moe" : "/dense");
  if (g_key != key) {
    g_layer.reset(), g_key.clear();
    g_layer = std::make_shared<R1Layer<Q>>(with_moe);
    g_key = key;
  }
  return *static_cast<R1Layer<Q>*>(g_layer.get());
}

// A 512 MiB streaming read through the same pool (seconds), timed between decode steps.
double timed_read() {
  static Vector<float> buf = [] {
    Vector<float> v(std::size_t{1} << 27);
    std::fill(v.data(), v.data() + v.size(), 1.0f);
    return v;
  }();
  std::vector<float> part(static_cast<std::size_t>(pool().size()) * 16);
  const auto t0 = std::chrono::steady_clock::now();
  pool().parallel_for(buf.size(), 1 << 20, [&](std::size_t b, std::size_t e, int t) {
    part[static_cast<std::size_t>(t) * 16] += cpu::kernels().reduce.sum(buf.data() + b, e - b);
  });
  benchmark::DoNotOptimize(part.data());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

template <class Q>
void BM_r1_layer_decode(benchmark::State& state) {
  const bool with_moe = state.range(0) != 0;
  auto& L = layer<Q>(with_moe);
  std::vector<Matrix<float>> hs;
  for (std::uint32_t i = 0; i < 16; ++i) hs.push_back(f32_matrix(1, kD, 300 + i));
  Matrix<float> h(1, kD), x(1, kD), r(1, kD);
  std::size_t it = 0;
  double active = 0;
  std::vector<double> t_decode, t_read, t_attn;
  double ta = 0;
  for (auto _ : state) {
    std::copy(hs[it % 16].data(), hs[it % 16].data() + kD, h.data());
    ++it;
    const auto t0 = std::chrono::steady_clock::now();
    L.decode(h.view(), x.view(), r.view(), &ta);
    t_attn.push_back(ta);
    benchmark::DoNotOptimize(h.data());
    t_decode.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (L.moe) active += double(L.moe->stats().active_experts);
    state.PauseTiming();
    t_read.push_back(timed_read());
    state.ResumeTiming();
  }
  const double bytes = L.weight_bytes + L.cache_bytes();
  const double n = double(state.iterations());
  const double rate = bytes / median(t_decode), bw = double(std::size_t{1} << 29) / median(t_read);
  state.SetBytesProcessed(static_cast<int64_t>(bytes * n));
  state.counters["bytes"] = bytes;
  state.counters["median_ms"] = 1e3 * median(t_decode);
  state.counters["attn_ms"] = 1e3 * median(t_attn);  // norm + MLA; the rest is the FFN
  // The two halves against the same bandwidth: attention (its matrices + the cache), FFN.
  const double attn_bytes = L.attn_weight_bytes + L.cache_bytes();
  state.counters["attn_bw_frac"] = attn_bytes / median(t_attn) / bw;
  state.counters["ffn_bw_frac"] = (bytes - attn_bytes) / (median(t_decode) - median(t_attn)) / bw;
  state.counters["GB_per_s"] = rate / 1e9;
  state.counters["read_GB_per_s"] = bw / 1e9;  // interleaved with the decode steps
  state.counters["bw_frac"] = rate / bw;
  if (g_read_bw > 0) state.counters["bw_frac_vs_first"] = rate / g_read_bw;
  if (L.moe) state.counters["active_experts"] = active / n;
  state.SetLabel(std::string(Q::kName) + (with_moe ? " moe" : " dense") + " " +
                 std::string(cpu::isa_name(cpu::kernels().isa)) +
                 " threads=" + std::to_string(pool().size()));
}
// Dense first (small), then MoE; one format after the other.
BENCHMARK_TEMPLATE(BM_r1_layer_decode, quant::Q4_0)
    ->ArgName("moe")
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_r1_layer_decode, quant::Fp8Block)
    ->ArgName("moe")
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_r1_layer_decode, quant::Q4_0)
    ->ArgName("moe")
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_r1_layer_decode, quant::Fp8Block)
    ->ArgName("moe")
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
