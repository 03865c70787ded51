// Admission and prefill batching: which waiting requests enter the next prefill batch, how much
// of each (chunked prefill), and the KV memory they get.
#include <algorithm>
#include <cmath>
#include <limits>

#include "sglang/common.h"
#include "sglang/scheduler.h"

namespace sglang {

int64_t Scheduler::available_tokens() const {
  return allocator_.num_free_tokens() + cache_.evictable_tokens();
}

int64_t Scheduler::reserved_decode_tokens() const {
  double reserved = 0;
  for (const Request* req : running_) {
    const int32_t left = std::max(0, req->params.max_new_tokens - req->output_len());
    reserved += std::min(left, config_.clip_max_new_tokens) * new_token_ratio_;
  }
  return static_cast<int64_t>(std::ceil(reserved));
}

bool Scheduler::reserve_pages(int32_t num_pages) {
  const int32_t missing = num_pages - allocator_.num_free_pages();
  if (missing > 0) cache_.evict(static_cast<int64_t>(missing) * config_.page_size);
  return allocator_.num_free_pages() >= num_pages;
}

bool Scheduler::grow_kv(Request* req, int32_t new_kv_len) {
  const int32_t ps = config_.page_size;
  const int32_t need = (new_kv_len + ps - 1) / ps - static_cast<int32_t>(req->pages.size());
  if (need > 0) {
    if (!reserve_pages(need)) return false;
    SGL_CHECK(allocator_.alloc(need, req->pages)) << "allocation after a successful reserve";
  }
  const int32_t old_kv_len = req->kv_len;
  req->kv_len = new_kv_len;
  write_slots(req, old_kv_len, new_kv_len);
  return true;
}

void Scheduler::write_slots(Request* req, int32_t begin, int32_t end) {
  const int32_t ps = config_.page_size;
  int32_t* row = req_to_token_.get() + static_cast<size_t>(req->pool_index) * max_seq_len_;
  for (int32_t pos = begin; pos < end; ++pos) row[pos] = req->pages[pos / ps] * ps + pos % ps;
}

void Scheduler::take_pool_index(Request* req) {
  SGL_CHECK(!free_pool_indices_.empty()) << "no free request table row";
  req->pool_index = free_pool_indices_.back();
  free_pool_indices_.pop_back();
}

void Scheduler::add_extend(Request* req, int32_t extend, BatchPlan& plan) {
  const int32_t prefix = req->kv_len - extend;
  const int32_t idx = plan.num_reqs();
  plan.req_ids.push_back(req->id);
  plan.req_pool_indices.push_back(req->pool_index);
  plan.prefix_lens.push_back(prefix);
  plan.extend_lens.push_back(extend);
  plan.seq_lens.push_back(req->kv_len);
  plan.output_lens.push_back(req->output_len());
  const int32_t* row = req_to_token_.get() + static_cast<size_t>(req->pool_index) * max_seq_len_;
  for (int32_t pos = prefix; pos < req->kv_len; ++pos) {
    plan.input_ids.push_back(req->tokens[pos]);
    plan.positions.push_back(pos);
    plan.out_slots.push_back(row[pos]);
  }
  plan.extend_start.push_back(plan.num_tokens());
  if (req->kv_len == req->seq_len()) {  // the whole sequence is in: sample its next token
    plan.sample_rows.push_back(plan.num_tokens() - 1);
    plan.sample_indices.push_back(idx);
  }
}

bool Scheduler::admit(Request* req, BatchPlan& plan, int32_t& budget_tokens,
                      int32_t& budget_chunk, int64_t& budget_memory) {
  const bool first_in_batch = plan.req_ids.empty() && running_.empty();
  size_t key_len = req->tokens.size() - 1;
  if (req->params.max_cached_prefix >= 0) {
    key_len = std::min(key_len, static_cast<size_t>(req->params.max_cached_prefix));
  }
  auto key = std::span<const int32_t>(req->tokens).first(key_len);
  MatchResult match = cache_.match_prefix(req->params.cache_namespace, key, false);
  const int32_t total_extend = req->seq_len() - match.length;
  const int32_t left = std::max(0, req->params.max_new_tokens - req->output_len());
  const int64_t reserve = static_cast<int64_t>(
      std::ceil(std::min(left, config_.clip_max_new_tokens) * new_token_ratio_));
  if (!first_in_batch && total_extend + reserve > budget_memory - match.length) return false;
  int32_t extend = total_extend;
  if (extend > budget_chunk) extend = budget_chunk;
  if (extend > budget_tokens && !plan.req_ids.empty()) return false;
  if (extend <= 0) return false;

  // Take the prefix for real: split the tree at the match, lock it, hold its pages.
  match = cache_.match_prefix(req->params.cache_namespace, key, true);
  if (match.length == 0) match.node = kNoNode;  // the namespace root needs no lock
  cache_.lock(match.node);
  for (int32_t p : match.pages) allocator_.ref(p);
  req->pages = match.pages;
  req->tree_pages = static_cast<int32_t>(match.pages.size());
  req->locked_node = match.node;
  req->kv_len = match.length;
  take_pool_index(req);
  write_slots(req, 0, match.length);
  extend = std::min(extend, req->seq_len() - match.length);
  if (!grow_kv(req, match.length + extend)) {
    release(req);
    req->state = RequestState::kWaiting;
    return false;
  }
  if (req->num_retractions == 0 && req->output_len() == 0) req->cached_tokens = match.length;
  req->state = RequestState::kRunning;
  budget_tokens -= extend;
  budget_chunk -= extend;
  budget_memory -= total_extend + reserve + match.length;
  if (req->kv_len < req->seq_len()) chunked_ = req;
  add_extend(req, extend, plan);
  return true;
}

bool Scheduler::plan_prefill(BatchPlan& plan) {
  if (waiting_.empty() && chunked_ == nullptr) return false;
  int32_t budget_tokens = config_.max_prefill_tokens;
  int32_t budget_chunk = config_.chunked_prefill_size > 0 ? config_.chunked_prefill_size
                                                          : std::numeric_limits<int32_t>::max();
  int64_t budget_memory = available_tokens() - reserved_decode_tokens();
  plan.mode = ForwardMode::kExtend;
  plan.extend_start.push_back(0);
  std::vector<Request*> in_plan;  // for the LoRA adapter limit
  if (chunked_ != nullptr) {
    Request* req = chunked_;
    in_plan.push_back(req);
    const int32_t extend = std::min({req->pending_len(), budget_chunk, budget_tokens});
    if (!grow_kv(req, req->kv_len + extend)) {
      plan = BatchPlan();
      return false;  // decode first; finishing requests free memory
    }
    budget_tokens -= extend;
    budget_chunk -= extend;
    budget_memory -= extend;
    add_extend(req, extend, plan);
    if (req->kv_len < req->seq_len()) return true;  // still chunked: nothing else this step
    chunked_ = nullptr;
  }
  const int32_t slots = config_.max_running_requests - static_cast<int32_t>(running_.size()) -
                        plan.num_reqs();
  if (slots > 0 && !waiting_.empty() && budget_tokens > 0 && budget_chunk > 0) {
    policy_->order(waiting_, cache_);
    std::vector<Request*> admitted;
    for (Request* req : waiting_) {
      if (static_cast<int32_t>(admitted.size()) >= slots) break;
      if (budget_tokens <= 0 || budget_chunk <= 0) break;
      if (!lora_fits(req, in_plan)) continue;  // its adapter waits for a free adapter slot
      if (!admit(req, plan, budget_tokens, budget_chunk, budget_memory)) break;
      admitted.push_back(req);
      in_plan.push_back(req);
      if (chunked_ == req) break;
    }
    if (!admitted.empty()) {
      std::erase_if(waiting_, [](const Request* r) { return r->state == RequestState::kRunning; });
    }
  }
  if (plan.req_ids.empty()) {
    plan = BatchPlan();
    return false;
  }
  return true;
}

bool Scheduler::lora_fits(const Request* req, const std::vector<Request*>& in_plan) const {
  const int32_t id = req->params.lora_id;
  if (id < 0 || config_.max_loras_per_batch <= 0) return true;
  std::vector<int32_t> active;
  auto note = [&active, id](const Request* r) {
    const int32_t other = r->params.lora_id;
    if (other >= 0 && std::find(active.begin(), active.end(), other) == active.end()) {
      active.push_back(other);
    }
    return other == id;
  };
  bool present = false;
  for (const Request* r : running_) present |= note(r);
  for (const Request* r : in_plan) present |= note(r);  // the mid-prefill request is here
  return present || static_cast<int32_t>(active.size()) < config_.max_loras_per_batch;
}

void Scheduler::cache_unfinished(Request* req) {
  // Share the computed prompt with later requests: put its whole pages in the tree, switch the
  // request to the tree's pages where the tree already had them, and move the lock down.
  if (cache_.disabled()) return;
  const int32_t ps = config_.page_size;
  const int32_t n = req->kv_len / ps;
  if (n <= req->tree_pages) return;
  InsertResult ins =
      cache_.insert(req->params.cache_namespace,
                    std::span<const int32_t>(req->tokens).first(static_cast<size_t>(n) * ps),
                    std::span<const int32_t>(req->pages).first(n));
  for (int32_t i = req->tree_pages; i < n; ++i) {
    if (ins.pages[i] == req->pages[i]) continue;
    allocator_.ref(ins.pages[i]);
    allocator_.unref(req->pages[i]);
    req->pages[i] = ins.pages[i];
    write_slots(req, i * ps, std::min(req->kv_len, (i + 1) * ps));
  }
  cache_.lock(ins.node);
  cache_.unlock(req->locked_node);
  req->locked_node = ins.node;
  req->tree_pages = n;
}

}  // namespace sglang
