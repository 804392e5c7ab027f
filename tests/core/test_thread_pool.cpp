#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
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

TEST_CASE("parallel_for_tapered covers [0, n) with disjoint chunks, big ones first") {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (std::size_t grain : {1u, 2u, 7u})
      for (std::size_t n : {0u, 1u, 2u, 3u, 5u, 8u, 48u, 97u, 280u, 4096u}) {
        std::vector<int> seen(n, 0);
        std::mutex m;
        std::vector<std::pair<std::size_t, std::size_t>> chunks;
        pool.parallel_for_tapered(n, grain, [&](std::size_t b, std::size_t e, int) {
          for (std::size_t i = b; i < e; ++i) seen[i] += 1;
          std::lock_guard<std::mutex> lock(m);
          chunks.emplace_back(b, e);
        });
        for (int s : seen) REQUIRE(s == 1);
        std::sort(chunks.begin(), chunks.end());
        for (const auto& [b, e] : chunks) {
          REQUIRE(b % grain == 0);  // whole grains but the last
          REQUIRE(((e - b) % grain == 0 || e == n));
        }
        // The first chunk (claimed first) is the largest; with n >= 64 threads grain the tail's
        // chunks (~n / (16 threads)) are under a quarter of it.
        if (!chunks.empty())
          for (const auto& [b, e] : chunks) REQUIRE(e - b <= chunks.front().second);
        if (n >= 64 * std::size_t(threads) * grain && threads > 1)
          CHECK(chunks.back().second - chunks.back().first < chunks.front().second / 4);
      }
  }
}

TEST_CASE("ThreadPool: a task's exception reaches run()'s caller, the pool stays usable") {
  ThreadPool pool(3);
  for (std::size_t bad : {0u, 1u, 37u, 99u}) {  // task 0 usually runs on the calling thread
    std::atomic<int> ran{0};
    CHECK_THROWS_WITH_AS(pool.run(100,
                                  [&](std::size_t i, int) {
                                    ran.fetch_add(1);
                                    if (i == bad) throw std::runtime_error("task failed");
                                  }),
                         "task failed", std::runtime_error);
    CHECK(ran.load() >= 1);
    CHECK(ran.load() <= 100);
    std::vector<int> seen(64, 0);
    pool.run(64, [&](std::size_t i, int) { seen[i] += 1; });
    for (int s : seen) REQUIRE(s == 1);
  }
  // Every task throwing: one exception out, the others dropped.
  CHECK_THROWS_AS(pool.run(50, [](std::size_t, int) { throw std::logic_error("each"); }),
                  std::logic_error);
  std::atomic<int> n{0};
  pool.run(10, [&](std::size_t, int) { n.fetch_add(1); });
  CHECK(n.load() == 10);
}

TEST_CASE("ThreadPool rejects absurd sizes") {
  CHECK_THROWS_WITH(ThreadPool(5000), "[ThreadPool] thread count 5000 is out of range [1, 1024]");
}
