// Kernels timed right beside their limit, in one process, alternating: on this shared VM a vCPU
// comes and goes within seconds, so a limit measured in one benchmark and a kernel measured in
// another disagree by up to 40%. Here every kernel run sits between two runs of its limit on the
// same pool (same number of threads), and the result is the median over the pairs of
//   ratio_i = kernel rate_i / mean(limit rate before, limit rate after),
// with the 10th and 90th percentiles (p10, p90), the medians of both rates, and the pair count.
//  - gemm_f32_vs_fma/threads: cpu::matmul<float> 1024^3 (FLOP/s) against the register-resident
//    FMA loop of bench_limits (fma_loop.hpp), run as 8 tasks per thread through the same pool so
//    that a thread which loses its core leaves tasks to the other, as the GEMM's chunks do;
//  - gemv_bf16_vs_read/threads: cpu::matmul<bf16> 18432 x 7168, T = 1 (bytes of W per second)
//    against the read-bandwidth probe (a 512 MiB sum, tmoe/runtime/read_bandwidth.hpp);
//  - gemv_<format>_vs_read/threads (issue 4's table): cpu::matmul_quant 18432 x 7168, T = 1, for
//    Q8_0, Q4_0 and Q4_K on their 8-row interleaved copy and FP8 blocks checked for NaN codes
//    (what the loader reads), in bytes of quantized weights and scales per second, against the
//    same probe; the weights on huge pages (HugeArena) like the loader's copies and the probe.
// One benchmark iteration is one pair; scripts/bench_report.sh prints these counters.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fma_loop.hpp"
#include "random_quant.hpp"
#include "tmoe/backend/cpu/ops.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/core/huge_arena.hpp"
#include "tmoe/runtime/read_bandwidth.hpp"

namespace {

using Clock = std::chrono::steady_clock;

template <class F>
double seconds(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto i = static_cast<std::size_t>(pos);
  const double f = pos - static_cast<double>(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

// One pass of the read probe, in bytes/s.
double read_rate(tmoe::ReadBandwidthProbe& probe) {
  const double r = probe.pass();
  benchmark::DoNotOptimize(probe.sink().data());
  return r;
}

// Runs limit, (kernel, limit) per iteration; limit() and kernel() return their rate.
template <class Limit, class Kernel>
void interleave(benchmark::State& state, Limit&& limit, Kernel&& kernel) {
  std::vector<double> lim{limit()}, ker, ratio;
  for (auto _ : state) {
    ker.push_back(kernel());
    lim.push_back(limit());
    ratio.push_back(ker.back() / (0.5 * (lim[lim.size() - 2] + lim.back())));
  }
  state.counters["ratio"] = quantile(ratio, 0.5);
  state.counters["ratio_p10"] = quantile(ratio, 0.1);
  state.counters["ratio_p90"] = quantile(ratio, 0.9);
  state.counters["kernel_rate"] = quantile(ker, 0.5);
  state.counters["limit_rate"] = quantile(lim, 0.5);
  state.counters["pairs"] = static_cast<double>(ratio.size());
}

#if defined(TMOE_BENCH_HAVE_FMA_LOOP)
void BM_gemm_f32_vs_fma(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("needs AVX2 + FMA");
    return;
  }
  const int threads = static_cast<int>(state.range(0));
  const std::size_t n = 1024;
  tmoe::ThreadPool pool(threads);
  tmoe::Matrix<float> w(n, n), x(n, n), y(n, n);
  for (std::size_t i = 0; i < n * n; ++i) {
    w.data()[i] = static_cast<float>(i % 97) * 0.01f - 0.5f;
    x.data()[i] = static_cast<float>(i % 13) * 0.1f;
  }
  const double gemm_flop = 2.0 * double(n) * double(n) * double(n);
  auto gemm = [&] {
    const double s =
        seconds([&] { tmoe::cpu::matmul<float>(pool, w.cview(), x.cview(), y.view()); });
    benchmark::DoNotOptimize(y.data());
    return gemm_flop / s;
  };
  // About the GEMM's FLOP in 8 tasks per thread (each fma_loop step: 12 FMAs of 8 lanes).
  const std::size_t tasks = 8 * static_cast<std::size_t>(threads);
  const std::size_t iters = static_cast<std::size_t>(gemm_flop / (2.0 * 8 * 12) / double(tasks));
  std::vector<float> sink(tasks * 16);
  auto fma = [&] {
    const double s = seconds([&] {
      pool.run(tasks, [&](std::size_t t, int) {
        std::size_t it = iters;
        benchmark::DoNotOptimize(it);
        sink[t * 16] = tmoe_bench::fma_loop(it);
      });
    });
    benchmark::DoNotOptimize(sink.data());
    return 2.0 * 8 * 12 * double(iters) * double(tasks) / s;
  };
  gemm();  // warm: scratch buffers, pages of y
  interleave(state, fma, gemm);
  state.SetLabel(std::string(tmoe::cpu::isa_name(tmoe::cpu::kernels().isa)));
}
BENCHMARK(BM_gemm_f32_vs_fma)
    ->Name("gemm_f32_vs_fma")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Iterations(25)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
#endif

void BM_gemv_bf16_vs_read(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const std::size_t out = 18432, in = 7168;
  tmoe::ThreadPool pool(threads);
  tmoe::ReadBandwidthProbe probe(pool, std::size_t{512} << 20);
  tmoe::Matrix<tmoe::bf16> w(out, in);
  tmoe::Matrix<float> x(1, in), y(1, out);
  pool.parallel_for(out, 64, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b * in; i < e * in; ++i)
      w.data()[i] = tmoe::bf16::from_float(static_cast<float>(i % 97) * 0.01f - 0.5f);
  });
  for (std::size_t i = 0; i < in; ++i) x.data()[i] = static_cast<float>(i % 13) * 0.1f;
  auto gemv = [&] {
    const double s =
        seconds([&] { tmoe::cpu::matmul<tmoe::bf16>(pool, w.cview(), x.cview(), y.view()); });
    benchmark::DoNotOptimize(y.data());
    return double(out * in * sizeof(tmoe::bf16)) / s;
  };
  auto read = [&] { return read_rate(probe); };
  gemv();
  interleave(state, read, gemv);
  state.SetLabel(std::string(tmoe::cpu::isa_name(tmoe::cpu::kernels().isa)));
}
BENCHMARK(BM_gemv_bf16_vs_read)
    ->Name("gemv_bf16_vs_read")
    ->ArgName("threads")
    ->Arg(2)
    ->Iterations(15)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

template <class F>
void BM_gemv_quant_vs_read(benchmark::State& state) {
  using namespace tmoe;
  const int threads = static_cast<int>(state.range(0));
  const std::size_t out = 18432, in = 7168;
  ThreadPool pool(threads);
  ReadBandwidthProbe probe(pool, std::size_t{512} << 20);
  auto m = tmoe_bench::random_quant_matrix<F>(out, in);
  m.repack();  // Q8_0 / Q4_0 / Q4_K: the interleaved copy; Fp8Block: the NaN check
  auto w = m.view();
  // Onto huge pages, as the loader places what the GEMV streams.
  HugeArena arena;
  if constexpr (quant::kRepackX8<F>) {
    const std::size_t n = quant::repacked_x8_bytes(w);
    std::byte* p = arena.allocate(n);
    std::memcpy(p, w.packed, n);
    w.packed = p;
  } else {
    const std::size_t n = out * in * sizeof(typename F::Block);
    std::byte* p = arena.allocate(n);
    std::memcpy(p, w.blocks, n);
    w.blocks = reinterpret_cast<const typename F::Block*>(p);
  }
  Matrix<float> x(1, in), y(1, out);
  for (std::size_t i = 0; i < in; ++i) x.data()[i] = static_cast<float>(i % 13) * 0.1f - 0.6f;
  const auto& k = cpu::kernels();
  const double bytes = double(w.weight_bytes());
  auto gemv = [&] {
    const double s = seconds([&] { cpu::matmul_quant<F>(pool, w, x.cview(), y.view(), k); });
    benchmark::DoNotOptimize(y.data());
    return bytes / s;
  };
  auto read = [&] { return read_rate(probe); };
  gemv();
  interleave(state, read, gemv);
  state.SetLabel(std::string(F::kName) + " " + std::string(cpu::isa_name(k.isa)) +
                 (quant::kRepackX8<F> ? " x8" : " nan_free"));
}
#define TMOE_QUANT_INTERLEAVED(F, name) \
  BENCHMARK(BM_gemv_quant_vs_read<F>)   \
      ->Name("gemv_" name "_vs_read")   \
      ->ArgName("threads")              \
      ->Arg(2)                          \
      ->Iterations(15)                  \
      ->UseRealTime()                   \
      ->Unit(benchmark::kMillisecond)
TMOE_QUANT_INTERLEAVED(tmoe::quant::Q8_0, "q8_0");
TMOE_QUANT_INTERLEAVED(tmoe::quant::Q4_0, "q4_0");
TMOE_QUANT_INTERLEAVED(tmoe::quant::Q4_K, "q4_k");
TMOE_QUANT_INTERLEAVED(tmoe::quant::Fp8Block, "fp8_block");

}  // namespace

BENCHMARK_MAIN();
