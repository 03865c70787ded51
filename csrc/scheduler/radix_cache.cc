// Radix prefix cache: see sglang/radix_cache.h.
#include "sglang/radix_cache.h"

#include <algorithm>

#include "sglang/common.h"

namespace sglang {

struct RadixCache::Node {
  NodeId id = kNoNode;
  Node* parent = nullptr;  // null for a namespace root
  std::vector<int32_t> key;
  std::vector<int32_t> pages;
  // Children by a key of their first page; a short list resolves hash collisions (page_size > 1).
  std::unordered_map<ChildKey, std::vector<Node*>> children;
  int32_t num_children = 0;
  int32_t lock_ref = 0;  // locks taken on this node or below it
  uint64_t last_access = 0;
  bool in_lru = false;
  uint64_t lru_tick = 0;  // the tick under which it sits in lru_leaves_

  bool is_root() const { return parent == nullptr; }
  int64_t size() const { return static_cast<int64_t>(key.size()); }
};

RadixCache::RadixCache(PageAllocator* allocator, bool disabled)
    : allocator_(allocator), page_size_(allocator->page_size()), disabled_(disabled) {}

RadixCache::~RadixCache() = default;

RadixCache::ChildKey RadixCache::child_key(std::span<const int32_t> tokens) const {
  if (page_size_ == 1) return static_cast<uint32_t>(tokens[0]);
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t i = 0; i < page_size_; ++i) {
    h ^= static_cast<uint32_t>(tokens[i]);
    h *= 0x100000001b3ull;
    h ^= h >> 29;
  }
  return h;
}

RadixCache::Node* RadixCache::root_for(const std::string& ns) {
  auto it = roots_.find(ns);
  if (it != roots_.end()) return it->second;
  Node* root = new_node(nullptr, {}, {});
  roots_.emplace(ns, root);
  return root;
}

RadixCache::Node* RadixCache::node_of(NodeId id) const {
  auto it = nodes_.find(id);
  SGL_CHECK(it != nodes_.end()) << "unknown radix node " << id;
  return it->second.get();
}

RadixCache::Node* RadixCache::find_child(const Node* node, std::span<const int32_t> tokens) const {
  auto it = node->children.find(child_key(tokens));
  if (it == node->children.end()) return nullptr;
  for (Node* child : it->second) {
    if (std::equal(tokens.begin(), tokens.begin() + page_size_, child->key.begin())) return child;
  }
  return nullptr;
}

int32_t RadixCache::shared_pages(const Node* node, std::span<const int32_t> tokens) const {
  const int32_t max_pages =
      std::min<int32_t>(static_cast<int32_t>(node->pages.size()),
                        static_cast<int32_t>(tokens.size()) / page_size_);
  int32_t i = 0;
  const int32_t limit = max_pages * page_size_;
  while (i < limit && node->key[i] == tokens[i]) ++i;
  return i / page_size_;
}

RadixCache::Node* RadixCache::new_node(Node* parent, std::span<const int32_t> key,
                                       std::span<const int32_t> pages) {
  auto node = std::make_unique<Node>();
  node->id = next_id_++;
  node->key.assign(key.begin(), key.end());
  node->pages.assign(pages.begin(), pages.end());
  node->last_access = clock_;
  Node* raw = node.get();
  nodes_.emplace(raw->id, std::move(node));
  if (parent != nullptr) attach(parent, raw);
  return raw;
}

void RadixCache::attach(Node* parent, Node* child) {
  child->parent = parent;
  parent->children[child_key(child->key)].push_back(child);
  ++parent->num_children;
  refresh_lru(parent);
}

void RadixCache::detach(Node* parent, Node* child) {
  auto it = parent->children.find(child_key(child->key));
  SGL_CHECK(it != parent->children.end()) << "radix node " << child->id << " not under its parent";
  auto& list = it->second;
  list.erase(std::find(list.begin(), list.end(), child));
  if (list.empty()) parent->children.erase(it);
  --parent->num_children;
  refresh_lru(parent);
}

RadixCache::Node* RadixCache::split(Node* node, int32_t num_pages) {
  // `mid` takes the first num_pages pages of `node` and its place under the parent.
  Node* parent = node->parent;
  const size_t cut = static_cast<size_t>(num_pages) * page_size_;
  auto& siblings = parent->children[child_key(node->key)];
  auto mid_owner = std::make_unique<Node>();
  Node* mid = mid_owner.get();
  mid->id = next_id_++;
  mid->parent = parent;
  mid->key.assign(node->key.begin(), node->key.begin() + cut);
  mid->pages.assign(node->pages.begin(), node->pages.begin() + num_pages);
  mid->lock_ref = node->lock_ref;
  mid->last_access = node->last_access;
  nodes_.emplace(mid->id, std::move(mid_owner));
  *std::find(siblings.begin(), siblings.end(), node) = mid;

  node->key.erase(node->key.begin(), node->key.begin() + cut);
  node->pages.erase(node->pages.begin(), node->pages.begin() + num_pages);
  node->parent = mid;
  mid->children[child_key(node->key)].push_back(node);
  mid->num_children = 1;
  return mid;
}

void RadixCache::touch(Node* node) {
  ++clock_;
  for (; node != nullptr && !node->is_root(); node = node->parent) {
    node->last_access = clock_;
    refresh_lru(node);
  }
}

void RadixCache::refresh_lru(Node* node) {
  const bool evictable = !node->is_root() && node->num_children == 0 && node->lock_ref == 0;
  if (node->in_lru && (!evictable || node->lru_tick != node->last_access)) {
    lru_leaves_.erase({node->lru_tick, node->id});
    node->in_lru = false;
  }
  if (evictable && !node->in_lru) {
    node->lru_tick = node->last_access;
    lru_leaves_.insert({node->lru_tick, node->id});
    node->in_lru = true;
  }
}

MatchResult RadixCache::match_prefix(const std::string& ns, std::span<const int32_t> tokens,
                                     bool touch_path) {
  MatchResult result;
  if (disabled_) return result;
  Node* node = nullptr;
  if (touch_path) {
    node = root_for(ns);
  } else {
    auto it = roots_.find(ns);
    if (it == roots_.end()) return result;
    node = it->second;
  }
  const int32_t len = static_cast<int32_t>(tokens.size());
  int32_t pos = 0;
  while (pos + page_size_ <= len) {
    Node* child = find_child(node, tokens.subspan(pos));
    if (child == nullptr) break;
    int32_t n = shared_pages(child, tokens.subspan(pos));
    if (n < static_cast<int32_t>(child->pages.size())) {
      if (touch_path) {
        child = split(child, n);
      } else {
        result.pages.insert(result.pages.end(), child->pages.begin(), child->pages.begin() + n);
        pos += n * page_size_;
        break;
      }
    }
    result.pages.insert(result.pages.end(), child->pages.begin(), child->pages.end());
    pos += n * page_size_;
    node = child;
  }
  result.length = pos;
  result.node = node->id;
  if (touch_path) {
    touch(node);
    hit_tokens_ += pos;
    miss_tokens_ += len - pos;
  }
  return result;
}

InsertResult RadixCache::insert(const std::string& ns, std::span<const int32_t> tokens,
                                std::span<const int32_t> pages) {
  SGL_CHECK(tokens.size() % page_size_ == 0)
      << "insert of " << tokens.size() << " tokens, not a multiple of page_size " << page_size_;
  SGL_CHECK(pages.size() * page_size_ == tokens.size())
      << "insert of " << tokens.size() << " tokens with " << pages.size() << " pages";
  InsertResult result;
  if (disabled_) {
    result.pages.assign(pages.begin(), pages.end());
    return result;
  }
  Node* node = root_for(ns);
  const int32_t len = static_cast<int32_t>(tokens.size());
  int32_t pos = 0;
  result.pages.reserve(pages.size());
  while (pos < len) {
    Node* child = find_child(node, tokens.subspan(pos));
    if (child == nullptr) {
      auto rest_pages = pages.subspan(pos / page_size_);
      for (int32_t p : rest_pages) allocator_->ref(p);
      node = new_node(node, tokens.subspan(pos), rest_pages);
      evictable_tokens_ += node->size();
      result.pages.insert(result.pages.end(), rest_pages.begin(), rest_pages.end());
      break;
    }
    int32_t n = shared_pages(child, tokens.subspan(pos));
    if (n < static_cast<int32_t>(child->pages.size())) child = split(child, n);
    result.pages.insert(result.pages.end(), child->pages.begin(), child->pages.end());
    pos += n * page_size_;
    result.existing_length = pos;
    node = child;
  }
  touch(node);
  result.node = node->id;
  return result;
}

NodeId RadixCache::parent_of(NodeId id) const {
  const Node* node = node_of(id);
  return node->is_root() ? kNoNode : node->parent->id;
}

void RadixCache::lock(NodeId id) {
  if (id == kNoNode) return;
  for (Node* node = node_of(id); !node->is_root(); node = node->parent) {
    if (node->lock_ref++ == 0) {
      evictable_tokens_ -= node->size();
      protected_tokens_ += node->size();
      refresh_lru(node);
    }
  }
}

void RadixCache::unlock(NodeId id) {
  if (id == kNoNode) return;
  for (Node* node = node_of(id); !node->is_root(); node = node->parent) {
    SGL_CHECK(node->lock_ref > 0) << "unlock of unlocked radix node " << node->id;
    if (--node->lock_ref == 0) {
      protected_tokens_ -= node->size();
      evictable_tokens_ += node->size();
      refresh_lru(node);
    }
  }
}

void RadixCache::remove_leaf(Node* node) {
  SGL_CHECK(node->num_children == 0 && node->lock_ref == 0 && !node->is_root())
      << "radix node " << node->id << " is not an evictable leaf";
  if (node->in_lru) lru_leaves_.erase({node->lru_tick, node->id});
  allocator_->unref_all(node->pages);
  evictable_tokens_ -= node->size();
  detach(node->parent, node);
  nodes_.erase(node->id);
}

int64_t RadixCache::evict(int64_t num_tokens) {
  int64_t released = 0;
  while (released < num_tokens && !lru_leaves_.empty()) {
    Node* node = node_of(lru_leaves_.begin()->second);
    released += node->size();
    remove_leaf(node);
  }
  return released;
}

void RadixCache::reset() {
  SGL_CHECK(protected_tokens_ == 0)
      << "cannot reset the radix cache while " << protected_tokens_ << " cached tokens are in use";
  for (auto& [id, node] : nodes_) allocator_->unref_all(node->pages);
  nodes_.clear();
  roots_.clear();
  lru_leaves_.clear();
  evictable_tokens_ = 0;
}

int64_t RadixCache::check_subtree(const Node* node, int64_t* locked, int64_t* count) const {
  int64_t unlocked = 0;
  int32_t child_locks = 0;
  int32_t counted_children = 0;
  for (const auto& [key, list] : node->children) {
    for (const Node* child : list) {
      SGL_CHECK(child->parent == node) << "radix node " << child->id << " has a wrong parent";
      SGL_CHECK(child_key(child->key) == key) << "radix node " << child->id << " filed wrongly";
      SGL_CHECK(!child->key.empty()) << "radix node " << child->id << " is empty";
      SGL_CHECK(child->key.size() == child->pages.size() * page_size_)
          << "radix node " << child->id << " has " << child->key.size() << " tokens, "
          << child->pages.size() << " pages";
      for (int32_t p : child->pages) {
        SGL_CHECK(allocator_->refcount(p) >= 1) << "cached page " << p << " is not referenced";
      }
      const bool want_lru = child->num_children == 0 && child->lock_ref == 0;
      SGL_CHECK(child->in_lru == want_lru) << "radix node " << child->id << " LRU membership";
      if (child->in_lru) {
        SGL_CHECK(lru_leaves_.count({child->lru_tick, child->id}) == 1)
            << "radix node " << child->id << " missing from the LRU set";
      }
      if (child->lock_ref == 0) {
        unlocked += child->size();
      } else {
        *locked += child->size();
      }
      child_locks += child->lock_ref;
      ++counted_children;
      ++*count;
      unlocked += check_subtree(child, locked, count);
    }
  }
  SGL_CHECK(counted_children == node->num_children) << "radix node " << node->id << " child count";
  if (!node->is_root()) {
    SGL_CHECK(node->lock_ref >= child_locks)
        << "radix node " << node->id << " has fewer locks than its children";
  }
  return unlocked;
}

void RadixCache::check_integrity() const {
  int64_t locked = 0;
  int64_t unlocked = 0;
  int64_t reachable = 0;
  for (const auto& [ns, root] : roots_) {
    SGL_CHECK(root->is_root() && root->key.empty()) << "bad root of namespace '" << ns << "'";
    unlocked += check_subtree(root, &locked, &reachable);
  }
  SGL_CHECK(reachable + static_cast<int64_t>(roots_.size()) == num_nodes())
      << num_nodes() << " radix nodes, " << reachable << " reachable";
  SGL_CHECK(unlocked == evictable_tokens_)
      << "evictable tokens " << evictable_tokens_ << " but unlocked nodes hold " << unlocked;
  SGL_CHECK(locked == protected_tokens_)
      << "protected tokens " << protected_tokens_ << " but locked nodes hold " << locked;
  for (const auto& entry : lru_leaves_) {
    SGL_CHECK(nodes_.count(entry.second) == 1) << "LRU set names a removed node " << entry.second;
  }
}

}  // namespace sglang
