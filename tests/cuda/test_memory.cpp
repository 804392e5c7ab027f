// Device memory owners, streams and error reporting of tmoe/backend/cuda/api.hpp.
#include <cstring>
#include <string>

#include "cuda_test_util.hpp"

using namespace tmoe;

TEST_CASE("cuda memory: device, pinned and stream round trip keeps every byte") {
  const std::size_t n = 1000003;  // odd size, several MB
  const auto src = test::random_floats(n, 1);
  cuda::Stream stream;
  cuda::PinnedBuffer<float> staging(n);
  std::memcpy(staging.data(), src.data(), n * sizeof(float));
  cuda::DeviceBuffer<float> a(n), b(n);
  a.upload(staging.data(), stream);
  cuda::copy_device(b.data(), a.data(), a.bytes(), stream);
  cuda::PinnedBuffer<float> back(n);
  std::memset(back.data(), 0, n * sizeof(float));
  b.download(back.data(), stream);
  CHECK(std::memcmp(back.data(), src.data(), n * sizeof(float)) == 0);
}

TEST_CASE("cuda memory: owners move, and empty buffers own nothing") {
  cuda::DeviceBuffer<int> a(16);
  int* p = a.data();
  cuda::DeviceBuffer<int> b(std::move(a));
  CHECK(b.data() == p);
  CHECK(b.size() == 16);
  CHECK(a.data() == nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  CHECK(a.empty());
  cuda::DeviceBuffer<int> c(0);
  CHECK(c.data() == nullptr);
  c = std::move(b);
  CHECK(c.data() == p);
}

TEST_CASE("cuda errors: a failing call throws tmoe::Error naming the op and the call") {
  std::string msg;
  try {
    cuda::DeviceBuffer<char> huge(std::size_t(1) << 60);
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("[cuda::device_alloc] cudaMalloc(") == 0);
  CHECK(msg.find("out of memory") != std::string::npos);
  // The failure is not sticky: the next allocation works.
  cuda::DeviceBuffer<float> ok(1024);
  CHECK(ok.data() != nullptr);
  cuda::synchronize_device();

  cuda::DeviceBuffer<bf16> w(64);
  cuda::DeviceBuffer<float> x(8), y(8);
  CHECK_THROWS_WITH_AS(cuda::gemv_bf16(w.data(), 4, x.data(), y.data(), 8, 8),
                       "[cuda::gemv_bf16] ldw: expected >= in = 8, got 4", Error);
  CHECK_THROWS_WITH_AS(
      cuda::rope(x.data(), 1, 1, 8, 8, 0, 3, nullptr, nullptr, 1.f, cuda::RopeLayout::interleaved),
      "[cuda::rope] rope_dim: expected even, got 3", Error);
}
