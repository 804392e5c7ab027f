// ThreadPool overheads: the latency of an empty run() over 2 threads (the fixed cost every
// parallel kernel of a decode step pays), of an empty parallel_for, and of constructing and
// destroying a pool (thread start-up).
#include <benchmark/benchmark.h>

#include <atomic>

#include "tmoe/core/thread_pool.hpp"

namespace {

void BM_run_empty(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  tmoe::ThreadPool pool(threads);
  std::atomic<int> hits{0};
  for (auto _ : state)
    pool.run(static_cast<std::size_t>(threads),
             [&](std::size_t, int) { hits.fetch_add(1, std::memory_order_relaxed); });
  benchmark::DoNotOptimize(hits.load());
}
BENCHMARK(BM_run_empty)->Arg(1)->Arg(2)->UseRealTime();

void BM_parallel_for_empty(benchmark::State& state) {
  tmoe::ThreadPool pool(2);
  std::atomic<std::size_t> sum{0};
  for (auto _ : state)
    pool.parallel_for(
        1 << 16, 16,
        [&](std::size_t b, std::size_t e, int) { sum.fetch_add(e - b, std::memory_order_relaxed); },
        4);
  benchmark::DoNotOptimize(sum.load());
}
BENCHMARK(BM_parallel_for_empty)->UseRealTime();

void BM_construct(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
    tmoe::ThreadPool pool(threads);
    pool.run(static_cast<std::size_t>(threads), [](std::size_t, int) {});
  }
}
BENCHMARK(BM_construct)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
