// The machine's limits that the kernel benchmarks are read against:
//  - read bandwidth: a sum over a 1 GiB float array (far larger than any cache), the array split
//    into one contiguous part per thread of tmoe's ThreadPool, 1 and 2 threads (bytes/s); the
//    probe lives in tmoe/runtime/read_bandwidth.hpp, shared with `tmoe bench`;
//  - FMA peak: a register-resident loop of independent 256-bit FMAs (AVX2 + FMA, 12 chains to
//    cover latency x pipes), 1 and 2 threads (FLOP/s, one FMA = 2 FLOP per lane).
// Rates are per wall-clock second; the "CPU" column is the whole process's CPU time, so that
// scripts/bench_report.sh can also give rates per CPU-second, which hold up better on a machine
// shared with other work.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"
#include "tmoe/runtime/read_bandwidth.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

void BM_read_bandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  tmoe::ThreadPool pool(threads);
  tmoe::ReadBandwidthProbe probe(pool);
  for (auto _ : state) {
    probe.sum_once();
    benchmark::DoNotOptimize(probe.sink().data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * probe.bytes()));
  state.SetLabel(std::string(tmoe::cpu::isa_name(tmoe::cpu::kernels().isa)));
}
BENCHMARK(BM_read_bandwidth)
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// 12 independent accumulators: 2 FMA pipes x 4-5 cycles latency need >= 10 in flight.
__attribute__((target("avx2,fma"), noinline)) float fma_loop(std::size_t iters) {
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f),
         a3 = _mm256_set1_ps(3.f), a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f),
         a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f), a8 = _mm256_set1_ps(8.f),
         a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  for (std::size_t i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, m, c);
    a1 = _mm256_fmadd_ps(a1, m, c);
    a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c);
    a4 = _mm256_fmadd_ps(a4, m, c);
    a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c);
    a7 = _mm256_fmadd_ps(a7, m, c);
    a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c);
    a10 = _mm256_fmadd_ps(a10, m, c);
    a11 = _mm256_fmadd_ps(a11, m, c);
  }
  const __m256 s =
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                  _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
                    _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

void BM_fma_peak(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("needs AVX2 + FMA");
    return;
  }
  const int threads = static_cast<int>(state.range(0));
  constexpr std::size_t kIters = 1 << 22;
  tmoe::ThreadPool pool(threads);
  std::vector<float> sink(static_cast<std::size_t>(threads) * 16);
  for (auto _ : state) {
    pool.run(static_cast<std::size_t>(threads),
             [&](std::size_t task, int) { sink[task * 16] = fma_loop(kIters); });
    benchmark::DoNotOptimize(sink.data());
  }
  const double flops = 2.0 * 8 * 12 * kIters * threads;
  state.counters["FLOP/s"] = benchmark::Counter(flops * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_peak)
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);
#endif

}  // namespace

BENCHMARK_MAIN();
