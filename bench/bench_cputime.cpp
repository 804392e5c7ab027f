// Kernels on one core, timed in process CPU time (a pool of one thread runs inline, so the
// process's CPU time is the kernel's): rates that stay meaningful on a machine shared with other
// jobs, where wall-clock rates and the 2-thread limits move with the load. The FMA loop of
// bench_limits runs here too, so GEMM FLOP/s read as a fraction of one core's FMA peak measured
// in the same run. scripts/bench_cputime.sh runs it with repetitions and prints the best
// repetition of each (the least disturbed), as fractions of the best FMA loop.
//  - gemm_{f32,bf16}: cpu::matmul at 1024^3 and 8960 x 1536 x 128 (FLOP/s);
//  - qgemm_<format>: cpu::matmul_quant prefill, 1024 x 7168 weights, T = 128 (FLOP/s);
//  - qgemv_<format>: the decode GEMV over 1024 x 7168 weights (3.7-7.3 MB, from L3: the kernel's
//    compute ceiling, bytes/s of quantized weights + scales per CPU-second; 1024 rows so that
//    quantizing the activations once per call weighs as little as in a real GEMV);
//    qgemv_<format>_x8: the same on the 8-row interleaved copy (Q8_0, Q4_0, Q4_K);
//    qgemm_<format>_x8: the prefill on it (Q8_0, Q4_0: the integer multi-token kernel).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <string>

#include "fma_loop.hpp"
#include "random_quant.hpp"
#include "tmoe/backend/cpu/ops.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;
using namespace tmoe::quant;

namespace {

#if defined(TMOE_BENCH_HAVE_FMA_LOOP)
void BM_fma_core(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("needs AVX2 + FMA");
    return;
  }
  constexpr std::size_t kIters = 1 << 20;
  for (auto _ : state) {
    std::size_t iters = kIters;
    benchmark::DoNotOptimize(iters);  // a pure call with a constant argument would be hoisted
    float r = tmoe_bench::fma_loop(iters);
    benchmark::DoNotOptimize(r);
  }
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * 8 * 12 * kIters * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_core)->MeasureProcessCPUTime()->Unit(benchmark::kMillisecond);
#endif

template <class WT>
void BM_gemm(benchmark::State& state) {
  const auto out = static_cast<std::size_t>(state.range(0));
  const auto in = static_cast<std::size_t>(state.range(1));
  const auto T = static_cast<std::size_t>(state.range(2));
  ThreadPool pool(1);
  Matrix<WT> w(out, in);              // (out, in)
  Matrix<float> x(T, in), y(T, out);  // (T, in), (T, out)
  for (std::size_t i = 0; i < out * in; ++i)
    w.data()[i] = from_float<WT>(static_cast<float>(i % 97) * 0.01f - 0.5f);
  for (std::size_t i = 0; i < T * in; ++i) x.data()[i] = static_cast<float>(i % 13) * 0.1f;
  for (auto _ : state) {
    cpu::matmul<WT>(pool, w.cview(), x.cview(), y.view());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * double(out * in * T) * double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_gemm<float>)
    ->Name("gemm_f32")
    ->Args({1024, 1024, 1024})
    ->Args({8960, 1536, 128})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gemm<bf16>)
    ->Name("gemm_bf16")
    ->Args({8960, 1536, 128})
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

using tmoe_bench::random_quant_matrix;

// Arg: T. T == 1: GEMV (bytes/s); T > 1: prefill (FLOP/s); 1024 rows either way.
template <class F, bool kRepack = false>
void BM_quant(benchmark::State& state) {
  const auto T = static_cast<std::size_t>(state.range(0));
  const std::size_t out = 1024, in = 7168;
  ThreadPool pool(1);
  auto w = random_quant_matrix<F>(out, in);
  if (kRepack) w.repack();
  Matrix<float> x(T, in), y(T, out);  // (T, in), (T, out)
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (std::size_t i = 0; i < T * in; ++i) x.data()[i] = d(rng);
  for (auto _ : state) {
    cpu::matmul_quant<F>(pool, w.view(), x.cview(), y.view());
    benchmark::DoNotOptimize(y.data());
  }
  const double it = double(state.iterations());
  if (T == 1)
    state.SetBytesProcessed(static_cast<int64_t>(it * double(w.view().weight_bytes())));
  else
    state.counters["FLOP/s"] =
        benchmark::Counter(2.0 * double(out * in * T) * it, benchmark::Counter::kIsRate);
}
#define TMOE_QUANT_CPUTIME(F, name)    \
  BENCHMARK(BM_quant<F>)               \
      ->Name("qgemv_" name)            \
      ->Arg(1)                         \
      ->MeasureProcessCPUTime()        \
      ->Unit(benchmark::kMicrosecond); \
  BENCHMARK(BM_quant<F>)               \
      ->Name("qgemm_" name)            \
      ->Arg(128)                       \
      ->MeasureProcessCPUTime()        \
      ->Unit(benchmark::kMillisecond)
TMOE_QUANT_CPUTIME(Q8_0, "q8_0");
TMOE_QUANT_CPUTIME(Q4_0, "q4_0");
TMOE_QUANT_CPUTIME(Q4_K, "q4_k");
TMOE_QUANT_CPUTIME(Q6_K, "q6_k");
TMOE_QUANT_CPUTIME(Fp8Block, "fp8");
// The same GEMV on the 8-row interleaved copy (QuantMatrix::repack, as the model loader makes).
BENCHMARK(BM_quant<Q8_0, true>)
    ->Name("qgemv_q8_0_x8")
    ->Arg(1)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_quant<Q4_0, true>)
    ->Name("qgemv_q4_0_x8")
    ->Arg(1)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_quant<Q4_K, true>)
    ->Name("qgemv_q4_k_x8")
    ->Arg(1)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

// The prefill on the interleaved copy: Q4_0 / Q8_0 run the integer multi-token kernel
// (Q8 activations) instead of the dequantizing float GEMM of qgemm_q8_0 / qgemm_q4_0.
BENCHMARK(BM_quant<Q8_0, true>)
    ->Name("qgemm_q8_0_x8")
    ->Arg(128)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quant<Q4_0, true>)
    ->Name("qgemm_q4_0_x8")
    ->Arg(128)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
