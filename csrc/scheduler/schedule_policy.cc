// Scheduling policies: see sglang/schedule_policy.h.
#include "sglang/schedule_policy.h"

#include <algorithm>
#include <span>
#include <unordered_map>

#include "sglang/common.h"
#include "sglang/request.h"

namespace sglang {
namespace {

// Beyond this many waiting requests, prefix-aware policies fall back to arrival order: matching
// every waiting prompt each step would cost more than it saves.
constexpr size_t kMaxPrefixAwareQueue = 128;

bool by_arrival(const Request* a, const Request* b) { return a->arrival < b->arrival; }

std::span<const int32_t> match_key(const Request* req) {
  // The last token is always recomputed (its logits are needed), so it never counts as cached.
  return std::span<const int32_t>(req->tokens).first(req->tokens.size() - 1);
}

class FcfsPolicy : public SchedulePolicy {
 public:
  void order(std::vector<Request*>& waiting, RadixCache&) override {
    std::stable_sort(waiting.begin(), waiting.end(), by_arrival);
  }
};

class LongestPrefixPolicy : public SchedulePolicy {
 public:
  void order(std::vector<Request*>& waiting, RadixCache& cache) override {
    if (waiting.size() > kMaxPrefixAwareQueue || cache.disabled()) {
      std::stable_sort(waiting.begin(), waiting.end(), by_arrival);
      return;
    }
    std::unordered_map<const Request*, int32_t> matched;
    for (const Request* req : waiting) {
      matched[req] = cache.match_prefix(req->params.cache_namespace, match_key(req), false).length;
    }
    std::stable_sort(waiting.begin(), waiting.end(), [&](const Request* a, const Request* b) {
      if (matched[a] != matched[b]) return matched[a] > matched[b];
      return a->arrival < b->arrival;
    });
  }
};

class DfsWeightPolicy : public SchedulePolicy {
 public:
  void order(std::vector<Request*>& waiting, RadixCache& cache) override {
    std::stable_sort(waiting.begin(), waiting.end(), by_arrival);
    if (waiting.size() > kMaxPrefixAwareQueue || cache.disabled()) return;
    // Each request hangs at the deepest node its prompt matches; a node weighs the number of
    // requests in its subtree. Visit from the roots, heavier children first.
    std::unordered_map<NodeId, std::vector<Request*>> at_node;
    std::unordered_map<NodeId, int32_t> weight;
    std::unordered_map<NodeId, std::vector<NodeId>> children;
    std::vector<NodeId> roots;
    for (Request* req : waiting) {
      NodeId node = cache.match_prefix(req->params.cache_namespace, match_key(req), false).node;
      at_node[node].push_back(req);
      if (node == kNoNode && weight[kNoNode]++ == 0) roots.push_back(kNoNode);  // no tree yet
      for (NodeId cur = node; cur != kNoNode; cur = cache.parent_of(cur)) {
        if (weight[cur]++ > 0) continue;  // first visit: link it into the visited forest
        NodeId parent = cache.parent_of(cur);
        (parent == kNoNode ? roots : children[parent]).push_back(cur);
      }
    }
    std::vector<Request*> ordered;
    ordered.reserve(waiting.size());
    auto heavier = [&](NodeId a, NodeId b) { return weight[a] > weight[b]; };
    std::vector<NodeId> stack(roots.rbegin(), roots.rend());
    std::stable_sort(stack.begin(), stack.end(), [&](NodeId a, NodeId b) { return heavier(b, a); });
    while (!stack.empty()) {
      NodeId node = stack.back();
      stack.pop_back();
      for (Request* req : at_node[node]) ordered.push_back(req);
      auto& kids = children[node];
      std::stable_sort(kids.begin(), kids.end(), heavier);
      for (auto it = kids.rbegin(); it != kids.rend(); ++it) stack.push_back(*it);
    }
    SGL_CHECK(ordered.size() == waiting.size()) << "dfs-weight lost requests";
    waiting.swap(ordered);
  }
};

}  // namespace

std::unique_ptr<SchedulePolicy> make_schedule_policy(const std::string& name) {
  if (name == "fcfs") return std::make_unique<FcfsPolicy>();
  if (name == "lpm") return std::make_unique<LongestPrefixPolicy>();
  if (name == "dfs-weight") return std::make_unique<DfsWeightPolicy>();
  SGL_REJECT() << "Unknown schedule policy '" << name << "'; choose fcfs, lpm or dfs-weight.";
}

}  // namespace sglang
