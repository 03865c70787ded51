// PageAllocator: unit tests and a randomized test against a reference refcount map.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "sglang/common.h"
#include "sglang/page_allocator.h"

namespace sglang {
namespace {

TEST(PageAllocator, AllocatesLowPagesFirstAndSkipsPadding) {
  PageAllocator a(4, 16);
  EXPECT_EQ(a.num_slots(), 5 * 16);
  std::vector<int32_t> pages;
  ASSERT_TRUE(a.alloc(2, pages));
  EXPECT_EQ(pages, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(a.num_free_pages(), 2);
  EXPECT_EQ(a.num_free_tokens(), 32);
}

TEST(PageAllocator, AllOrNothing) {
  PageAllocator a(3, 1);
  std::vector<int32_t> pages;
  EXPECT_FALSE(a.alloc(4, pages));
  EXPECT_TRUE(pages.empty());
  EXPECT_EQ(a.num_free_pages(), 3);
}

TEST(PageAllocator, RefcountsShareAndFree) {
  PageAllocator a(2, 1);
  std::vector<int32_t> pages;
  ASSERT_TRUE(a.alloc(1, pages));
  a.ref(pages[0]);
  EXPECT_EQ(a.refcount(pages[0]), 2);
  a.unref(pages[0]);
  EXPECT_EQ(a.num_free_pages(), 1);
  a.unref(pages[0]);
  EXPECT_EQ(a.num_free_pages(), 2);
  a.check_integrity();
}

TEST(PageAllocator, RejectsDoubleFreeAndBadPages) {
  PageAllocator a(2, 1);
  std::vector<int32_t> pages;
  ASSERT_TRUE(a.alloc(1, pages));
  a.unref(pages[0]);
  EXPECT_THROW(a.unref(pages[0]), Error);
  EXPECT_THROW(a.ref(pages[0]), Error);
  EXPECT_THROW(a.unref(0), Error);
  EXPECT_THROW(a.unref(3), Error);
  EXPECT_THROW(PageAllocator(0, 1), Error);
  EXPECT_THROW(PageAllocator(4, 0), Error);
  try {
    a.unref(7);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("page_allocator.cc"), std::string::npos) << e.what();
  }
}

TEST(PageAllocator, RandomizedAgainstReference) {
  std::mt19937 rng(1234);
  PageAllocator a(64, 4);
  std::map<int32_t, int32_t> ref;  // page -> refcount
  for (int step = 0; step < 20000; ++step) {
    int op = rng() % 3;
    if (op == 0) {
      int32_t n = rng() % 6;
      std::vector<int32_t> got;
      bool ok = a.alloc(n, got);
      ASSERT_EQ(ok, 64 - static_cast<int32_t>(ref.size()) >= n);
      for (int32_t p : got) {
        ASSERT_EQ(ref.count(p), 0u) << "page handed out twice";
        ref[p] = 1;
      }
    } else if (!ref.empty()) {
      auto it = ref.begin();
      std::advance(it, rng() % ref.size());
      if (op == 1) {
        a.ref(it->first);
        ++it->second;
      } else {
        a.unref(it->first);
        if (--it->second == 0) ref.erase(it);
      }
    }
    a.check_integrity();
    ASSERT_EQ(a.num_free_pages(), 64 - static_cast<int32_t>(ref.size()));
    for (auto [p, c] : ref) ASSERT_EQ(a.refcount(p), c);
  }
}

}  // namespace
}  // namespace sglang
