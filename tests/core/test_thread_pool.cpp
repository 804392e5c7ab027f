#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
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

// A worker that finished the last task of a job used to re-check the claim counter against the
// *next* job's task count (main may publish it the moment the last task is counted): with a larger
// count it could claim an index of the finished job's counter, run it with the next job's function
// and count it there too, so a task ran twice and the caller spun forever on an overshooting done
// count (seen as a hang of `tmoe bench` after ~10^6 runs). Back-to-back runs whose task counts
// alternate small / large reproduce that window; a watchdog turns a hang into a failure.
TEST_CASE("ThreadPool: back-to-back runs with growing task counts run each task once") {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(60), [&] { return finished; })) {
      std::fprintf(stderr, "ThreadPool stress: no progress in 60 s (a run never completed)\n");
      std::abort();
    }
  });
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    constexpr std::size_t kBig = 48;
    std::vector<std::atomic<int>> small(2), big(kBig);
    constexpr int kRounds = 100000;
    for (int r = 0; r < kRounds; ++r) {
      pool.run(2, [&](std::size_t i, int) { small[i].fetch_add(1, std::memory_order_relaxed); });
      pool.run(kBig, [&](std::size_t i, int) { big[i].fetch_add(1, std::memory_order_relaxed); });
    }
    for (auto& h : small) CHECK(h.load() == kRounds);
    for (auto& h : big) CHECK(h.load() == kRounds);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    finished = true;
  }
  cv.notify_all();
  watchdog.join();
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
