// Elementwise expressions (core/expr.hpp): silu(a) * b (the SwiGLU product) over one MLP row of
// R1-Distill-1.5B (8960, in cache) and over 1M elements (out of L2), and a residual add with a
// row broadcast. Bytes/s counts two float reads and one write per element, for the read bandwidth
// in bench_limits. Compiled for this benchmark's flags (xsimd::default_arch), like any includer.
#include <benchmark/benchmark.h>

#include "tmoe/core/expr.hpp"

namespace {

void BM_silu_mul(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  tmoe::Vector<float> a(tmoe::DExtents<1>(n), 0.5f), b(tmoe::DExtents<1>(n), 2.0f), y(n);  // (n)
  for (auto _ : state) {
    tmoe::assign(y.view(), tmoe::ew::silu(a.cview()) * b.cview());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 12));
}
BENCHMARK(BM_silu_mul)->Arg(8960)->Arg(1 << 20);

void BM_silu_mul_threaded(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  tmoe::ThreadPool pool(2);
  tmoe::Vector<float> a(tmoe::DExtents<1>(n), 0.5f), b(tmoe::DExtents<1>(n), 2.0f), y(n);  // (n)
  for (auto _ : state) {
    tmoe::assign(pool, y.view(), tmoe::ew::silu(a.cview()) * b.cview());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 12));
}
BENCHMARK(BM_silu_mul_threaded)->Arg(8960)->Arg(1 << 20)->UseRealTime();

void BM_add_row_broadcast(benchmark::State& state) {
  const std::size_t rows = 128, cols = 1536;
  tmoe::Matrix<float> x(tmoe::DExtents<2>(rows, cols), 1.0f), y(rows, cols);  // (T, hidden)
  tmoe::Vector<float> bias(tmoe::DExtents<1>(cols), 0.25f);                   // (hidden)
  for (auto _ : state) {
    tmoe::assign(y.view(), x.cview() + tmoe::ew::row_broadcast(bias.cview()));
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * rows * cols * 8));
}
BENCHMARK(BM_add_row_broadcast);

}  // namespace

BENCHMARK_MAIN();
