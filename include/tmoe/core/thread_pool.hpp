// tmoe/core/thread_pool.hpp: a persistent pool for fork-join parallel loops with a cheap wake-up.
//
// run(n_tasks, fn) calls fn(task, thread) for every task in [0, n_tasks) on the pool's threads
// (the calling thread is thread 0 and works too) and returns when all tasks are done. Tasks are
// handed out through one atomic counter. Idle workers spin briefly on a generation counter, so
// a loop issued right after the previous one (every matrix of a decode step) starts within a
// microsecond or two; after the spin they sleep on a condition variable and cost no CPU.
// One run() at a time per pool (not re-entrant); a pool of size 1 runs inline. An exception
// thrown by a task (on any thread) is caught, the job's remaining tasks are skipped, and run()
// rethrows it on the calling thread once every claimed task has returned (the pool stays usable).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define TMOE_CPU_RELAX() _mm_pause()
#else
#define TMOE_CPU_RELAX() ((void)0)
#endif

#include "tmoe/config.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe {

class ThreadPool {
 public:
  // n_threads counts the calling thread; 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int n_threads = 0) {
    if (n_threads <= 0)
      n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    check(n_threads <= 1024, "ThreadPool", "thread count ", n_threads,
          " is out of range [1, 1024]");
    size_ = n_threads;
    for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
  }
  ~ThreadPool() {
    stop_.store(true, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    wake_sleepers();
    for (auto& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Calls fn(task, thread) for task in [0, n_tasks); blocks until all are done.
  template <class F>
  void run(std::size_t n_tasks, F&& fn) {
    if (n_tasks == 0) return;
    TMOE_ASSERT(n_tasks < (std::size_t{1} << 32));
    if (size_ == 1 || n_tasks == 1) {
      for (std::size_t i = 0; i < n_tasks; ++i) fn(i, 0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    job_fn_ = [](void* ctx, std::size_t task, int thread) {
      (*static_cast<Fn*>(ctx))(task, thread);
    };
    job_ctx_ = const_cast<void*>(static_cast<const void*>(&fn));
    n_tasks_.store(n_tasks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    ++job_;
    // Publishing (job, n_tasks left) releases job_fn_, job_ctx_, n_tasks_ and done_ to claimers.
    next_.store(job_ << 32 | n_tasks, std::memory_order_release);
    // seq_cst pairs with the sleeper's increment-then-wait: either we see it and notify, or its
    // wait sees the new generation and returns at once.
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_sleepers();
    work(0);
    while (done_.load(std::memory_order_acquire) != n_tasks) TMOE_CPU_RELAX();
    if (failed_.load(std::memory_order_relaxed)) {
      std::exception_ptr e = std::exchange(error_, nullptr);
      std::rethrow_exception(e);
    }
  }

  // Splits [0, n) into about size() * chunks_per_thread contiguous chunks of at least `grain`
  // items and calls fn(begin, end, thread) for each.
  template <class F>
  void parallel_for(std::size_t n, std::size_t grain, F&& fn, std::size_t chunks_per_thread = 1) {
    if (n == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    std::size_t chunks = std::min<std::size_t>(static_cast<std::size_t>(size_) * chunks_per_thread,
                                               (n + grain - 1) / grain);
    chunks = std::max<std::size_t>(chunks, 1);
    const std::size_t per = (n + chunks - 1) / chunks;
    run(chunks, [&](std::size_t c, int thread) {
      const std::size_t b = c * per;
      const std::size_t e = std::min(n, b + per);
      if (b < e) fn(b, e, thread);
    });
  }

  // parallel_for with a tapered schedule: one chunk per thread over the first ~3/4 of [0, n)
  // (one contiguous stream each), then the rest in chunks of ~n / (16 threads), so that a thread
  // that runs slower (memory, another process) makes the others wait for at most one small chunk
  // at the end (with parallel_for's equal chunks, up to one of n / chunks). Chunks are claimed in
  // order, so the big ones start first. Every chunk starts at a multiple of grain and all but the
  // last are multiples of it (a kernel's pairs of row groups stay whole).
  template <class F>
  void parallel_for_tapered(std::size_t n, std::size_t grain, F&& fn) {
    if (n == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    const auto p = static_cast<std::size_t>(size_);
    auto whole = [grain](std::size_t c) {
      return std::max(grain, (c + grain - 1) / grain * grain);
    };
    const std::size_t big = whole(3 * n / (4 * p));
    const std::size_t head = std::min(n, big * p);
    const std::size_t small = whole((n + 16 * p - 1) / (16 * p));
    const std::size_t n_head = (head + big - 1) / big;
    const std::size_t chunks = n_head + (n - head + small - 1) / small;
    run(chunks, [&](std::size_t c, int thread) {
      const std::size_t b = c < n_head ? c * big : head + (c - n_head) * small;
      const std::size_t e = std::min(c < n_head ? head : n, b + (c < n_head ? big : small));
      if (b < e) fn(b, e, thread);
    });
  }

 private:
  void wake_sleepers() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
    }  // a sleeper is either waiting or will see the new generation
    sleep_cv_.notify_all();
  }

  // Claims tasks of the current job until none is left. next_ packs (job id << 32 | tasks not yet
  // claimed), so a claim depends on that one word only: a worker that wakes late, or that has
  // just counted the last task of a job, can never claim from a finished job's word (it reads 0
  // left) nor from the next job's (another id). Only after a successful claim, i.e. while the
  // job is still running, are its n_tasks_, job_fn_ and job_ctx_ read (the claim's acquire pairs
  // with run()'s release). Tasks are handed out in order: index = n_tasks - left.
  // (An earlier version counted the index up against n_tasks_, which the next run() may already
  // have overwritten: a task could run twice and done_ overshoot, and run() spun forever.)
  void work(int thread) {
    std::uint64_t v = next_.load(std::memory_order_acquire);
    const std::uint64_t job = v >> 32;
    for (;;) {
      if ((v >> 32) != job || (v & 0xffffffffu) == 0) return;
      if (!next_.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                       std::memory_order_acquire))
        continue;
      const std::size_t task =
          n_tasks_.load(std::memory_order_relaxed) - static_cast<std::size_t>(v & 0xffffffffu);
      // After a task threw, the rest are claimed and counted but not run. The first error is
      // stored by the one thread that flips failed_, before its done_ increment (release), which
      // run()'s final acquire load of done_ sees.
      if (!failed_.load(std::memory_order_relaxed)) {
        try {
          job_fn_(job_ctx_, task, thread);
        } catch (...) {
          if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
        }
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
      v = next_.load(std::memory_order_acquire);
    }
  }

  void worker_loop(int thread) {
    std::uint32_t seen = 0;  // the generation at construction, whenever this thread starts
    for (;;) {
      std::uint32_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < kSpinIterations; ++spin) {
        TMOE_CPU_RELAX();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        sleep_cv_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        continue;
      }
      seen = g;
      if (stop_.load(std::memory_order_relaxed)) return;
      work(thread);
    }
  }

  // About 50-100 microseconds of spinning before a worker sleeps.
  static constexpr int kSpinIterations = 20000;

  int size_ = 1;
  std::vector<std::thread> workers_;
  std::atomic<std::uint32_t> generation_{0};  // incremented once per job (and at shutdown)
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> next_{0};
  std::atomic<std::size_t> n_tasks_{0};
  std::atomic<std::size_t> done_{0};
  std::atomic<bool> failed_{false};  // a task of the current job threw
  std::exception_ptr error_;         // its exception (written by the thread that set failed_)
  std::uint64_t job_ = 0;
  void (*job_fn_)(void*, std::size_t, int) = nullptr;
  void* job_ctx_ = nullptr;
};

}  // namespace tmoe
