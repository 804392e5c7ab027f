// Reductions over a float row that does not fit in cache: bytes/s to compare with the read
// bandwidth measured by bench_limits.
#include <benchmark/benchmark.h>

#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"

static void BM_sum_f32(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::vector<float> x(n, 1.0f);
  const auto& k = tmoe::cpu::kernels();
  for (auto _ : state) benchmark::DoNotOptimize(k.reduce.sum(x.data(), n));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * sizeof(float)));
  state.SetLabel(std::string(tmoe::cpu::isa_name(k.isa)));
}
BENCHMARK(BM_sum_f32)->Arg(4096)->Arg(1 << 24);

BENCHMARK_MAIN();
