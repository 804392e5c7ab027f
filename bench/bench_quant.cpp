// Quantized GEMV (decode, T = 1) at 18432 x 7168 on 2 threads for every format, in bytes/s of
// quantized weights + scales, next to the 2-thread read bandwidth measured in the same run, right
// before each GEMV (ReadBandwidthProbe, as in `tmoe bench`: a 1 GiB float array on huge pages
// summed by a 2-thread tmoe::ThreadPool; also on its own as BM_read_bandwidth).
// Counter frac_bw = weight bytes/s / read bandwidth. Arg 0: 32 rows that stay in L2, timed in
// CPU time: the kernels' compute ceiling (bytes/s) with no memory limit. Also: the FP8 decode
// variants (bit trick vs 256-entry table + gathers), Q8_0 / Q4_0 / Q4_K on the 8-row interleaved
// copy (label "x8", QuantMatrix::repack) and a prefill GEMM (T = 64) in FLOP/s.
// BM_gemv Arg 2 (x8 only): the same GEMV cycling through 8 copies of the interleaved matrix, so
// that no part of it is still in the L3 (32 MiB here) from the previous call, as in a decode step
// (Arg 1 re-reads one 74-140 MB matrix). BM_decode_sequence: the 197 matrices of one decode step
// of the Qwen-1.5B shape (28 x q, k, v, o, gate, up, down and the 151936-row head; Args 1-4: parts
// of it, see below), each its own
// buffer on huge pages (core/huge_arena.hpp, as the loader allocates them), one matmul_quant call
// each as the model makes them (x quantized per call), nothing else: the decode step's GEMV time
// alone, against which `tmoe bench`'s decode time shows what the rest of the step costs.
// BM_prefill_x8: Q4_0 / Q8_0 prefill at T = 64 and 512 over 4096 rows, the float GEMM on the
// stored blocks against the interleaved copy (Q4_0: the integer kernel; Q8_0: the float GEMM
// dequantizing from the copy, cpu::int_prefill), in FLOP/s.
//   build/bench/bench_quant --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "random_quant.hpp"
#include "tmoe/backend/cpu/quant.hpp"
#include "tmoe/core/huge_arena.hpp"
#include "tmoe/quant/quantize.hpp"
#include "tmoe/runtime/read_bandwidth.hpp"

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

// The read probe of `tmoe bench` (ReadBandwidthProbe: 1 GiB on huge pages, one contiguous part per
// thread), on the same pool, so frac_bw here and tmoe bench's bw_fraction share a denominator.
// Best of 3 passes, measured right before each GEMV benchmark so that both numbers see the same
// machine load (the run is often shared with other jobs).
ReadBandwidthProbe& probe() {
  static ReadBandwidthProbe p(pool());
  return p;
}
double read_bandwidth() {
  double best = 0;
  for (int i = 0; i < 3; ++i) best = std::max(best, probe().pass());
  return best;
}

using tmoe_bench::random_quant_matrix;

void BM_read_bandwidth(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(probe().pass());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * probe().bytes()));
}

template <class F, bool kTable = false, bool kRepack = false>
void BM_gemv(benchmark::State& state) {
  auto w = random_quant_matrix<F>(kOut, kIn);
  if (kRepack) w.repack();
  const double bw = read_bandwidth();
  std::size_t T = static_cast<std::size_t>(state.range(0));
  if (T == 2) T = 1;
  // T == 1: the decode GEMV over all 18432 rows; T == 0: 32 rows that stay in L2 (the kernel's
  // compute ceiling, no memory limit, per-call costs included); T == 3: 1536 rows (7-14 MB)
  // that stay in the L3, the ceiling with per-call costs amortized; T > 3: prefill over 4096
  // rows.
  const std::size_t out = T == 1 ? kOut : T == 0 ? 32 : T == 3 ? 1536 : 4096;
  if (T == 0 || T == 3) T = 1;
  auto wv = w.view();
  wv.rows = out;
  // Arg 2: 8 copies of the interleaved matrix, one per call in turn.
  HugeArena arena;
  std::vector<const void*> copies{wv.packed};
  if (state.range(0) == 2 && kRepack) {
    const std::size_t n = repacked_x8_bytes(wv);
    for (int c = 1; c < 8; ++c) {
      std::byte* p = arena.allocate(n);
      std::memcpy(p, wv.packed, n);
      copies.push_back(p);
    }
  }
  Matrix<float> x(T, kIn), y(T, out);  // (T, in), (T, out)
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (std::size_t i = 0; i < T * kIn; ++i) x.data()[i] = d(rng);
  const auto& k = cpu::kernels();
  cpu::QuantRowsFn<F> fn = nullptr;
  if constexpr (kTable) fn = k.quant.rows_fp8_block_table;
  std::size_t call = 0;
  for (auto _ : state) {
    if constexpr (kRepackX8<F>) wv.packed = copies[call++ % copies.size()];
    cpu::matmul_quant<F>(pool(), wv, x.cview(), y.view(), k, fn);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = double(wv.weight_bytes());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * double(out) * kIn * double(T) * double(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["read_bw_GBps"] = bw / 1e9;
  if (state.range(0) == 1 || state.range(0) == 2)
    state.counters["frac_bw"] =
        benchmark::Counter(bytes * double(state.iterations()) / bw, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(F::kName) + " " + std::string(cpu::isa_name(k.isa)) +
                 (kTable ? " table" : "") + (kRepack ? " x8" : ""));
}
// One decode step's GEMVs of the Qwen-1.5B shape (hidden 1536, 12 heads of 128, 2 kv heads,
// intermediate 8960, 28 layers, vocab 151936), repacked, each matrix its own huge-page buffer
// (filled by tiling one valid repacked matrix: timing only, the values do not matter).
template <class F>
void BM_decode_sequence(benchmark::State& state) {
  constexpr std::size_t d = 1536, kv = 256, I = 8960, L = 28, V = 151936;
  auto src = random_quant_matrix<F>(I, d);
  src.repack();
  const auto sv = src.view();
  const std::size_t src_bytes = repacked_x8_bytes(sv);
  // Arg 0: the whole step; 1: the MLP matrices only (gate, up, down); 2: gate and up only (1536
  // columns); 3: down only (8960 columns); 4: attention only (q, k, v, o).
  const auto part = state.range(0);
  std::vector<std::pair<std::size_t, std::size_t>> shapes;
  for (std::size_t l = 0; l < L; ++l) {
    if (part == 0 || part == 4)
      for (const auto& s : {std::pair{d, d}, std::pair{kv, d}, std::pair{kv, d}, std::pair{d, d}})
        shapes.push_back(s);
    if (part <= 2) shapes.push_back({I, d}), shapes.push_back({I, d});
    if (part <= 1 || part == 3) shapes.push_back({d, I});
  }
  if (part == 0) shapes.push_back({V, d});
  HugeArena arena;
  std::vector<QuantMatrixView<F>> mats;
  double bytes = 0;
  for (const auto& [rows, cols] : shapes) {
    QuantMatrixView<F> v = sv;
    v.rows = rows;
    v.cols = cols;
    v.row_stride = cols / F::kBlockSize;
    const std::size_t n = repacked_x8_bytes(v);
    std::byte* p = arena.allocate(n);
    for (std::size_t o = 0; o < n; o += src_bytes)
      std::memcpy(p + o, sv.packed, std::min(src_bytes, n - o));
    v.packed = p;
    mats.push_back(v);
    bytes += double(v.weight_bytes());
  }
  // v.blocks stays the source's (valid for its I x d rows): the kernels read only the copy when
  // every range is whole groups of 8 rows, as here.
  const double bw = read_bandwidth();
  Matrix<float> x(1, I), y(1, V);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (std::size_t i = 0; i < I; ++i) x.data()[i] = dist(rng);
  const auto& k = cpu::kernels();
  for (auto _ : state) {
    for (const auto& m : mats)
      cpu::matmul_quant<F>(pool(), m, MatrixView<const float>(x.data(), 1, m.cols),
                           MatrixView<float>(y.data(), 1, m.rows), k);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(double(state.iterations()) * bytes));
  state.counters["read_bw_GBps"] = bw / 1e9;
  state.counters["frac_bw"] =
      benchmark::Counter(bytes * double(state.iterations()) / bw, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(F::kName) + " x8, " + std::to_string(mats.size()) + " matrices");
}

// Prefill (T = state.range(0) tokens) of Q4_0 / Q8_0 / Q4_K / Q6_K over 4096 x kIn: arg 1 selects
// the path, 0 = the dequantizing float GEMM (no interleaved copy), 1 = the integer kernel on the
// 8-row interleaved copy (QuantMatrix::repack, Q8 activations), both in the same run.
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
                 (!x8                                     ? " float gemm"
                  : cpu::detail::int_prefill(w.view(), k) ? " x8 int"
                                                          : " float gemm on the x8 copy"));
}

// Activation quantization (QuantKernels::quantize_act) of one 8960-float row (Qwen-1.5B's down
// input), Arg 0: this CPU's kernel table, Arg 1: the portable one (the scalar loop every table
// ran before the AVX2 path); one thread, in floats/s. A decode step runs it serially between
// matrices (the other threads wait), ~113 rows per Qwen-1.5B token.
void BM_quantize_act(benchmark::State& state) {
  constexpr std::size_t n = 8960;
  const auto& k = state.range(0) ? cpu::kernels_for(cpu::Isa::portable) : cpu::kernels();
  std::vector<float> x(n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (auto& v : x) v = d(rng);
  std::vector<BlockQ8Act> q(n / 32);
  for (auto _ : state) {
    k.quant.quantize_act(x.data(), n, q.data());
    benchmark::DoNotOptimize(q.data());
  }
  state.counters["floats/s"] =
      benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(cpu::isa_name(k.isa)));
}
}  // namespace

BENCHMARK(BM_quantize_act)->DenseRange(0, 1)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_decode_sequence<Q4_0>)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decode_sequence<Q8_0>)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0, false, true>)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0, false, true>)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_read_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q6_K>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q6_K, false, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<NF4>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Int8Row>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block, true>)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gemv<Q8_0, false, true>)->Arg(3)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_0, false, true>)->Arg(3)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gemv<Q4_K, false, true>)->Arg(3)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gemv<Q6_K, false, true>)->Arg(3)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gemv<Fp8Block>)->Arg(3)->Unit(benchmark::kMicrosecond)->UseRealTime();
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
BENCHMARK(BM_prefill_x8<Q4_K>)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_prefill_x8<Q6_K>)
    ->ArgsProduct({{64, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
