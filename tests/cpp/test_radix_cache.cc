// RadixCache: unit tests, and a randomized test against a reference set of cached page-prefixes.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "sglang/common.h"
#include "sglang/radix_cache.h"

namespace sglang {
namespace {

using Tokens = std::vector<int32_t>;

// Inserts `tokens` with fresh pages the way the scheduler does: the caller drops its own
// references afterwards, so adopted pages end with one reference (the tree's).
InsertResult put(RadixCache& c, PageAllocator& a, const Tokens& tokens, const std::string& ns = "") {
  std::vector<int32_t> pages;
  EXPECT_TRUE(a.alloc(static_cast<int32_t>(tokens.size()) / a.page_size(), pages));
  InsertResult r = c.insert(ns, tokens, pages);
  a.unref_all(pages);
  return r;
}

TEST(RadixCache, MatchesLongestPrefixAndSplits) {
  PageAllocator a(100, 1);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3, 4, 5});
  MatchResult m = c.match_prefix("", Tokens{1, 2, 3, 9}, true);
  EXPECT_EQ(m.length, 3);
  EXPECT_EQ(m.pages.size(), 3u);
  EXPECT_EQ(c.num_nodes(), 3);  // root + split [1,2,3] + [4,5]
  InsertResult r = put(c, a, {1, 2, 3, 9});
  EXPECT_EQ(r.existing_length, 3);
  EXPECT_EQ(r.pages[0], m.pages[0]);
  EXPECT_EQ(c.cached_tokens(), 6);
  EXPECT_EQ(c.hit_tokens(), 3);
  EXPECT_EQ(c.miss_tokens(), 1);
  c.check_integrity();
  EXPECT_EQ(a.num_free_pages(), 100 - 6);
}

TEST(RadixCache, PageAlignedMatches) {
  PageAllocator a(100, 4);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3, 4, 5, 6, 7, 9}, false).length, 4);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3, 4, 5, 6, 7}, false).length, 4);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3}, false).length, 0);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3, 4, 5, 6, 7, 8, 1}, false).length, 8);
  EXPECT_THROW(c.insert("", Tokens{1, 2, 3}, std::vector<int32_t>{1}), Error);
  c.check_integrity();
}

TEST(RadixCache, NamespacesDoNotShare) {
  PageAllocator a(100, 1);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3}, "lora-a");
  EXPECT_EQ(c.match_prefix("lora-b", Tokens{1, 2, 3}, true).length, 0);
  EXPECT_EQ(c.match_prefix("lora-a", Tokens{1, 2, 3}, true).length, 3);
  c.check_integrity();
}

TEST(RadixCache, LockedPrefixesSurviveEviction) {
  PageAllocator a(100, 1);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3});
  put(c, a, {7, 8});
  MatchResult m = c.match_prefix("", Tokens{1, 2, 3}, true);
  c.lock(m.node);
  EXPECT_EQ(c.protected_tokens(), 3);
  EXPECT_EQ(c.evictable_tokens(), 2);
  EXPECT_EQ(c.evict(1000), 2);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3}, false).length, 3);
  EXPECT_EQ(c.match_prefix("", Tokens{7, 8}, false).length, 0);
  EXPECT_THROW(c.reset(), Error);
  c.unlock(m.node);
  EXPECT_THROW(c.unlock(m.node), Error);
  EXPECT_EQ(c.evict(1000), 3);
  EXPECT_EQ(a.num_free_pages(), 100);
  c.check_integrity();
}

TEST(RadixCache, EvictsLeastRecentlyUsedFirst) {
  PageAllocator a(100, 1);
  RadixCache c(&a, false);
  put(c, a, {1, 1});
  put(c, a, {2, 2});
  put(c, a, {3, 3});
  c.match_prefix("", Tokens{1, 1}, true);  // 1 becomes the most recent; 2 is the oldest
  EXPECT_EQ(c.evict(1), 2);
  EXPECT_EQ(c.match_prefix("", Tokens{2, 2}, false).length, 0);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 1}, false).length, 2);
  EXPECT_EQ(c.match_prefix("", Tokens{3, 3}, false).length, 2);
  c.check_integrity();
}

TEST(RadixCache, EvictionClimbsToParents) {
  PageAllocator a(100, 1);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3});
  put(c, a, {1, 2, 4});
  EXPECT_EQ(c.evict(100), 4);
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.num_nodes(), 1);
  c.check_integrity();
}

TEST(RadixCache, DisabledStoresNothing) {
  PageAllocator a(10, 1);
  RadixCache c(&a, true);
  std::vector<int32_t> pages;
  ASSERT_TRUE(a.alloc(3, pages));
  InsertResult r = c.insert("", Tokens{1, 2, 3}, pages);
  EXPECT_EQ(r.existing_length, 0);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2, 3}, true).length, 0);
  a.unref_all(pages);
  EXPECT_EQ(a.num_free_pages(), 10);
  c.check_integrity();
}

TEST(RadixCache, ResetFreesEverything) {
  PageAllocator a(50, 2);
  RadixCache c(&a, false);
  put(c, a, {1, 2, 3, 4});
  put(c, a, {1, 2, 5, 6});
  c.reset();
  EXPECT_EQ(a.num_free_pages(), 50);
  EXPECT_EQ(c.cached_tokens(), 0);
  EXPECT_EQ(c.match_prefix("", Tokens{1, 2}, false).length, 0);
  c.check_integrity();
}

// ---- randomized against a reference -----------------------------------------------------------

class RadixReference {
 public:
  explicit RadixReference(int32_t page_size) : ps_(page_size) {}
  // Every page-aligned prefix of an inserted key is cached.
  void insert(const Tokens& t) {
    for (size_t k = ps_; k <= t.size(); k += ps_) prefixes_.insert(Tokens(t.begin(), t.begin() + k));
  }
  int32_t match(const Tokens& t) const {
    int32_t best = 0;
    for (size_t k = ps_; k <= t.size(); k += ps_) {
      if (prefixes_.count(Tokens(t.begin(), t.begin() + k))) best = static_cast<int32_t>(k);
    }
    return best;
  }
  int64_t size_tokens() const { return static_cast<int64_t>(prefixes_.size()) * ps_; }
  // After an eviction: keep the prefixes the cache still has in full.
  void sync_after_evict(RadixCache& c) {
    std::set<Tokens> kept;
    for (const Tokens& p : prefixes_) {
      if (c.match_prefix("", p, false).length == static_cast<int32_t>(p.size())) kept.insert(p);
    }
    prefixes_.swap(kept);
  }

 private:
  int32_t ps_;
  std::set<Tokens> prefixes_;
};

void run_randomized(int32_t page_size, uint32_t seed) {
  std::mt19937 rng(seed);
  const int32_t pages_total = 400;
  PageAllocator a(pages_total, page_size);
  RadixCache c(&a, false);
  RadixReference ref(page_size);
  std::vector<std::pair<Tokens, NodeId>> locked;
  std::vector<Tokens> bases;
  for (int i = 0; i < 4; ++i) {
    Tokens b;
    for (int j = 0; j < 3 * page_size; ++j) b.push_back(rng() % 3);
    bases.push_back(b);
  }
  auto random_tokens = [&]() {
    Tokens t = bases[rng() % bases.size()];
    t.resize(rng() % (t.size() + 1));
    int extra = rng() % (4 * page_size);
    for (int j = 0; j < extra; ++j) t.push_back(rng() % 3);
    return t;
  };
  for (int step = 0; step < 4000; ++step) {
    const int op = rng() % 10;
    if (op < 4) {  // insert
      Tokens t = random_tokens();
      t.resize(t.size() / page_size * page_size);
      const int32_t need = static_cast<int32_t>(t.size()) / page_size;
      if (a.num_free_pages() < need) {
        c.evict(static_cast<int64_t>(need) * page_size);
        ref.sync_after_evict(c);
      }
      if (a.num_free_pages() < need) continue;
      const int32_t before = ref.match(t);
      InsertResult r = put(c, a, t);
      ASSERT_EQ(r.existing_length, before);
      ref.insert(t);
    } else if (op < 7) {  // match (touch), maybe lock
      Tokens t = random_tokens();
      const int32_t want = ref.match(t);
      MatchResult m = c.match_prefix("", t, true);
      ASSERT_EQ(m.length, want);
      ASSERT_EQ(static_cast<int32_t>(m.pages.size()) * page_size, want);
      if (rng() % 2 == 0 && m.length > 0) {
        c.lock(m.node);
        locked.emplace_back(Tokens(t.begin(), t.begin() + m.length), m.node);
      }
    } else if (op < 8) {  // unlock
      if (!locked.empty()) {
        size_t i = rng() % locked.size();
        c.unlock(locked[i].second);
        locked.erase(locked.begin() + i);
      }
    } else {  // evict
      const int64_t before = c.cached_tokens();
      const int64_t released = c.evict(rng() % (8 * page_size) + 1);
      ASSERT_EQ(c.cached_tokens(), before - released);
      ref.sync_after_evict(c);
    }
    c.check_integrity();
    a.check_integrity();
    ASSERT_EQ(c.cached_tokens(), ref.size_tokens());
    ASSERT_EQ(a.num_free_pages() * page_size + c.cached_tokens(),
              static_cast<int64_t>(pages_total) * page_size);
    for (const auto& [t, node] : locked) {
      ASSERT_EQ(c.match_prefix("", t, false).length, static_cast<int32_t>(t.size()))
          << "a locked prefix was evicted";
    }
  }
  for (const auto& [t, node] : locked) c.unlock(node);
  c.evict(1 << 30);
  EXPECT_EQ(a.num_free_pages(), pages_total);
  c.check_integrity();
}

TEST(RadixCache, RandomizedPageSize1) { run_randomized(1, 7); }
TEST(RadixCache, RandomizedPageSize4) { run_randomized(4, 8); }
TEST(RadixCache, RandomizedPageSize16) { run_randomized(16, 9); }

}  // namespace
}  // namespace sglang
