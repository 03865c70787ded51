// Paged KV-cache slot allocator: see sglang/page_allocator.h.
#include "sglang/page_allocator.h"

#include "sglang/common.h"

namespace sglang {

PageAllocator::PageAllocator(int32_t num_pages, int32_t page_size)
    : page_size_(page_size), num_pages_(num_pages) {
  SGL_CHECK(page_size >= 1) << "page_size must be at least 1, got " << page_size;
  SGL_CHECK(num_pages >= 1) << "the KV pool needs at least one page, got " << num_pages;
  refcount_.assign(static_cast<size_t>(num_pages) + 1, 0);
  free_.reserve(num_pages);
  for (int32_t p = num_pages; p >= 1; --p) free_.push_back(p);
}

void PageAllocator::check_page(int32_t page) const {
  SGL_CHECK(page >= 1 && page <= num_pages_) << "page " << page << " out of range [1, " << num_pages_
                                             << "]";
}

bool PageAllocator::alloc(int32_t n, std::vector<int32_t>& out) {
  SGL_CHECK(n >= 0) << "cannot allocate " << n << " pages";
  if (n > static_cast<int32_t>(free_.size())) return false;
  for (int32_t i = 0; i < n; ++i) {
    int32_t page = free_.back();
    free_.pop_back();
    refcount_[page] = 1;
    out.push_back(page);
  }
  return true;
}

void PageAllocator::ref(int32_t page) {
  check_page(page);
  SGL_CHECK(refcount_[page] > 0) << "ref of free page " << page;
  ++refcount_[page];
}

void PageAllocator::unref(int32_t page) {
  check_page(page);
  SGL_CHECK(refcount_[page] > 0) << "double free of page " << page;
  if (--refcount_[page] == 0) free_.push_back(page);
}

void PageAllocator::unref_all(std::span<const int32_t> pages) {
  for (int32_t p : pages) unref(p);
}

int32_t PageAllocator::refcount(int32_t page) const {
  check_page(page);
  return refcount_[page];
}

void PageAllocator::check_integrity() const {
  std::vector<uint8_t> in_free(refcount_.size(), 0);
  for (int32_t p : free_) {
    check_page(p);
    SGL_CHECK(!in_free[p]) << "page " << p << " is twice in the free list";
    in_free[p] = 1;
    SGL_CHECK(refcount_[p] == 0) << "free page " << p << " has refcount " << refcount_[p];
  }
  for (int32_t p = 1; p <= num_pages_; ++p) {
    SGL_CHECK(refcount_[p] >= 0) << "page " << p << " has negative refcount";
    SGL_CHECK(in_free[p] || refcount_[p] > 0) << "page " << p << " is neither free nor referenced";
  }
}

}  // namespace sglang
