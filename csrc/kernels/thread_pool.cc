// The CPU kernels' persistent worker pool (see sglang/kernels/thread_pool.h).
#include "sglang/kernels/thread_pool.h"

#include <algorithm>
#include <climits>

namespace sglang::kernels {

namespace {
// Below this many element-operations per thread, splitting costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;
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
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run_tasks() {
  for (int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) (*fn_)(i);
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || (generation_ != seen && open_ && seats_ > 0); });
      if (stop_) return;
      seen = generation_;
      --seats_;
      ++active_;
    }
    run_tasks();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0) done_.notify_all();
    }
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    next_.store(0);
    seats_ = helpers;
    open_ = true;
    ++generation_;
  }
  wake_.notify_all();
  run_tasks();
  std::unique_lock<std::mutex> lock(mu_);
  open_ = false;  // late workers stay out; wait for those inside to finish their tasks
  done_.wait(lock, [&] { return active_ == 0; });
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
