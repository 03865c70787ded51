// A small persistent worker pool for the CPU kernels.
//
// The CPU launchers split their rows over the calling thread plus these workers. The pool is
// created on first use with (hardware threads - 1) workers and lives until process exit. One
// parallel_for runs on the pool at a time; a call made while the pool is busy (another thread's
// launcher, or a nested call from inside a task) runs on its own calling thread instead, so
// calls never deadlock and never oversubscribe. Standard library only.
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

  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the caller for the whole of one parallel_for

  std::mutex mu_;
  std::condition_variable wake_;  // workers wait for a new job
  std::condition_variable done_;  // the caller waits for joined workers to leave
  uint64_t generation_ = 0;       // bumped for every job
  bool open_ = false;             // workers may still join the current job
  int seats_ = 0;                 // how many more workers may join it
  int active_ = 0;                // workers inside it
  bool stop_ = false;

  // The current job; stable while open_ or active_ > 0.
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
};

/// Threads to use for `num_rows` rows of about `work_per_row` element-operations each, given the
/// caller's `num_threads` (<= 0: all hardware threads): 1 for a single row or tiny work.
int plan_threads(int64_t num_rows, int64_t work_per_row, int num_threads);

}  // namespace sglang::kernels
