// matmul (cpu/blas.hpp) at the shapes that matter, 2 threads, the dispatched ISA.
//  GEMV (T = 1): DeepSeek-R1 dense MLP up/gate (18432 x 7168), R1-Distill-1.5B MLP (8960 x 1536)
//  and its LM head (151936 x 1536); bytes/s counts the weights plus x and y, to compare with
//  bench_limits' read bandwidth.
//  GEMM (T > 1): prefill of 128 and 512 tokens through 8960 x 1536, and 1024^3; FLOP/s = 2 T out
//  in per second, to compare with bench_limits' FMA peak. The "CPU" column is the process's CPU
//  time (all threads), as in bench_limits.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "tmoe/backend/cpu/ops.hpp"

namespace {

template <class WT>
void BM_matmul(benchmark::State& state) {
  const auto out = static_cast<std::size_t>(state.range(0));
  const auto in = static_cast<std::size_t>(state.range(1));
  const auto T = static_cast<std::size_t>(state.range(2));
  tmoe::ThreadPool pool(2);
  tmoe::Matrix<WT> w(out, in);              // (out, in)
  tmoe::Matrix<float> x(T, in), y(T, out);  // (T, in), (T, out)
  pool.parallel_for(out, 64, [&](std::size_t b, std::size_t e, int) {
    for (std::size_t i = b * in; i < e * in; ++i)
      w.data()[i] = tmoe::from_float<WT>(static_cast<float>(i % 97) * 0.01f - 0.5f);
  });
  for (std::size_t i = 0; i < T * in; ++i) x.data()[i] = static_cast<float>(i % 13) * 0.1f;
  for (auto _ : state) {
    tmoe::cpu::matmul<WT>(pool, w.cview(), x.cview(), y.view());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double it = static_cast<double>(state.iterations());
  state.SetBytesProcessed(
      static_cast<int64_t>(it * static_cast<double>(out * in * sizeof(WT) + T * (in + out) * 4)));
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(out * in * T) * it, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(tmoe::cpu::isa_name(tmoe::cpu::kernels().isa)));
}

void gemv_shapes(benchmark::internal::Benchmark* b) {
  b->Args({18432, 7168, 1})->Args({8960, 1536, 1})->Args({151936, 1536, 1});
  b->ArgNames({"out", "in", "T"})
      ->UseRealTime()
      ->MeasureProcessCPUTime()
      ->Unit(benchmark::kMillisecond);
}
void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({8960, 1536, 128})->Args({8960, 1536, 512})->Args({1024, 1024, 1024});
  b->ArgNames({"out", "in", "T"})
      ->UseRealTime()
      ->MeasureProcessCPUTime()
      ->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_matmul<float>)->Name("gemv_f32")->Apply(gemv_shapes);
BENCHMARK(BM_matmul<tmoe::bf16>)->Name("gemv_bf16")->Apply(gemv_shapes);
BENCHMARK(BM_matmul<tmoe::f16>)->Name("gemv_f16")->Apply(gemv_shapes);
BENCHMARK(BM_matmul<float>)->Name("gemm_f32")->Apply(gemm_shapes);
BENCHMARK(BM_matmul<tmoe::bf16>)->Name("gemm_bf16")->Apply(gemm_shapes);

}  // namespace

BENCHMARK_MAIN();
