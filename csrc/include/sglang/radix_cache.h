// Radix prefix cache: a token-sequence tree mapping prefixes to KV pages.
//
// Each node holds a run of tokens (a multiple of page_size) and the pages holding their KV; the
// path from a namespace root spells a cached prefix. Requests find the longest cached prefix of
// their tokens (`match_prefix`), lock the node at its end while they use it (`lock`), and give their
// computed KV back on finishing (`insert`). When the allocator runs short, the least recently used
// unlocked leaves are evicted (`evict`), dropping the tree's page references.
//
// Namespaces (a LoRA adapter, a cache salt) have separate roots: prefixes never match across them.
// The tree holds one page reference per stored page (taken in `insert`). A disabled cache matches
// nothing and stores nothing, so the scheduler degenerates to a plain allocator.
//
// Nodes cross the API as integer handles (NodeId); kNoNode means "none". Single-threaded.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sglang/page_allocator.h"

namespace sglang {

using NodeId = int64_t;
inline constexpr NodeId kNoNode = -1;

struct MatchResult {
  /// Tokens matched: a multiple of page_size, <= the query length.
  int32_t length = 0;
  /// The tree's pages for those tokens (length / page_size of them). Not referenced for the caller.
  std::vector<int32_t> pages;
  /// The node ending exactly at `length` (the namespace root when nothing matched). Lock it to
  /// keep the prefix from being evicted.
  NodeId node = kNoNode;
};

struct InsertResult {
  /// Leading tokens that were already cached before this insert.
  int32_t existing_length = 0;
  /// The tree's pages for the whole inserted key, after the insert. Where the tree already had a
  /// page, it is the tree's page, not the caller's.
  std::vector<int32_t> pages;
  /// The node ending at the end of the inserted key.
  NodeId node = kNoNode;
};

class RadixCache {
 public:
  /// `allocator` must outlive the cache.
  RadixCache(PageAllocator* allocator, bool disabled);
  ~RadixCache();
  RadixCache(const RadixCache&) = delete;
  RadixCache& operator=(const RadixCache&) = delete;

  bool disabled() const { return disabled_; }
  int32_t page_size() const { return page_size_; }

  /// Longest cached prefix of `tokens` (rounded down to whole pages) under namespace `ns`.
  /// With `touch`, marks the path as recently used, splits the last node so that the result ends
  /// on a node boundary, and counts the hit/miss tokens. Without it the tree is not changed, and
  /// when the match ends inside a node, `node` is the deepest node matched whole.
  MatchResult match_prefix(const std::string& ns, std::span<const int32_t> tokens, bool touch);

  /// Inserts `tokens` (length a multiple of page_size) with their KV `pages` (one per page). The
  /// tree takes a reference on each page it adopts; pages of an already cached part are not
  /// adopted (the caller keeps its references and should drop them). Disabled: stores nothing.
  InsertResult insert(const std::string& ns, std::span<const int32_t> tokens,
                      std::span<const int32_t> pages);

  /// The parent of `node`, kNoNode for a namespace root.
  NodeId parent_of(NodeId node) const;

  /// Pins the path from `node` to its root against eviction. Each lock needs one unlock.
  void lock(NodeId node);
  void unlock(NodeId node);

  /// Evicts least recently used unlocked leaves until `num_tokens` tokens were released or
  /// nothing evictable is left. Returns the tokens released from the tree (their pages are freed
  /// unless someone else still references them).
  int64_t evict(int64_t num_tokens);

  /// Drops the whole tree. Fails (sglang::Error) while any node is locked.
  void reset();

  /// Tokens stored in unlocked nodes (releasable by eviction) / in locked nodes.
  int64_t evictable_tokens() const { return evictable_tokens_; }
  int64_t protected_tokens() const { return protected_tokens_; }
  int64_t cached_tokens() const { return evictable_tokens_ + protected_tokens_; }
  int64_t num_nodes() const { return static_cast<int64_t>(nodes_.size()); }
  /// Counters of match_prefix(touch=true): tokens found in the cache / not found.
  int64_t hit_tokens() const { return hit_tokens_; }
  int64_t miss_tokens() const { return miss_tokens_; }

  /// Verifies sizes, lock counts, the LRU set, page alignment and that every stored page is
  /// referenced. Throws sglang::Error on the first violation.
  void check_integrity() const;

 private:
  struct Node;
  using ChildKey = uint64_t;

  Node* root_for(const std::string& ns);
  Node* node_of(NodeId id) const;
  Node* find_child(const Node* node, std::span<const int32_t> tokens) const;
  ChildKey child_key(std::span<const int32_t> tokens) const;
  int32_t shared_pages(const Node* node, std::span<const int32_t> tokens) const;
  Node* split(Node* node, int32_t num_pages);
  Node* new_node(Node* parent, std::span<const int32_t> key, std::span<const int32_t> pages);
  void attach(Node* parent, Node* child);
  void detach(Node* parent, Node* child);
  void remove_leaf(Node* node);
  void touch(Node* node);
  void refresh_lru(Node* node);
  int64_t check_subtree(const Node* node, int64_t* locked, int64_t* count) const;

  PageAllocator* allocator_;
  int32_t page_size_;
  bool disabled_;
  NodeId next_id_ = 0;
  uint64_t clock_ = 0;
  std::unordered_map<NodeId, std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::string, Node*> roots_;
  std::set<std::pair<uint64_t, NodeId>> lru_leaves_;  // evictable leaves by last access
  int64_t evictable_tokens_ = 0;
  int64_t protected_tokens_ = 0;
  int64_t hit_tokens_ = 0;
  int64_t miss_tokens_ = 0;
};

}  // namespace sglang
