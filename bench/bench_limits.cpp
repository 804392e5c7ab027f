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

#include "fma_loop.hpp"
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

#if defined(TMOE_BENCH_HAVE_FMA_LOOP)
using tmoe_bench::fma_loop;

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
