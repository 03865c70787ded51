// The scheduler's request table, commit, abort and integrity check; admission lives in
// scheduler_prefill.cc and decode batching / retraction in scheduler_decode.cc.
#include "sglang/scheduler.h"

#include <algorithm>
#include <limits>

#include "sglang/common.h"

namespace sglang {

void Request::count_token(int32_t token, bool is_output) {
  if (params.penalty_scope == PenaltyScope::kNone) return;
  auto [it, inserted] = seen_index.try_emplace(token, static_cast<int32_t>(seen_tokens.size()));
  if (inserted) {
    seen_tokens.push_back(token);
    seen_counts.push_back(0);
  }
  if (is_output) ++seen_counts[it->second];
}

namespace {

int32_t pool_pages(const SchedulerConfig& c) {
  SGL_CHECK(c.page_size >= 1) << "page_size must be at least 1, got " << c.page_size;
  SGL_CHECK(c.max_total_tokens >= c.page_size)
      << "max_total_tokens (" << c.max_total_tokens << ") is smaller than one page";
  return c.max_total_tokens / c.page_size;
}

}  // namespace

Scheduler::Scheduler(SchedulerConfig config)
    : config_(std::move(config)),
      max_seq_len_(0),
      allocator_(pool_pages(config_), config_.page_size),
      cache_(&allocator_, config_.disable_radix_cache),
      policy_(make_schedule_policy(config_.schedule_policy)),
      new_token_ratio_(config_.init_new_token_ratio) {
  SGL_CHECK(config_.max_running_requests >= 1) << "max_running_requests must be at least 1";
  SGL_CHECK(config_.context_length >= 2) << "context_length must be at least 2";
  SGL_CHECK(config_.max_prefill_tokens >= 1) << "max_prefill_tokens must be at least 1";
  const int64_t pool_tokens = static_cast<int64_t>(allocator_.num_pages()) * config_.page_size;
  max_seq_len_ = static_cast<int32_t>(std::min<int64_t>(config_.context_length, pool_tokens));
  const size_t table = static_cast<size_t>(config_.max_running_requests) * max_seq_len_;
  req_to_token_.reset(new int32_t[table]());
  free_pool_indices_.reserve(config_.max_running_requests);
  for (int32_t i = config_.max_running_requests - 1; i >= 0; --i) free_pool_indices_.push_back(i);
}

Scheduler::~Scheduler() = default;

RequestId Scheduler::add_request(std::span<const int32_t> input_ids, const RequestParams& params) {
  limits().check_prompt(input_ids);
  const int64_t len = static_cast<int64_t>(input_ids.size());
  if (params.min_new_tokens < 0) SGL_REJECT() << "min_new_tokens must be at least 0.";
  auto req = std::make_unique<Request>();
  req->id = next_id_++;
  req->params = params;
  req->tokens.assign(input_ids.begin(), input_ids.end());
  req->prompt_len = static_cast<int32_t>(len);
  req->arrival = next_arrival_++;
  const int32_t room = max_seq_len_ - req->prompt_len;
  if (params.max_new_tokens < 0 || params.max_new_tokens > room) req->params.max_new_tokens = room;
  if (params.penalty_scope == PenaltyScope::kPromptAndOutput) {
    for (int32_t t : input_ids) req->count_token(t, false);
  }
  Request* raw = req.get();
  requests_.emplace(raw->id, std::move(req));
  waiting_.push_back(raw);
  return raw->id;
}

Request* Scheduler::get(RequestId id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

const Request* Scheduler::find(RequestId id) const { return get(id); }

RequestLimits Scheduler::limits() const {
  RequestLimits limits;
  limits.context_length = config_.context_length;
  limits.max_sequence_len = max_seq_len_;
  limits.vocab_size = config_.vocab_size;
  return limits;
}

BatchPlan Scheduler::schedule() {
  SGL_CHECK(!plan_in_flight_) << "schedule() called again before commit() of the previous plan";
  BatchPlan plan;
  if (!plan_prefill(plan)) plan_decode(plan);
  if (plan.mode == ForwardMode::kIdle) return plan;
  fill_sampling_extras(plan);
  in_flight_.clear();
  for (RequestId id : plan.req_ids) {
    Request* req = get(id);
    req->in_flight = true;
    in_flight_.push_back(req);
  }
  in_flight_sample_req_ = plan.sample_indices;
  in_flight_mode_ = plan.mode;
  plan_in_flight_ = true;
  return plan;
}

void Scheduler::fill_sampling_extras(BatchPlan& plan) const {
  bool any_penalty = false;
  bool any_ban = false;
  for (int32_t idx : plan.sample_indices) {
    const Request* req = get(plan.req_ids[idx]);
    any_penalty |= req->params.penalty_scope != PenaltyScope::kNone;
    any_ban |= req->output_len() < req->params.min_new_tokens;
  }
  if (any_penalty) {
    plan.penalty_indptr.reserve(plan.sample_indices.size() + 1);
    plan.penalty_indptr.push_back(0);
    for (int32_t idx : plan.sample_indices) {
      const Request* req = get(plan.req_ids[idx]);
      plan.penalty_token_ids.insert(plan.penalty_token_ids.end(), req->seen_tokens.begin(),
                                    req->seen_tokens.end());
      plan.penalty_counts.insert(plan.penalty_counts.end(), req->seen_counts.begin(),
                                 req->seen_counts.end());
      plan.penalty_indptr.push_back(static_cast<int32_t>(plan.penalty_token_ids.size()));
    }
  }
  if (any_ban) {
    plan.ban_indptr.push_back(0);
    for (int32_t idx : plan.sample_indices) {
      const Request* req = get(plan.req_ids[idx]);
      if (req->output_len() < req->params.min_new_tokens) {
        if (!req->params.ignore_eos) {
          plan.ban_token_ids.insert(plan.ban_token_ids.end(), config_.eos_token_ids.begin(),
                                    config_.eos_token_ids.end());
        }
        plan.ban_token_ids.insert(plan.ban_token_ids.end(), req->params.stop_token_ids.begin(),
                                  req->params.stop_token_ids.end());
      }
      plan.ban_indptr.push_back(static_cast<int32_t>(plan.ban_token_ids.size()));
    }
  }
}

FinishReason Scheduler::check_finish(const Request& req, int32_t token) const {
  if (req.output_len() >= req.params.max_new_tokens) return FinishReason::kLength;
  if (req.seq_len() >= max_seq_len_) return FinishReason::kLength;
  if (req.output_len() < req.params.min_new_tokens) return FinishReason::kNone;
  const auto& stops = req.params.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return FinishReason::kStopToken;
  if (!req.params.ignore_eos) {
    const auto& eos = config_.eos_token_ids;
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) return FinishReason::kStopToken;
  }
  return FinishReason::kNone;
}

namespace {

void report(StepOutput& out, const Request* req, int32_t token, FinishReason reason) {
  out.req_ids.push_back(req->id);
  out.tokens.push_back(token);
  out.finish.push_back(reason);
  out.matched.push_back(reason == FinishReason::kStopToken ? token : -1);
}

void append(StepOutput& out, StepOutput&& more) {
  out.req_ids.insert(out.req_ids.end(), more.req_ids.begin(), more.req_ids.end());
  out.tokens.insert(out.tokens.end(), more.tokens.begin(), more.tokens.end());
  out.finish.insert(out.finish.end(), more.finish.begin(), more.finish.end());
  out.matched.insert(out.matched.end(), more.matched.begin(), more.matched.end());
}

}  // namespace

StepOutput Scheduler::commit(std::span<const int32_t> next_token_ids) {
  SGL_CHECK(plan_in_flight_) << "commit() without a plan in flight";
  SGL_CHECK(next_token_ids.size() == in_flight_sample_req_.size())
      << "commit() got " << next_token_ids.size() << " tokens for "
      << in_flight_sample_req_.size() << " sampled rows";
  StepOutput out = commit_pending();
  append(out, resolve(next_token_ids));
  return out;
}

StepOutput Scheduler::commit_pending() {
  SGL_CHECK(plan_in_flight_) << "commit without a plan in flight";
  SGL_CHECK(!pending_active_) << "commit before resolve() of the pending step";
  plan_in_flight_ = false;
  pending_active_ = true;
  pending_.assign(in_flight_sample_req_.size(), nullptr);
  StepOutput out;
  std::vector<uint8_t> sampled(in_flight_.size(), 0);
  for (size_t i = 0; i < in_flight_sample_req_.size(); ++i) {
    const int32_t idx = in_flight_sample_req_[i];
    sampled[idx] = 1;
    Request* req = in_flight_[idx];
    if (req->abort_pending) continue;  // reported below
    pending_[i] = req;
    req->token_pending = true;
    req->in_flight = false;
    if (req->params.max_new_tokens == 0) {  // prefill only: nothing is generated
      release(req);
      continue;
    }
    req->tokens.push_back(pending_token(static_cast<int32_t>(i)));
    // The length rules do not depend on the token: such a request is not planned again.
    if (req->output_len() >= req->params.max_new_tokens || req->seq_len() >= max_seq_len_) {
      release(req);
      unlink(req);
    }
  }
  // Requests of the plan that were not sampled (a prefill chunk) or were aborted meanwhile.
  for (size_t idx = 0; idx < in_flight_.size(); ++idx) {
    Request* req = in_flight_[idx];
    if (req->state == RequestState::kFinished) continue;
    req->in_flight = false;
    if (req->abort_pending) {
      // One that resolve() reported finished while it was in this plan leaves without a word.
      if (!req->finish_reported) report(out, req, -1, FinishReason::kAbort);
      release(req);
      continue;
    }
    if (in_flight_mode_ == ForwardMode::kExtend) {
      cache_unfinished(req);
      if (sampled[idx]) {  // prefill complete: it decodes from now on
        if (chunked_ == req) chunked_ = nullptr;
        running_.push_back(req);
      }
    }
  }
  for (Request* req : in_flight_) {
    if (req->state == RequestState::kFinished && !req->token_pending) erase(req);
  }
  in_flight_.clear();
  if (in_flight_mode_ == ForwardMode::kDecode) {
    new_token_ratio_ =
        std::max(config_.min_new_token_ratio, new_token_ratio_ - config_.new_token_ratio_decay);
  }
  return out;
}

StepOutput Scheduler::resolve(std::span<const int32_t> next_token_ids) {
  SGL_CHECK(pending_active_) << "resolve() without a pending step";
  SGL_CHECK(next_token_ids.size() == pending_.size())
      << "resolve() got " << next_token_ids.size() << " tokens for " << pending_.size()
      << " sampled rows";
  pending_active_ = false;
  StepOutput out;
  for (size_t i = 0; i < pending_.size(); ++i) {
    Request* req = pending_[i];
    if (req == nullptr) continue;
    const int32_t token = next_token_ids[i];
    if (config_.vocab_size > 0) {
      SGL_CHECK(token >= 0 && token < config_.vocab_size) << "sampled token " << token;
    }
    req->token_pending = false;
    const bool released = req->state == RequestState::kFinished;
    if (req->params.max_new_tokens == 0) {
      report(out, req, -1, FinishReason::kLength);
      erase(req);
      continue;
    }
    SGL_CHECK(!req->tokens.empty() && req->tokens.back() == pending_token(static_cast<int32_t>(i)))
        << "request " << req->id << " lost its pending token";
    req->tokens.back() = token;
    if (req->abort_pending) {  // aborted meanwhile: the token is dropped
      if (released || !req->in_flight) {
        report(out, req, -1, FinishReason::kAbort);
        if (!released) release(req);
        erase(req);
      }  // else the commit of the plan in flight reports it
      continue;
    }
    req->count_token(token, true);
    const FinishReason reason = check_finish(*req, token);
    report(out, req, token, reason);
    if (reason == FinishReason::kNone) continue;
    if (req->in_flight) {  // planned again already: that plan's commit drops it
      req->abort_pending = true;
      req->finish_reported = true;
    } else {
      if (!released) release(req);
      erase(req);
    }
  }
  pending_.clear();
  return out;
}

void Scheduler::release(Request* req) {
  // Give the computed KV (whole pages) to the cache, then drop the request's own references.
  const int32_t ps = config_.page_size;
  if (!cache_.disabled() && req->kv_len >= ps && !req->pages.empty()) {
    const int32_t n = req->kv_len / ps;
    cache_.insert(req->params.cache_namespace,
                  std::span<const int32_t>(req->tokens).first(static_cast<size_t>(n) * ps),
                  std::span<const int32_t>(req->pages).first(n));
  }
  allocator_.unref_all(req->pages);
  req->pages.clear();
  req->kv_len = 0;
  req->tree_pages = 0;
  cache_.unlock(req->locked_node);
  req->locked_node = kNoNode;
  if (req->pool_index >= 0) {
    free_pool_indices_.push_back(req->pool_index);
    req->pool_index = -1;
  }
  req->state = RequestState::kFinished;
  req->in_flight = false;
  if (chunked_ == req) chunked_ = nullptr;
}

void Scheduler::unlink(Request* req) {
  auto drop = [req](std::vector<Request*>& v) {
    auto it = std::find(v.begin(), v.end(), req);
    if (it != v.end()) v.erase(it);
  };
  drop(running_);
  drop(waiting_);
}

void Scheduler::erase(Request* req) {
  unlink(req);
  requests_.erase(req->id);
}

AbortResult Scheduler::abort(RequestId id) {
  Request* req = get(id);
  if (req == nullptr || req->finish_reported) return AbortResult::kNotFound;  // reported done
  if (req->in_flight || req->token_pending) {
    req->abort_pending = true;
    return AbortResult::kDeferred;
  }
  release(req);
  erase(req);
  return AbortResult::kDone;
}

std::vector<RequestId> Scheduler::cancel_plan() {
  SGL_CHECK(plan_in_flight_) << "cancel_plan() without a plan in flight";
  plan_in_flight_ = false;
  std::vector<RequestId> ids;
  for (Request* req : in_flight_) {
    ids.push_back(req->id);
    // The KV written by the failed step is garbage: nothing of it may reach the cache. The
    // request's own pages go back to the allocator; cached prefix pages it matched stay cached.
    req->kv_len = std::min(req->kv_len, req->tree_pages * config_.page_size);
    release(req);
  }
  for (Request* req : in_flight_) {
    std::replace(pending_.begin(), pending_.end(), req, static_cast<Request*>(nullptr));
    erase(req);
  }
  in_flight_.clear();
  return ids;
}

bool Scheduler::flush_cache() {
  if (!requests_.empty()) return false;
  cache_.reset();
  return true;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_waiting = static_cast<int32_t>(waiting_.size());
  s.num_running = static_cast<int32_t>(running_.size()) + (chunked_ != nullptr ? 1 : 0);
  s.num_free_tokens = allocator_.num_free_tokens();
  s.num_evictable_tokens = cache_.evictable_tokens();
  s.num_protected_tokens = cache_.protected_tokens();
  const int64_t capacity = static_cast<int64_t>(allocator_.num_pages()) * config_.page_size;
  s.num_used_tokens = capacity - s.num_free_tokens - s.num_evictable_tokens;
  s.cache_hit_tokens = cache_.hit_tokens();
  s.cache_miss_tokens = cache_.miss_tokens();
  s.num_retractions = num_retractions_;
  s.new_token_ratio = new_token_ratio_;
  return s;
}

void Scheduler::check_integrity() const {
  allocator_.check_integrity();
  cache_.check_integrity();
  // Expected reference count of every page: one per request holding it, one if the tree has it.
  std::vector<int32_t> held(static_cast<size_t>(allocator_.num_pages()) + 1, 0);
  int32_t active = 0;
  int32_t locks = 0;
  size_t finishing = 0;
  const int32_t ps = config_.page_size;
  for (const auto& [id, owned] : requests_) {
    const Request& req = *owned;
    SGL_CHECK(req.id == id) << "request table entry " << id << " holds request " << req.id;
    if (req.state == RequestState::kFinished) {  // released by commit_pending(), unreported
      SGL_CHECK(req.token_pending && req.pages.empty() && req.pool_index < 0)
          << "finished request " << id << " still kept";
      ++finishing;
      continue;
    }
    SGL_CHECK(req.token_pending == (pending_active_ && std::find(pending_.begin(), pending_.end(),
                                                                 &req) != pending_.end()))
        << "request " << id << " has a pending token outside the pending step";
    SGL_CHECK(static_cast<int64_t>(req.pages.size()) * ps >= req.kv_len &&
              static_cast<int64_t>(req.pages.size()) * ps < req.kv_len + ps + (req.kv_len == 0))
        << "request " << id << " holds " << req.pages.size() << " pages for " << req.kv_len
        << " tokens";
    SGL_CHECK(req.kv_len <= req.seq_len()) << "request " << id << " has KV past its tokens";
    for (int32_t p : req.pages) ++held[p];
    if (req.state == RequestState::kWaiting) {
      SGL_CHECK(req.pages.empty() && req.pool_index < 0 && req.locked_node == kNoNode)
          << "waiting request " << id << " holds resources";
    } else {
      ++active;
      SGL_CHECK(req.pool_index >= 0) << "running request " << id << " has no table row";
      const int32_t* row = req_to_token_.get() + static_cast<size_t>(req.pool_index) * max_seq_len_;
      for (int32_t pos = 0; pos < req.kv_len; ++pos) {
        SGL_CHECK(row[pos] == req.pages[pos / ps] * ps + pos % ps)
            << "request " << id << " slot table differs at position " << pos;
      }
    }
    if (req.locked_node != kNoNode) ++locks;
  }
  SGL_CHECK(static_cast<size_t>(active) + free_pool_indices_.size() ==
            static_cast<size_t>(config_.max_running_requests))
      << active << " running requests but " << free_pool_indices_.size() << " free table rows";
  // Every request sits in exactly one place: waiting, running, mid-prefill, or in a prefill plan.
  std::unordered_map<const Request*, int32_t> places;
  for (const Request* r : waiting_) ++places[r];
  for (const Request* r : running_) ++places[r];
  if (chunked_ != nullptr) ++places[chunked_];
  if (plan_in_flight_ && in_flight_mode_ == ForwardMode::kExtend) {
    for (const Request* r : in_flight_) {
      if (r != chunked_) ++places[r];
    }
  }
  SGL_CHECK(places.size() + finishing == requests_.size())
      << places.size() << " requests queued, " << requests_.size() << " in the table";
  for (const auto& [r, n] : places) {
    SGL_CHECK(n == 1 && get(r->id) == r) << "request " << r->id << " is queued " << n << " times";
  }
  int64_t tree_only = 0;
  for (int32_t p = 1; p <= allocator_.num_pages(); ++p) {
    const int32_t rc = allocator_.refcount(p);
    SGL_CHECK(rc == held[p] || rc == held[p] + 1)
        << "page " << p << " has refcount " << rc << " but " << held[p] << " request holders";
    if (rc == 1 && held[p] == 0) ++tree_only;
  }
  // free + cached-only + used == capacity
  const int64_t cached_pages = cache_.cached_tokens() / ps;
  SGL_CHECK(tree_only <= cached_pages) << "more tree-only pages than cached pages";
  if (cache_.protected_tokens() == 0) {
    SGL_CHECK(locks == 0) << locks << " requests hold locks but nothing is protected";
  }
  SGL_CHECK(locks > 0 || cache_.protected_tokens() == 0)
      << cache_.protected_tokens() << " cached tokens are locked but no request holds a lock";
  if (requests_.empty()) {
    SGL_CHECK(cache_.protected_tokens() == 0) << "idle, yet cached tokens are locked";
    SGL_CHECK(allocator_.num_free_pages() + cached_pages == allocator_.num_pages())
        << "idle, yet " << allocator_.num_pages() - allocator_.num_free_pages() - cached_pages
        << " pages are neither free nor cached (leak)";
  }
}

}  // namespace sglang
