// Decode batching and retraction: one new token for every running request, preempting the most
// recently admitted requests when the KV pool cannot hold a token more for each.
#include <algorithm>

#include "sglang/common.h"
#include "sglang/scheduler.h"

namespace sglang {

namespace {

// Pages the decode step needs for `req`: one when its next token starts a new page.
int32_t pages_for_next_token(const Request* req, int32_t page_size) {
  return req->kv_len == static_cast<int32_t>(req->pages.size()) * page_size ? 1 : 0;
}

}  // namespace

void Scheduler::retract(Request* req, BatchPlan& plan) {
  // Keep what was generated; the KV goes to the cache (it may still be there on readmission).
  release(req);
  req->state = RequestState::kWaiting;
  ++req->num_retractions;
  ++num_retractions_;
  running_.erase(std::find(running_.begin(), running_.end(), req));
  waiting_.push_back(req);
  plan.retracted.push_back(req->id);
}

bool Scheduler::plan_decode(BatchPlan& plan) {
  if (running_.empty()) return false;
  const int32_t ps = config_.page_size;
  int32_t need = 0;
  for (const Request* req : running_) need += pages_for_next_token(req, ps);
  while (!reserve_pages(need)) {
    // Preempt the latest arrival; a lone request always fits (max_new_tokens is clamped to the
    // pool), so this ends with at least one request running.
    SGL_CHECK(running_.size() > 1) << "a single request cannot grow within the KV pool";
    Request* victim = *std::max_element(
        running_.begin(), running_.end(),
        [](const Request* a, const Request* b) { return a->arrival < b->arrival; });
    need -= pages_for_next_token(victim, ps);
    retract(victim, plan);
    new_token_ratio_ = config_.init_new_token_ratio;
  }
  const size_t n = running_.size();
  plan.mode = ForwardMode::kDecode;
  plan.req_ids.reserve(n);
  plan.req_pool_indices.reserve(n);
  plan.prefix_lens.reserve(n);
  plan.extend_lens.assign(n, 1);
  plan.seq_lens.reserve(n);
  plan.output_lens.reserve(n);
  plan.extend_start.reserve(n + 1);
  plan.input_ids.reserve(n);
  plan.positions.reserve(n);
  plan.out_slots.reserve(n);
  plan.sample_rows.reserve(n);
  plan.sample_indices.reserve(n);
  plan.extend_start.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    Request* req = running_[i];
    const int32_t pos = req->kv_len;
    SGL_CHECK(grow_kv(req, pos + 1)) << "decode allocation after a successful reserve";
    const int32_t row = static_cast<int32_t>(i);
    plan.req_ids.push_back(req->id);
    plan.req_pool_indices.push_back(req->pool_index);
    plan.prefix_lens.push_back(pos);
    plan.seq_lens.push_back(pos + 1);
    plan.output_lens.push_back(req->output_len());
    plan.extend_start.push_back(row + 1);
    plan.input_ids.push_back(req->tokens[pos]);
    plan.positions.push_back(pos);
    plan.out_slots.push_back(
        req_to_token_[static_cast<size_t>(req->pool_index) * max_seq_len_ + pos]);
    plan.sample_rows.push_back(row);
    plan.sample_indices.push_back(row);
  }
  return true;
}

}  // namespace sglang
