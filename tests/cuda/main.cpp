// The doctest main of test_cuda. Without a usable CUDA device it prints why and exits with 77,
// which CTest reports as "Skipped" (SKIP_RETURN_CODE); so the GPU suite builds and registers
// everywhere nvcc exists and runs only where a GPU does.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "tmoe/backend/cuda/api.hpp"

int main(int argc, char** argv) {
  if (tmoe::cuda::device_count() == 0) {
    std::printf("test_cuda: skipped: no CUDA device (%s)\n", tmoe::cuda::device_count_error());
    return 77;
  }
  const tmoe::cuda::DeviceInfo d = tmoe::cuda::device_info(0);
  std::printf("test_cuda: %s, sm_%d%d, %d SMs\n", d.name, d.major, d.minor, d.sm_count);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
