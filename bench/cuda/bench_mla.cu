// bench/cuda/bench_mla.cu: MLA absorbed decode attention (mla.cuh) against the device's measured
// memory bandwidth, at DeepSeek-R1's dims (Dn 128, Dr 64, Dv 128, R 512) for one decode token.
//
// Measures, in one process: a 2 GiB device-to-device copy (read + write bytes) and a read-only
// streaming kernel (16-byte loads) as the ceilings; then, per context length and head count,
// mla_attention alone (bytes: the cache rows 0..pos, 576 floats each, + q, ctx and the slices'
// partials) and the whole attention core mla_absorb_q + mla_attention + mla_absorb_out (bytes +
// kv_b, bf16, both halves). Each figure is the median of many batches of 10 launches timed with
// CUDA events; the cache is rotated over enough copies to exceed the L2 (50 MB) when it is
// smaller; inputs are random (never zeros). For the bf16 cache also the same 10 launches
// replayed from a CUDA graph (graph us: device time without the host's launch cost, as
// cuda::DeepseekModel decodes), with and without the partials' bytes (g/read, g cache); the
// mla-bf16q rows are the same with q absorbed into bf16 (as cuda::DeepseekModel decodes over a
// bf16 cache; core: mla_absorb_q into bf16 + mla_attention + mla_absorb_out). Also prints
// the fp32 FMA floor of the attention (2 K + 2 R flops per head and key at the measured FMA rate of
// a register-only kernel).
//
//   bench_cuda_mla [--reps N] [--heads H] [--ctx N]   (H: 128 or 16; N: 4096 .. 65536)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tmoe/backend/cuda/api_impl.cuh"

using namespace tmoe;

namespace {

int g_reps = 30;
int g_heads = 0, g_ctx = 0;  // 0: all
constexpr int kBatch = 10;

template <class F>
double median_ms(F&& launch, int reps) {
  cuda::Event a, b;
  for (int i = 0; i < 2 * kBatch; ++i) launch(i);
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

// The same, for kBatch launches captured into a graph (no host launch cost between them).
double graph_median_ms(const cuda::Graph& g, const cuda::Stream& s, int reps) {
  cuda::Event a, b;
  g.launch(s);
  g.launch(s);
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    a.record(s);
    g.launch(s);
    b.record(s);
    ms.push_back(b.since(a) / kBatch);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

__global__ void read_kernel(const uint4* __restrict__ p, std::size_t n, std::uint32_t* out) {
  std::uint32_t acc = 0;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *out = acc;
}

// 8 independent FMA chains per thread, registers only: the fp32 FMA rate.
__global__ void fma_kernel(float* out, int iters, float a) {
  float x[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) x[k] = threadIdx.x * 1e-3f + k;
  for (int i = 0; i < iters; ++i)
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = fmaf(x[k], a, 0.5f);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) s += x[k];
  if (s == 12345.f) *out = s;
}

template <class T>
void fill_random(cuda::DeviceBuffer<T>& d, std::uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<T> h(d.size());
  for (auto& v : h) v = from_float<T>(u(rng));
  d.upload(h.data());
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      g_reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--heads") && i + 1 < argc)
      g_heads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--ctx") && i + 1 < argc)
      g_ctx = std::atoi(argv[++i]);
  if (cuda::device_count() == 0) {
    std::printf("bench_cuda_mla: skipped: no CUDA device\n");
    return 77;
  }
  const cuda::DeviceInfo dev = cuda::device_info(0);
  std::printf("%s, %d SMs\n", dev.name, dev.sm_count);
  double copy_gbs = 0, read_gbs = 0, fma_tflops = 0;
  {
    const std::size_t bytes = std::size_t(2) << 30;
    cuda::DeviceBuffer<char> a(bytes), b(bytes);
    cuda::fill_bytes(a.data(), 0x5a, bytes);
    const double copy_ms =
        median_ms([&](int) { cuda::copy_device(b.data(), a.data(), bytes); }, 10);
    copy_gbs = 2.0 * bytes / (copy_ms * 1e-3) / 1e9;
    cuda::DeviceBuffer<std::uint32_t> sink(1);
    const double read_ms = median_ms(
        [&](int) {
          read_kernel<<<dev.sm_count * 8, 512>>>(reinterpret_cast<const uint4*>(a.data()),
                                                 bytes / 16, sink.data());
        },
        10);
    read_gbs = bytes / (read_ms * 1e-3) / 1e9;
    cuda::DeviceBuffer<float> o(1);
    const int iters = 4096;
    const double fma_ms = median_ms(
        [&](int) { fma_kernel<<<dev.sm_count * 16, 256>>>(o.data(), iters, 0.999f); }, 10);
    fma_tflops = 2.0 * 8 * iters * double(dev.sm_count) * 16 * 256 / (fma_ms * 1e-3) / 1e12;
  }
  std::printf("device-to-device copy (2 GiB, read+write): %.1f GB/s\n", copy_gbs);
  std::printf("read-only stream (2 GiB, 16-byte loads):   %.1f GB/s\n", read_gbs);
  std::printf("fp32 FMA rate (registers only):            %.1f TFLOP/s\n\n", fma_tflops);

  const std::size_t Dn = 128, Dr = 64, Dv = 128, R = 512, K = R + Dr;
  std::printf("%-8s %5s %7s %4s %10s %9s %7s %7s %10s %12s %9s %9s %7s %7s\n", "what", "H",
              "context", "ns", "us", "GB/s", "/read", "/copy", "FMA-floor", "core us", "core/read",
              "graph us", "g/read", "g cache");
  for (const std::size_t H : {std::size_t(128), std::size_t(16)}) {
    if (g_heads && std::size_t(g_heads) != H) continue;
    for (const int ctx_len : {4096, 8192, 32768, 65536}) {
      if (g_ctx && g_ctx != ctx_len) continue;
      const std::size_t cache_bytes = std::size_t(ctx_len) * K * sizeof(float);
      const int copies = int(std::max<std::size_t>(1, (200u << 20) / cache_bytes + 1));
      std::vector<cuda::DeviceBuffer<float>> caches;
      for (int c = 0; c < copies; ++c) {
        caches.emplace_back(std::size_t(ctx_len) * K);
        fill_random(caches.back(), 100 + c, -1.f, 1.f);
      }
      std::vector<cuda::DeviceBuffer<bf16>> caches_b;
      for (int c = 0; c < copies; ++c) {
        caches_b.emplace_back(std::size_t(ctx_len) * K);
        fill_random(caches_b.back(), 300 + c, -1.f, 1.f);
      }
      cuda::DeviceBuffer<bf16> kvb(H * (Dn + Dv) * R);
      fill_random(kvb, 7, -0.05f, 0.05f);
      cuda::DeviceBuffer<float> q(H * (Dn + Dr)), qa(H * K), ctx(H * R), o(H * Dv);
      fill_random(q, 8, -1.f, 1.f);
      fill_random(qa, 9, -1.f, 1.f);
      cuda::DeviceBuffer<bf16> qb(H * K);
      fill_random(qb, 10, -1.f, 1.f);
      const std::int32_t p = ctx_len - 1;
      cuda::DeviceBuffer<std::int32_t> pos(1);
      pos.upload(&p);
      const float scale = 0.1352f;
      // Slices: enough blocks for two per SM over the head blocks.
      const std::size_t head_blocks = (H + cuda::kMlaG - 1) / cuda::kMlaG;
      // Slices: one block per SM (one wave; the kernel's shared memory allows one per SM), two
      // waves, and four.
      const std::size_t wave = std::max<std::size_t>(1, dev.sm_count / head_blocks);
      for (const std::size_t ns :
           {std::min<std::size_t>(256, wave), std::min<std::size_t>(256, 2 * wave),
            std::min<std::size_t>(256, 4 * wave)}) {
        cuda::DeviceBuffer<float> ws(cuda::mla_attention_workspace(1, H, R, ns));
        const double ms = median_ms(
            [&](int i) {
              cuda::mla_attention(qa.data(), caches[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
            },
            g_reps);
        const double bytes = double(cache_bytes) + 4.0 * H * (K + R) + 2.0 * 4.0 * H * ns * (R + 1);
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        const double flops = double(H) * ctx_len * 2.0 * (K + R);
        const double core_ms = median_ms(
            [&](int i) {
              cuda::mla_absorb_q(kvb.data(), q.data(), H * (Dn + Dr), qa.data(), 1, H, Dn, Dr, Dv,
                                 R);
              cuda::mla_attention(qa.data(), caches[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
              cuda::mla_absorb_out(kvb.data(), ctx.data(), o.data(), H * Dv, 1, H, Dn, Dv, R);
            },
            g_reps);
        const double core_bytes = bytes + double(kvb.bytes());
        std::printf("%-8s %5zu %7d %4zu %10.1f %9.1f %7.3f %7.3f %8.1fus %12.1f %9.3f\n", "mla", H,
                    ctx_len, ns, ms * 1e3, gbs, gbs / read_gbs, gbs / copy_gbs,
                    flops / (fma_tflops * 1e12) * 1e6, core_ms * 1e3,
                    core_bytes / (core_ms * 1e-3) / 1e9 / read_gbs);
      }
      // The bf16 cache on the tensor cores (mla_tc.cuh): 64-head blocks when H > 32, else 16;
      // one block per SM (their shared memory: 192 KB and 188 KB at R1).
      const std::size_t tc_blocks = H > 32 ? (H + 63) / 64 : (H + 15) / 16;
      const std::size_t tc_wave = std::max<std::size_t>(1, dev.sm_count / tc_blocks);
      for (const std::size_t ns :
           {std::min<std::size_t>(256, tc_wave / 2), std::min<std::size_t>(256, tc_wave),
            std::min<std::size_t>(256, 2 * tc_wave)}) {
        cuda::DeviceBuffer<float> ws(cuda::mla_attention_workspace(1, H, R, ns));
        const double ms = median_ms(
            [&](int i) {
              cuda::mla_attention(qa.data(), caches_b[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
            },
            g_reps);
        const double bytes =
            double(cache_bytes) / 2 + 4.0 * H * (K + R) + 2.0 * 4.0 * H * ns * (R + 1);
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        const double core_ms = median_ms(
            [&](int i) {
              cuda::mla_absorb_q(kvb.data(), q.data(), H * (Dn + Dr), qa.data(), 1, H, Dn, Dr, Dv,
                                 R);
              cuda::mla_attention(qa.data(), caches_b[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
              cuda::mla_absorb_out(kvb.data(), ctx.data(), o.data(), H * Dv, 1, H, Dn, Dv, R);
            },
            g_reps);
        const double core_bytes = bytes + double(kvb.bytes());
        // The same kBatch launches from a graph (as cuda::DeepseekModel decodes): device time
        // without the host's launch cost; g/read with the partials, g cache the cache alone.
        cuda::Stream st;
        cuda::graph_capture_begin(st);
        for (int j = 0; j < kBatch; ++j)
          cuda::mla_attention(qa.data(), caches_b[j % copies].data(), pos.data(), 1, H, R, Dr,
                              scale, ctx.data(), ns, ws.data(), st);
        const cuda::Graph g(cuda::graph_capture_end(st));
        const double g_ms = graph_median_ms(g, st, g_reps);
        const double g_bw = 1e-9 / (g_ms * 1e-3) / read_gbs;
        std::printf(
            "%-8s %5zu %7d %4zu %10.1f %9.1f %7.3f %7.3f %10s %12.1f %9.3f %9.1f %7.3f %7.3f\n",
            "mla-bf16", H, ctx_len, ns, ms * 1e3, gbs, gbs / read_gbs, gbs / copy_gbs, "-",
            core_ms * 1e3, core_bytes / (core_ms * 1e-3) / 1e9 / read_gbs, g_ms * 1e3, bytes * g_bw,
            double(cache_bytes) / 2 * g_bw);
        // The same with q absorbed into bf16 (half of q's bytes; mla-bf16q rows).
        const double msq = median_ms(
            [&](int i) {
              cuda::mla_attention(qb.data(), caches_b[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
            },
            g_reps);
        const double bytesq =
            double(cache_bytes) / 2 + 2.0 * H * K + 4.0 * H * R + 2.0 * 4.0 * H * ns * (R + 1);
        const double gbsq = bytesq / (msq * 1e-3) / 1e9;
        const double coreq_ms = median_ms(
            [&](int i) {
              cuda::mla_absorb_q(kvb.data(), q.data(), H * (Dn + Dr), qb.data(), 1, H, Dn, Dr, Dv,
                                 R);
              cuda::mla_attention(qb.data(), caches_b[i % copies].data(), pos.data(), 1, H, R, Dr,
                                  scale, ctx.data(), ns, ws.data());
              cuda::mla_absorb_out(kvb.data(), ctx.data(), o.data(), H * Dv, 1, H, Dn, Dv, R);
            },
            g_reps);
        cuda::graph_capture_begin(st);
        for (int j = 0; j < kBatch; ++j)
          cuda::mla_attention(qb.data(), caches_b[j % copies].data(), pos.data(), 1, H, R, Dr,
                              scale, ctx.data(), ns, ws.data(), st);
        const cuda::Graph gq(cuda::graph_capture_end(st));
        const double gq_ms = graph_median_ms(gq, st, g_reps);
        const double gq_bw = 1e-9 / (gq_ms * 1e-3) / read_gbs;
        std::printf(
            "%-8s %5zu %7d %4zu %10.1f %9.1f %7.3f %7.3f %10s %12.1f %9.3f %9.1f %7.3f %7.3f\n",
            "mla-bf16q", H, ctx_len, ns, msq * 1e3, gbsq, gbsq / read_gbs, gbsq / copy_gbs, "-",
            coreq_ms * 1e3, (bytesq + double(kvb.bytes())) / (coreq_ms * 1e-3) / 1e9 / read_gbs,
            gq_ms * 1e3, bytesq * gq_bw, double(cache_bytes) / 2 * gq_bw);
      }
    }
  }
  return 0;
}
