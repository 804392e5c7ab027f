// bench/cuda/bench_gemm.cu: the prefill GEMM (cuda::gemm_bf16: cuBLAS, bf16 W and x, fp32
// accumulate and output) at DeepSeek-R1's dense shapes and R1-Distill-Qwen-1.5B's, T tokens
// (default 512 and 2048). Prints TFLOP/s per shape; bench/cuda/torch_gemm.py times torch.matmul
// at the same shapes in the same device call (docs/cuda.md has the table side by side).
// Each figure is the median of 30 batches of 10 back-to-back calls (CUDA events); W, x random.
//   bench_cuda_gemm [--tokens T]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "tmoe/backend/cuda/api_impl.cuh"

using namespace tmoe;

namespace {

struct Shape {
  const char* name;
  std::size_t out, in;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> tokens = {512, 2048};
  for (int i = 1; i + 1 < argc; i += 2)
    if (!std::strcmp(argv[i], "--tokens")) tokens = {std::strtoul(argv[i + 1], nullptr, 10)};
  if (cuda::device_count() == 0) {
    std::printf("bench_cuda_gemm: skipped: no CUDA device\n");
    return 77;
  }
  const cuda::DeviceInfo dev = cuda::device_info(0);
  std::printf("%s, %d SMs\n", dev.name, dev.sm_count);
  const Shape shapes[] = {{"r1.q_a", 1536, 7168},
                          {"r1.q_b", 24576, 1536},
                          {"r1.kv_a", 576, 7168},
                          {"r1.o", 7168, 16384},
                          {"r1.gate_up", 18432, 7168},
                          {"r1.down", 7168, 18432},
                          {"qwen1.5b.qkv", 2048, 1536},
                          {"qwen1.5b.o", 1536, 1536},
                          {"qwen1.5b.gate_up", 17920, 1536},
                          {"qwen1.5b.down", 1536, 8960},
                          {"qwen1.5b.lm_head", 151936, 1536}};
  std::printf(
      "| shape | T | out x in | tmoe gemm_bf16 us | TFLOP/s |\n| --- | --- | --- | --- | --- |\n");
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const std::size_t T : tokens)
    for (const Shape& s : shapes) {
      std::vector<bf16> hw(s.out * s.in), hx(T * s.in);
      for (auto& v : hw) v = bf16::from_float(u(rng) * 0.05f);
      for (auto& v : hx) v = bf16::from_float(u(rng));
      cuda::DeviceBuffer<bf16> w(hw.size()), x(hx.size());
      cuda::DeviceBuffer<float> y(T * s.out);
      w.upload(hw.data());
      x.upload(hx.data());
      auto call = [&] {
        cuda::gemm_bf16(w.data(), s.in, x.data(), s.in, y.data(), s.out, T, s.out, s.in);
      };
      for (int i = 0; i < 20; ++i) call();
      cuda::Event a, b;
      std::vector<float> ms;
      for (int r = 0; r < 30; ++r) {
        a.record(nullptr);
        for (int i = 0; i < 10; ++i) call();
        b.record(nullptr);
        ms.push_back(b.since(a) / 10);
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      std::printf("| %s | %zu | %zux%zu | %.1f | %.1f |\n", s.name, T, s.out, s.in, med * 1e3,
                  2.0 * T * s.out * s.in / (med * 1e-3) / 1e12);
    }
  return 0;
}
