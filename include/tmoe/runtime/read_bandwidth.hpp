// tmoe/runtime/read_bandwidth.hpp: the machine's read bandwidth, the limit a decode step is read
// against (one decoded token reads every active weight once).
//
// ReadBandwidthProbe owns a float array far larger than any cache (1 GiB by default), filled once
// through the pool (so its pages are spread like the weights') and allocated like the loader's
// interleaved weight copies (a HugeArena: 2 MiB pages where THP allows, TMOE_HUGEPAGES=0 for
// 4 KiB), so the decode stream and the probe see the same page size. pass() sums the whole array,
// split into one contiguous part per pool thread, with the running CPU's reduce.sum kernel, and
// returns the bytes read per wall-clock second. bench/bench_limits.cpp (Google Benchmark) and `tmoe
// bench` (beside its decode timings, same pool) both measure through it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "tmoe/backend/cpu/kernel_table.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/huge_arena.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/core/thread_pool.hpp"

namespace tmoe {

class ReadBandwidthProbe {
 public:
  static constexpr std::size_t kDefaultBytes = std::size_t{1} << 30;

  explicit ReadBandwidthProbe(ThreadPool& pool, std::size_t bytes = kDefaultBytes)
      : pool_(&pool), n_(std::max<std::size_t>(bytes / sizeof(float), 1)) {
    check(bytes >= sizeof(float) * static_cast<std::size_t>(pool.size()), "read_bandwidth",
          "array of ", bytes, " bytes is too small for ", pool.size(), " threads");
    a_ = reinterpret_cast<float*>(arena_.allocate(n_ * sizeof(float)));
    const std::size_t n = n_;
    pool_->parallel_for(n, std::size_t{1} << 20, [&](std::size_t b, std::size_t e, int) {
      std::fill(a_ + b, a_ + e, 1.0f);
    });
    part_.assign(static_cast<std::size_t>(pool_->size()) * 16, 0.0f);
  }

  std::size_t bytes() const { return n_ * sizeof(float); }

  // Sums the array once; the sums land in sink() so the reads cannot be optimized away.
  void sum_once() {
    const std::size_t threads = static_cast<std::size_t>(pool_->size());
    const std::size_t n = n_, per = n / threads;
    const auto& k = cpu::kernels();
    pool_->run(threads, [&](std::size_t task, int) {
      const std::size_t len = task + 1 == threads ? n - task * per : per;
      part_[task * 16] = k.reduce.sum(a_ + task * per, len);
    });
  }

  // One timed pass: bytes read per second.
  double pass() {
    const auto t0 = std::chrono::steady_clock::now();
    sum_once();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(bytes()) / std::max(s, 1e-12);
  }

  // The per-thread partial sums of the last pass (each equals its length: the array is ones).
  const std::vector<float>& sink() const { return part_; }

 private:
  ThreadPool* pool_;
  std::size_t n_;
  HugeArena arena_;
  float* a_ = nullptr;  // (n_), in arena_
  std::vector<float> part_;
};

}  // namespace tmoe
