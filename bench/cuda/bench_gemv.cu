// bench/cuda/bench_gemv.cu: decode GEMV bandwidth against the device's measured memory limits.
//
// Measures, in one process: (1) a large device-to-device copy (cudaMemcpyAsync, bytes read plus
// bytes written), (2) a read-only streaming kernel (16-byte loads, the GEMV's access pattern
// without the math), then every GEMV variant at DeepSeek-R1 decode shapes. Each figure is the
// median of many launches timed with CUDA events, over enough weight copies to exceed the L2
// several times; inputs are random (never zeros). Bytes counted: weights (+ fp8 scales), x, y.
// Prints one table; --csv FILE also writes it as CSV. A GPU is required (exits 77 without one).
//
//   bench_cuda_gemv [--reps N] [--csv FILE] [--all-configs]
#include <algorithm>
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
FILE* g_csv = nullptr;
double g_copy_gbs = 0, g_read_gbs = 0;

template <class F>
double median_ms(F&& launch, int reps) {
  cuda::Event a, b;
  for (int i = 0; i < 5; ++i) launch(i);  // warm-up
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    a.record(nullptr);
    launch(i);
    b.record(nullptr);
    ms.push_back(b.since(a));
  }
  TMOE_CUDA_CHECK("bench", cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void row(const char* kernel, const std::string& shape, const std::string& config, double ms,
         double bytes) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-28s %-12s %-10s %9.1f %9.1f %8.3f %8.3f\n", kernel, shape.c_str(), config.c_str(),
              ms * 1e3, gbs, gbs / g_copy_gbs, gbs / g_read_gbs);
  if (g_csv)
    std::fprintf(g_csv, "%s,%s,%s,%.3f,%.2f,%.4f,%.4f\n", kernel, shape.c_str(), config.c_str(),
                 ms * 1e3, gbs, gbs / g_copy_gbs, gbs / g_read_gbs);
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
  std::printf("%-28s %-12s %-10s %9s %9s %8s %8s\n", "kernel", "out x in", "R,U,W", "us", "GB/s",
              "/copy", "/read");
  if (g_csv) std::fprintf(g_csv, "kernel,shape,config,us,GBs,frac_copy,frac_read\n");
}

template <class W, class X, int kRows, int kUnroll, int kWarps>
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

  const int rows_per_block = kRows * kWarps;
  const double ms = median_ms(
      [&](int i) {
        cuda::gemv_vec_kernel<W, X, kRows, kUnroll, kWarps>
            <<<(out + rows_per_block - 1) / rows_per_block, kWarps * kWarpSize>>>(
                w[i % copies].data(), std::size_t(in), scale.data(), cb, x.data(), y.data(), out,
                in);
      },
      g_reps);
  const double bytes = double(wbytes) + (kFp8 ? rb * cb * 4.0 : 0.0) + in * sizeof(X) + out * 4.0;
  char name[64], cfg[32];
  std::snprintf(name, sizeof name, "gemv %s w, %s x", kFp8 ? "fp8-block" : "bf16",
                std::is_same_v<X, float> ? "f32" : "bf16");
  std::snprintf(cfg, sizeof cfg, "%d,%d,%d", kRows, kUnroll, kWarps);
  row(name, std::to_string(out) + "x" + std::to_string(in), cfg, ms, bytes);
}

// The launcher's configuration (see launch_gemv's defaults) at every DeepSeek-R1 decode shape.
template <class W, class X>
void bench_shapes(const cuda::DeviceInfo& dev) {
  const int shapes[][2] = {{18432, 7168}, {7168, 18432}, {2048, 7168},  {7168, 2048},
                           {576, 7168},   {1536, 7168},  {24576, 1536}, {7168, 16384}};
  using D = GemvDefaults<W>;
  for (const auto& s : shapes) bench_gemv<W, X, D::kRows, D::kUnroll, D::kWarps>(s[0], s[1], dev);
}

template <class W, class X>
void bench_configs(const cuda::DeviceInfo& dev) {
  const int out = 18432, in = 7168;
  bench_gemv<W, X, 1, 4, 4>(out, in, dev);
  bench_gemv<W, X, 1, 8, 4>(out, in, dev);
  bench_gemv<W, X, 2, 2, 4>(out, in, dev);
  bench_gemv<W, X, 2, 4, 4>(out, in, dev);
  bench_gemv<W, X, 2, 4, 8>(out, in, dev);
  bench_gemv<W, X, 4, 2, 4>(out, in, dev);
  bench_gemv<W, X, 4, 4, 2>(out, in, dev);
  bench_gemv<W, X, 8, 2, 4>(out, in, dev);
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
    if (g_all_configs) {
      bench_configs<bf16, bf16>(dev);
      bench_configs<f8_e4m3, bf16>(dev);
    }
    bench_shapes<bf16, bf16>(dev);
    bench_shapes<bf16, float>(dev);
    bench_shapes<f8_e4m3, bf16>(dev);
    bench_shapes<f8_e4m3, float>(dev);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_cuda_gemv: %s\n", e.what());
    return 1;
  }
  if (g_csv) std::fclose(g_csv);
  return 0;
}
