// A small persistent worker pool for the CPU kernels.
//
// The CPU launchers split their rows over the calling thread plus these workers. The pool is
// created on first use with (hardware threads - 1) workers and lives until process exit. One
// parallel_for runs on the pool at a time; a call made while the pool is busy (another thread's
// launcher, or a nested call from inside a task) runs on its own calling thread instead, so
// calls never deadlock and never oversubscribe. Standard library only.
//
// A model's decode step launches hundreds of short kernels back to back, so waking a worker must
// cost far less than a kernel: idle workers spin on the job counter for a short while (kSpinUs)
// before they sleep on a condition variable, and the caller spins while the last workers finish.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sglang::kernels {

class ThreadPool {
 public:
  /// The process-wide pool (created on first call).
  static ThreadPool& global();

  explicit ThreadPool(int num_workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  /// Number of worker threads (the caller of parallel_for is an extra one).
  int num_workers() const { return static_cast<int>(workers_.size()); }

  /// Runs fn(i) for every i in [0, n), on at most `max_threads` threads including the calling
  /// thread (max_threads <= 0: all). Returns when every call has returned. `fn` must not throw.
  void parallel_for(int64_t n, int max_threads, const std::function<void(int64_t)>& fn);

 private:
  void worker_loop();
  void run_tasks();
  /// Spins until the job counter differs from `seen` or the spin budget runs out.
  bool spin_for_job(uint64_t seen) const;

  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the caller for the whole of one parallel_for

  std::mutex mu_;                 // guards sleepers_ and the sleeping workers' wake-up
  std::condition_variable wake_;  // idle workers sleep here after spinning
  int sleepers_ = 0;
  std::atomic<uint64_t> generation_{0};  // bumped (under mu_) for every job
  std::atomic<bool> stop_{false};

  // Joining protocol: a worker counts itself in active_, then takes a seat (seats_ > 0); the
  // caller closes the job by setting seats_ to -1 and waits until active_ is 0, so no worker
  // can touch fn_ after parallel_for returns.
  std::atomic<int> seats_{-1};
  std::atomic<int> active_{0};
  // The current job; written before seats_ is published.
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
};

/// Threads to use for `num_rows` rows of about `work_per_row` element-operations each, given the
/// caller's `num_threads` (<= 0: all hardware threads): 1 for a single row or tiny work.
int plan_threads(int64_t num_rows, int64_t work_per_row, int num_threads);

}  // namespace sglang::kernels
