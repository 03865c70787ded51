// The kernels' worker pool: every index runs exactly once, back-to-back jobs (the decode-step
// pattern the spinning workers serve), concurrent callers, and a pool whose workers fell asleep.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "sglang/kernels/thread_pool.h"

namespace sk = sglang::kernels;

namespace {

void expect_each_once(sk::ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(n);
  pool.parallel_for(n, 0, [&](int64_t i) { hits[i].fetch_add(1); });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
}

}  // namespace

TEST(ThreadPool, EveryIndexOnceOverManyShortJobs) {
  sk::ThreadPool pool(3);
  for (int round = 0; round < 2000; ++round) expect_each_once(pool, 1 + round % 17);
}

TEST(ThreadPool, WorkersThatSleptStillJoin) {
  sk::ThreadPool pool(2);
  expect_each_once(pool, 64);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // past the spin budget
  std::atomic<int> distinct{0};
  std::vector<std::thread::id> ids(64);
  pool.parallel_for(64, 0, [&](int64_t i) {
    ids[i] = std::this_thread::get_id();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  });
  std::sort(ids.begin(), ids.end());
  distinct = static_cast<int>(std::unique(ids.begin(), ids.end()) - ids.begin());
  EXPECT_GE(distinct.load(), 2);  // the sleeping workers were woken for the job
}

TEST(ThreadPool, ConcurrentCallersNeverLoseWork) {
  sk::ThreadPool pool(2);
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 300; ++round) {
        pool.parallel_for(10, 0, [&](int64_t i) { total.fetch_add(i + 1); });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 300 * 55);
}
