// Paged KV-cache slot allocator.
//
// The KV cache is a set of preallocated tensors (owned by the model runner) indexed by *slots*.
// Slots are grouped in pages of `page_size` consecutive slots: slot = page * page_size + offset.
// Page 0 is reserved as padding (slots of padded tokens in a batch point at it), so usable pages
// are 1..num_pages and the KV tensors need `num_slots()` = (num_pages + 1) * page_size rows.
//
// Pages are reference counted: a request holds one reference on each page of its sequence, and
// the radix cache holds one on each page stored in its tree; a page returns to the free list when
// its last reference is dropped. Single-threaded: the owning Scheduler serialises every call.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sglang {

class PageAllocator {
 public:
  /// `num_pages` usable pages of `page_size` slots each (page_size >= 1).
  PageAllocator(int32_t num_pages, int32_t page_size);

  int32_t page_size() const { return page_size_; }
  /// Usable pages (excludes the padding page 0).
  int32_t num_pages() const { return num_pages_; }
  /// Rows the KV tensors need: (num_pages + 1) * page_size.
  int64_t num_slots() const { return static_cast<int64_t>(num_pages_ + 1) * page_size_; }
  int32_t num_free_pages() const { return static_cast<int32_t>(free_.size()); }
  int64_t num_free_tokens() const { return static_cast<int64_t>(free_.size()) * page_size_; }

  /// Appends `n` fresh pages (reference count 1) to `out`. All or nothing: returns false, and
  /// leaves `out` unchanged, when fewer than `n` pages are free.
  bool alloc(int32_t n, std::vector<int32_t>& out);
  /// Adds a reference to an allocated page.
  void ref(int32_t page);
  /// Drops a reference; the page is free again when none is left.
  void unref(int32_t page);
  void unref_all(std::span<const int32_t> pages);
  int32_t refcount(int32_t page) const;

  /// Verifies: every page is either free (count 0, once in the free list) or referenced.
  /// Throws sglang::Error describing the first violation.
  void check_integrity() const;

 private:
  void check_page(int32_t page) const;

  int32_t page_size_;
  int32_t num_pages_;
  std::vector<int32_t> free_;      // stack of free page ids; lowest ids are handed out first
  std::vector<int32_t> refcount_;  // [num_pages + 1], index 0 unused
};

}  // namespace sglang
