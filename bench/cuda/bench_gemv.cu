// bench/cuda/bench_gemv.cu: decode GEMV bandwidth against the device's measured memory limits.
//
// Measures, in one process: (1) a large device-to-device copy (cudaMemcpyAsync, bytes read plus
// bytes written), (2) a read-only streaming kernel (16-byte loads, the GEMV's access pattern
// without the math), then every GEMV variant at DeepSeek-R1 decode shapes. Each figure is the
// median of many launches timed with CUDA events, over enough weight copies to exceed the L2
// several times; inputs are random (never zeros). Bytes counted: weights (+ fp8 scales), x, y.
// Prints one table; --csv FILE also writes it as CSV. A GPU is required (exits 77 without one).
//
//   bench_cuda_gemv [--reps N] [--csv FILE] [--all-configs] [--qwen-configs]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/api_impl.cuh"

using namespace tmoe;
using tmoe::cuda::GemvDefaults;
using tmoe::cuda::kWarpSize;

namespace {

int g_reps = 50;
bool g_all_configs = false;
bool g_qwen_configs = false;
FILE* g_csv = nullptr;
double g_copy_gbs = 0, g_read_gbs = 0;
double g_diff = 0;  // max |y - y_library| / max |y_library| of the last configuration

// Median milliseconds per launch: each sample times kBatch back-to-back launches between two
// events (as a decode step's kernels queue behind each other), so launch latency overlaps.
constexpr int kBatch = 10;
template <class F>
double median_ms(F&& launch, int reps) {
  cuda::Event a, b;
  for (int i = 0; i < 3 * kBatch; ++i) launch(i);  // warm-up
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    a.record(nullptr);
    for (int j = 0; j < kBatch; ++j) launch(i * kBatch + j);
    b.record(nullptr);
    ms.push_back(b.since(a) / kBatch);
  }
  TMOE_CUDA_CHECK("bench", cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void row(const char* kernel, const std::string& shape, const std::string& config, double ms,
         double bytes) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-28s %-12s %-14s %9.1f %9.1f %8.3f %8.3f %9.1e\n", kernel, shape.c_str(),
              config.c_str(), ms * 1e3, gbs, gbs / g_copy_gbs, gbs / g_read_gbs, g_diff);
  if (g_csv)
    std::fprintf(g_csv, "%s,%s,%s,%.3f,%.2f,%.4f,%.4f,%.2e\n", kernel, shape.c_str(),
                 config.c_str(), ms * 1e3, gbs, gbs / g_copy_gbs, gbs / g_read_gbs, g_diff);
}

__global__ void fill_random_bytes(std::uint32_t* p, std::size_t n, std::uint32_t seed, bool fp8) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = std::uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    // bf16 pairs: keep exponents moderate (|w| in [2^-8, 2)); fp8: clear NaN patterns.
    if (fp8)
      h &= 0xf7f7f7f7u;
    else
      h = (h & 0x807f807fu) | 0x3c003c00u | (h & 0x00800080u ? 0x00800080u : 0u);
    p[i] = h;
  }
}

template <class T>
cuda::DeviceBuffer<T> random_device(std::size_t n, std::uint32_t seed) {
  cuda::DeviceBuffer<T> d(n);
  const std::size_t words = d.bytes() / 4;
  fill_random_bytes<<<1024, 256>>>(reinterpret_cast<std::uint32_t*>(d.data()), words, seed,
                                   std::is_same_v<T, f8_e4m3>);
  TMOE_CUDA_CHECK("bench", cudaGetLastError());
  return d;
}

__global__ void read_kernel(const uint4* __restrict__ p, std::size_t n, std::uint32_t* out) {
  std::uint32_t acc = 0;
  std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x;
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = cuda::gemv_detail::load_stream16(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *out = acc;  // keeps the loads alive
}

void measure_limits(const cuda::DeviceInfo& dev) {
  const std::size_t bytes = std::size_t(2) << 30;  // 2 GiB each way
  cuda::DeviceBuffer<char> a(bytes), b(bytes);
  cuda::fill_bytes(a.data(), 0x5a, bytes);
  const double copy_ms = median_ms([&](int) { cuda::copy_device(b.data(), a.data(), bytes); }, 20);
  g_copy_gbs = 2.0 * bytes / (copy_ms * 1e-3) / 1e9;
  cuda::DeviceBuffer<std::uint32_t> sink(1);
  const double read_ms = median_ms(
      [&](int) {
        read_kernel<<<dev.sm_count * 8, 512>>>(reinterpret_cast<const uint4*>(a.data()), bytes / 16,
                                               sink.data());
      },
      20);
  g_read_gbs = bytes / (read_ms * 1e-3) / 1e9;
  std::printf("device-to-device copy (2 GiB, read+write): %.1f GB/s\n", g_copy_gbs);
  std::printf("read-only stream (2 GiB, 16-byte loads):   %.1f GB/s\n\n", g_read_gbs);
  std::printf("%-28s %-12s %-14s %9s %9s %8s %8s %9s\n", "kernel", "out x in", "R,U,W,S,dec", "us",
              "GB/s", "/copy", "/read", "vs lib");
  if (g_csv)
    std::fprintf(g_csv, "kernel,shape,config,us,GBs,frac_copy,frac_read,rel_diff_vs_library\n");
}

// kSplit == 0: through launch_gemv (the library's own choice); else the kernel with this config.
template <class W, class X, int kRows, int kUnroll, int kWarps, int kSplit, int kDecode>
void bench_gemv(int out, int in, const cuda::DeviceInfo& dev) {
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  const std::size_t wbytes = std::size_t(out) * in * sizeof(W);
  const int copies = int(std::max<std::size_t>(1, 4 * dev.l2_bytes / wbytes + 1));
  std::vector<cuda::DeviceBuffer<W>> w;
  for (int c = 0; c < copies; ++c) w.push_back(random_device<W>(std::size_t(out) * in, 17 + c));
  const std::size_t rb = (out + 127) / 128, cb = (in + 127) / 128;
  std::vector<float> scale_h(rb * cb);
  std::mt19937 rng(5);
  for (auto& s : scale_h) s = std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
  cuda::DeviceBuffer<float> scale(scale_h.size());
  scale.upload(scale_h.data());
  std::vector<X> xh(in);
  for (auto& v : xh) v = from_float<X>(std::uniform_real_distribution<float>(-2.f, 2.f)(rng));
  cuda::DeviceBuffer<X> x(in);
  x.upload(xh.data());
  cuda::DeviceBuffer<float> y(out);

  const double ms = median_ms(
      [&](int i) {
        if constexpr (kSplit == 0) {
          cuda::launch_gemv(w[i % copies].data(), std::size_t(in), scale.data(), x.data(), y.data(),
                            out, in, nullptr);
        } else {
          const int rows_per_block = kRows * (kWarps / kSplit);
          cuda::gemv_vec_kernel<W, X, kRows, kUnroll, kWarps, kSplit, kDecode>
              <<<(out + rows_per_block - 1) / rows_per_block, kWarps * kWarpSize>>>(
                  w[i % copies].data(), std::size_t(in), scale.data(), cb, x.data(), y.data(), out,
                  in, cuda::GemvBatch{});
        }
      },
      g_reps);
  // A configuration must compute what the library does (the library is what test_cuda checks
  // against the CPU): compare this one's output on the last weight copy with launch_gemv's.
  double diff = 0;
  if constexpr (kSplit != 0) {
    cuda::DeviceBuffer<float> y_lib(out);
    cuda::launch_gemv(w[0].data(), std::size_t(in), scale.data(), x.data(), y_lib.data(), out, in,
                      nullptr);
    const int rows_per_block = kRows * (kWarps / kSplit);
    cuda::gemv_vec_kernel<W, X, kRows, kUnroll, kWarps, kSplit, kDecode>
        <<<(out + rows_per_block - 1) / rows_per_block, kWarps * kWarpSize>>>(
            w[0].data(), std::size_t(in), scale.data(), cb, x.data(), y.data(), out, in,
            cuda::GemvBatch{});
    std::vector<float> a(out), b(out);
    y.download(a.data());
    y_lib.download(b.data());
    double scale_max = 1e-30;
    for (int i = 0; i < out; ++i) {
      diff = std::max(diff, std::abs(double(a[i]) - b[i]));
      scale_max = std::max(scale_max, std::abs(double(b[i])));
    }
    diff /= scale_max;
  }
  g_diff = diff;
  const double bytes = double(wbytes) + (kFp8 ? rb * cb * 4.0 : 0.0) + in * sizeof(X) + out * 4.0;
  char name[64], cfg[32];
  std::snprintf(name, sizeof name, "gemv %s w, %s x", kFp8 ? "fp8-block" : "bf16",
                std::is_same_v<X, float> ? "f32" : "bf16");
  if (kSplit == 0)
    std::snprintf(cfg, sizeof cfg, "launcher");
  else if (kFp8)
    std::snprintf(cfg, sizeof cfg, "%d,%d,%d,%d,d%d", kRows, kUnroll, kWarps, kSplit, kDecode);
  else
    std::snprintf(cfg, sizeof cfg, "%d,%d,%d,%d", kRows, kUnroll, kWarps, kSplit);
  row(name, std::to_string(out) + "x" + std::to_string(in), cfg, ms, bytes);
}

// What launch_gemv gives at every DeepSeek-R1 decode shape.
template <class W, class X>
void bench_shapes(const cuda::DeviceInfo& dev) {
  const int shapes[][2] = {{18432, 7168}, {7168, 18432}, {2048, 7168},  {7168, 2048},  {576, 7168},
                           {1536, 7168},  {24576, 1536}, {7168, 16384}, {129280, 7168}};
  for (const auto& s : shapes) bench_gemv<W, X, 0, 0, 0, 0, 0>(s[0], s[1], dev);
}

// The routed experts of one token in one launch: k of a pool of experts (distinct, a new random
// choice each launch), each (out, in); x shared (gate/up) or one per expert (down).
template <class W, class X>
void bench_gather(int pool, int k, int out, int in, bool x_per_expert) {
  constexpr bool kFp8 = std::is_same_v<W, f8_e4m3>;
  const std::size_t per = std::size_t(out) * in;
  const std::size_t rb = (out + 127) / 128, cb = (in + 127) / 128;
  auto w = random_device<W>(per * pool, 99);
  std::mt19937 rng(11);
  std::vector<float> scale_h(rb * cb * pool);
  for (auto& s : scale_h) s = std::uniform_real_distribution<float>(1e-4f, 1e-2f)(rng);
  cuda::DeviceBuffer<float> scale(scale_h.size());
  scale.upload(scale_h.data());
  const std::size_t nx = x_per_expert ? std::size_t(k) * in : std::size_t(in);
  std::vector<X> xh(nx);
  for (auto& v : xh) v = from_float<X>(std::uniform_real_distribution<float>(-2.f, 2.f)(rng));
  cuda::DeviceBuffer<X> x(nx);
  x.upload(xh.data());
  cuda::DeviceBuffer<float> y(std::size_t(k) * out);
  constexpr int kSets = 64;
  std::vector<std::int32_t> idx_h(std::size_t(kSets) * k);
  std::vector<std::int32_t> perm(pool);
  for (int t = 0; t < kSets; ++t) {
    for (int e = 0; e < pool; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::copy(perm.begin(), perm.begin() + k, idx_h.begin() + std::size_t(t) * k);
  }
  cuda::DeviceBuffer<std::int32_t> idx(idx_h.size());
  idx.upload(idx_h.data());
  const double ms = median_ms(
      [&](int i) {
        cuda::GemvBatch gb{idx.data() + std::size_t(i % kSets) * k, per, rb * cb,
                           x_per_expert ? std::size_t(in) : 0};
        cuda::launch_gemv(w.data(), std::size_t(in), scale.data(), x.data(), y.data(), out, in,
                          nullptr, k, gb);
      },
      g_reps);
  const double bytes = k * (double(per) * sizeof(W) + (kFp8 ? rb * cb * 4.0 : 0.0) + out * 4.0) +
                       double(nx) * sizeof(X);
  char name[64], shape[48];
  std::snprintf(name, sizeof name, "gather %s w, %s x", kFp8 ? "fp8-block" : "bf16",
                std::is_same_v<X, float> ? "f32" : "bf16");
  std::snprintf(shape, sizeof shape, "%dx(%dx%d)", k, out, in);
  g_diff = 0;
  row(name, shape, "launcher", ms, bytes);
}

// Kernel configurations (rows per warp, unroll, warps, split, fp8 decode) at a large and a small
// shape, to choose GemvDefaults and the split rule.
void bench_configs(const cuda::DeviceInfo& dev) {
  using cuda::gemv_detail::kDecodeCvt;
  using cuda::gemv_detail::kDecodeF16Bits;
  using cuda::gemv_detail::kDecodeF32Bits;
  const int out = 18432, in = 7168;
  bench_gemv<bf16, bf16, 1, 8, 8, 1, 0>(out, in, dev);
  bench_gemv<bf16, bf16, 2, 2, 8, 1, 0>(out, in, dev);
  bench_gemv<bf16, bf16, 2, 4, 8, 1, 0>(out, in, dev);
  bench_gemv<bf16, bf16, 4, 2, 8, 1, 0>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 1, 4, 8, 1, kDecodeF32Bits>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 1, 4, 8, 1, kDecodeF16Bits>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 1, 4, 8, 1, kDecodeCvt>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 2, 4, 8, 1, kDecodeF32Bits>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 2, 4, 8, 1, kDecodeF16Bits>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 2, 4, 8, 1, kDecodeCvt>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 2, 2, 8, 1, kDecodeF16Bits>(out, in, dev);
  bench_gemv<f8_e4m3, bf16, 4, 2, 8, 1, kDecodeF16Bits>(out, in, dev);
  bench_gemv<f8_e4m3, float, 2, 4, 8, 1, kDecodeF16Bits>(out, in, dev);
  bench_gemv<f8_e4m3, float, 2, 4, 8, 1, kDecodeCvt>(out, in, dev);
  for (int o : {2048, 576}) {
    bench_gemv<bf16, bf16, 2, 4, 8, 1, 0>(o, in, dev);
    bench_gemv<bf16, bf16, 2, 4, 8, 4, 0>(o, in, dev);
    bench_gemv<bf16, bf16, 2, 4, 8, 8, 0>(o, in, dev);
    bench_gemv<bf16, bf16, 2, 2, 8, 4, 0>(o, in, dev);
    bench_gemv<bf16, bf16, 2, 2, 8, 8, 0>(o, in, dev);
    bench_gemv<f8_e4m3, bf16, 2, 4, 8, 4, kDecodeCvt>(o, in, dev);
    bench_gemv<f8_e4m3, bf16, 2, 4, 8, 8, kDecodeCvt>(o, in, dev);
    bench_gemv<f8_e4m3, bf16, 2, 2, 8, 8, kDecodeCvt>(o, in, dev);
  }
}

// Kernel configurations at the decode shapes of DeepSeek-R1-Distill-Qwen-1.5B (bf16 weights,
// float x, as cuda::GqaModel runs them): q/k/v, o, gate/up, down, LM head.
template <int kRows, int kUnroll, int kSplit>
void qwen_config(int out, int in, const cuda::DeviceInfo& dev) {
  if (in / 8 >= kSplit * kWarpSize)
    bench_gemv<bf16, float, kRows, kUnroll, 8, kSplit, 0>(out, in, dev);
}
template <int kRows, int kUnroll>
void qwen_splits(int out, int in, const cuda::DeviceInfo& dev) {
  qwen_config<kRows, kUnroll, 1>(out, in, dev);
  qwen_config<kRows, kUnroll, 2>(out, in, dev);
  qwen_config<kRows, kUnroll, 4>(out, in, dev);
  qwen_config<kRows, kUnroll, 8>(out, in, dev);
}
void bench_qwen_configs(const cuda::DeviceInfo& dev) {
  const int shapes[][2] = {{2048, 1536}, {1536, 1536}, {17920, 1536}, {1536, 8960}, {151936, 1536}};
  for (const auto& s : shapes) {
    bench_gemv<bf16, float, 0, 0, 0, 0, 0>(s[0], s[1], dev);
    qwen_splits<1, 4>(s[0], s[1], dev);
    qwen_splits<1, 8>(s[0], s[1], dev);
    qwen_splits<2, 2>(s[0], s[1], dev);
    qwen_splits<2, 4>(s[0], s[1], dev);
    qwen_splits<2, 8>(s[0], s[1], dev);
    qwen_splits<4, 2>(s[0], s[1], dev);
    qwen_splits<4, 4>(s[0], s[1], dev);
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      g_reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--csv") && i + 1 < argc)
      g_csv = std::fopen(argv[++i], "w");
    else if (!std::strcmp(argv[i], "--all-configs"))
      g_all_configs = true;
    else if (!std::strcmp(argv[i], "--qwen-configs"))
      g_qwen_configs = true;
  }
  if (cuda::device_count() == 0) {
    std::printf("bench_cuda_gemv: skipped: no CUDA device (%s)\n", cuda::device_count_error());
    return 77;
  }
  try {
    const cuda::DeviceInfo dev = cuda::device_info(0);
    std::printf("%s, sm_%d%d, %d SMs, %.0f MB L2, %.1f GiB\n", dev.name, dev.major, dev.minor,
                dev.sm_count, dev.l2_bytes / 1e6, dev.global_mem / double(1 << 30));
    measure_limits(dev);
    if (g_qwen_configs) {
      bench_qwen_configs(dev);
      return 0;
    }
    if (g_all_configs) bench_configs(dev);
    bench_shapes<bf16, bf16>(dev);
    bench_shapes<bf16, float>(dev);
    bench_shapes<f8_e4m3, bf16>(dev);
    bench_shapes<f8_e4m3, float>(dev);
    // R1 MoE: 8 of 256 experts; a pool of 32 keeps the weights well beyond the L2.
    bench_gather<f8_e4m3, bf16>(32, 8, 2048, 7168, false);
    bench_gather<f8_e4m3, bf16>(32, 8, 7168, 2048, true);
    bench_gather<bf16, bf16>(32, 8, 2048, 7168, false);
    bench_gather<bf16, bf16>(32, 8, 7168, 2048, true);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_cuda_gemv: %s\n", e.what());
    return 1;
  }
  if (g_csv) std::fclose(g_csv);
  return 0;
}
