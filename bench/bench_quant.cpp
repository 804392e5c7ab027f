// Quantized GEMV (decode, T = 1) at 18432 x 7168 on 2 threads for every format, in bytes/s of
// quantized weights + scales, next to the 2-thread read bandwidth measured in the same run, right
// before each GEMV (the sum of a 1 GiB float array split across a 2-thread tmoe::ThreadPool;
// also on its own as BM_read_bandwidth).
// Counter frac_bw = weight bytes/s / read bandwidth. Arg 0: 32 rows that stay in L2, timed in
// CPU time: the kernels' compute ceiling (bytes/s) with no memory limit. Also: the FP8 decode
// variants (bit trick vs 256-entry table + gathers), Q8_0 / Q4_0 / Q4_K on the 8-row interleaved
// copy (label "x8", QuantMatrix::repack) and a prefill GEMM (T = 64) in FLOP/s; BM_prefill_x8:
// Q4_0 / Q8_0 prefill at T = 64 and 512 over 4096 rows, the float GEMM against the integer kernel
// on the interleaved copy, in FLOP/s.
//   build/bench/bench_quant --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "random_quant.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/quant/quantize.hpp"

using namespace tmoe;
using namespace tmoe::quant;

namespace {
constexpr std::size_t kOut = 18432, kIn = 7168;
constexpr int kMaxThreads = 2;

// 2 threads; TMOE_BENCH_THREADS=1 times one core (its CPU column is then the whole work, which
// stays meaningful on a machine shared with other jobs).
ThreadPool& pool() {
  static ThreadPool p([] {
    const char* e = std::getenv("TMOE_BENCH_THREADS");
    return e && *e ? std::clamp(std::atoi(e), 1, kMaxThreads) : kMaxThreads;
  }());
  return p;
}

double read_bandwidth_once(const std::vector<float>& a) {
  const auto& k = cpu::kernels();
  float part[kMaxThreads] = {};
  const auto t0 = std::chrono::steady_clock::now();
  pool().parallel_for(a.size(), 1 << 20, [&](std::size_t b, std::size_t e, int t) {
    part[t] += k.reduce.sum(a.data() + b, e - b);
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  benchmark::DoNotOptimize(part);
  return double(a.size() * sizeof(float)) / s;
}

// Best of 3 passes over 1 GiB, measured right before each GEMV benchmark so that both numbers
// see the same machine load (the run is often shared with other jobs).
const std::vector<float>& bandwidth_array() {
  static const std::vector<float> a((std::size_t{1} << 30) / sizeof(float), 1.0f);
  return a;
}
double read_bandwidth() {
  double best = 0;
  for (int i = 0; i < 3; ++i) best = std::max(best, read_bandwidth_once(bandwidth_array()));
  return best;
}

using tmoe_bench::random_quant_matrix;

void BM_read_bandwidth(benchmark::State& state) {
  const auto& a = bandwidth_array();
  for (auto _ : state) benchmark::DoNotOptimize(read_bandwidth_once(a));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * a.size() * sizeof(float)));
}

template <class F, bool kTable = false, bool kRepack = false>
void BM_gemv(benchmark::State& state) {
  auto w = random_quant_matrix<F>(kOut, kIn);
  if (kRepack) w.repack();
  const double bw = read_bandwidth();
  std::size_t T = static_cast<std::size_t>(state.range(0));
  // T == 1: the decode GEMV over all 18432 rows; T == 0: 32 rows that stay in L2 (the kernel's
  // compute ceiling, no memory limit); T > 1: prefill over 4096 rows.
  const std::size_t out = T == 1 ? kOut : T == 0 ? 32 : 4096;
  if (T == 0) T = 1;
  auto wv = w.view();
  wv.rows = out;
  Matrix<float> x(T, kIn), y(T, out);  // (T, in), (T, out)
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (std::size_t i = 0; i < T * kIn; ++i) x.data()[i] = d(rng);
  const auto& k = cpu::kernels();
  cpu::QuantRowsFn<F> fn = nullptr;
  if constexpr (kTable) fn = k.quant.rows_fp8_block_table;
  for (auto _ : state) {
    cpu::matmul_quant<F>(pool(), wv, x.cview(), y.view(), k, fn);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = double(wv.weight_bytes());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * double(out) * kIn * double(T) * double(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["read_bw_GBps"] = bw / 1e9;
  if (state.range(0) == 1)
    state.counters["frac_bw"] =
        benchmark::Counter(bytes * double(state.iterations()) / bw, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(F::kName) + " " + std::string(cpu::isa_name(k.isa)) +
                 (kTable ? " table" : "") + (kRepack ? " x8" : ""));
}
// Prefill (T = state.range(0) tokens) of Q4_0 / Q8_0 over 4096 x kIn: arg 1 selects the path,
// 0 = the dequantizing float GEMM (no interleaved copy), 1 = the integer kernel on the 8-row
// interleaved copy (QuantMatrix::repack, Q8 activations), both in the same run.
template <class F>
void BM_prefill_x8(benchmark::State& state) {
  constexpr std::size_t out = 4096;
  const auto T = static_cast<std::size_t>(state.range(0));
  const bool x8 = state.range(1) != 0;
  auto w = random_quant_matrix<F>(out, kIn);
  if (x8) w.repack();
  Matrix<float> x(T, kIn), y(T, out);  // (T, in), (T, out)
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (std::size_t i = 0; i < T * kIn; ++i) x.data()[i] = d(rng);
  const auto& k = cpu::kernels();
  for (auto _ : state) {
    cpu::matmul_quant<F>(pool(), w.view(), x.cview(), y.view(), k);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * double(out) * kIn * double(T) * double(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.SetLabel(std::string(F::kName) + " " + std::string(cpu::isa_name(k.isa)) +
                 (x8 ? " x8 int" : " float gemm"));
}
}  // namespace

BENCHMARK(BM_read_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q6_K>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<NF4>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Int8Row>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q4_0>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q8_0, false, true>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q4_0, false, true>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q4_K, false, true>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q4_K>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q6_K>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<NF4>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Int8Row>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Fp8Block>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Fp8Block, true>)->Arg(0)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemv<Q8_0>)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K>)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block>)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_prefill_x8<Q4_0>)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_prefill_x8<Q8_0>)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
