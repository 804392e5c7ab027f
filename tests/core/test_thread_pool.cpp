#include <doctest/doctest.h>

#include <atomic>
#include <vector>

#include "tmoe/core/thread_pool.hpp"

using namespace tmoe;

TEST_CASE("ThreadPool runs every task exactly once, back to back") {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (std::size_t n : {1u, 2u, 7u, 64u, 1000u}) {
      std::vector<std::atomic<int>> hits(n);
      for (int rep = 0; rep < 50; ++rep) {
        pool.run(n, [&](std::size_t i, int t) {
          REQUIRE(t >= 0);
          REQUIRE(t < threads);
          hits[i].fetch_add(1, std::memory_order_relaxed);
        });
      }
      for (auto& h : hits) REQUIRE(h.load() == 50);
    }
  }
}

TEST_CASE("parallel_for covers [0, n) with disjoint chunks") {
  ThreadPool pool(3);
  for (std::size_t n : {0u, 1u, 5u, 97u, 4096u}) {
    std::vector<int> seen(n, 0);
    pool.parallel_for(n, 4, [&](std::size_t b, std::size_t e, int) {
      for (std::size_t i = b; i < e; ++i) seen[i] += 1;
    });
    for (int s : seen) REQUIRE(s == 1);
  }
}

TEST_CASE("ThreadPool rejects absurd sizes") {
  CHECK_THROWS_WITH(ThreadPool(5000), "[ThreadPool] thread count 5000 is out of range [1, 1024]");
}
