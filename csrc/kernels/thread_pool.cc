// The CPU kernels' persistent worker pool (see sglang/kernels/thread_pool.h).
#include "sglang/kernels/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <climits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace sglang::kernels {

namespace {
// Below this many element-operations per thread, splitting costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;
// How long an idle worker spins for the next job before it sleeps: longer than the Python
// between two kernels of a forward pass, short enough not to hold a core between steps.
constexpr int kSpinUs = 200;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}
}  // namespace

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(std::max(1u, std::thread::hardware_concurrency()) - 1);
  return pool;
}

ThreadPool::ThreadPool(int num_workers) {
  workers_.reserve(std::max(0, num_workers));
  for (int i = 0; i < num_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks() {
  for (int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) (*fn_)(i);
}

bool ThreadPool::spin_for_job(uint64_t seen) const {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinUs);
  for (int i = 1;; ++i) {
    if (generation_.load(std::memory_order_acquire) != seen) return true;
    cpu_relax();
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    if (!spin_for_job(seen)) {
      std::unique_lock<std::mutex> lock(mu_);
      ++sleepers_;
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      --sleepers_;
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    active_.fetch_add(1, std::memory_order_acq_rel);
    int s = seats_.load(std::memory_order_acquire);
    while (s > 0 && !seats_.compare_exchange_weak(s, s - 1, std::memory_order_acq_rel)) {
    }
    if (s > 0) run_tasks();
    active_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, int max_threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int helpers =
      std::min<int64_t>({static_cast<int64_t>(num_workers()), n - 1,
                         max_threads <= 0 ? INT32_MAX : static_cast<int64_t>(max_threads) - 1});
  std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
  if (helpers <= 0 || !busy.owns_lock()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  fn_ = &fn;
  n_ = n;
  next_.store(0, std::memory_order_relaxed);
  seats_.store(helpers, std::memory_order_release);
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    wake = sleepers_ > 0;
  }
  if (wake) wake_.notify_all();
  run_tasks();
  seats_.store(-1, std::memory_order_release);  // close: late workers leave without running
  // Joined workers are finishing their last task: spin, then yield.
  for (int i = 0; active_.load(std::memory_order_acquire) != 0; ++i) {
    if (i < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
  fn_ = nullptr;
}

int plan_threads(int64_t num_rows, int64_t work_per_row, int num_threads) {
  if (num_rows <= 1) return 1;
  int64_t limit =
      num_threads > 0 ? num_threads : static_cast<int64_t>(ThreadPool::global().num_workers()) + 1;
  const int64_t by_work = std::max<int64_t>(1, num_rows * work_per_row / kMinWorkPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min({limit, num_rows, by_work})));
}

}  // namespace sglang::kernels
