// The scheduler: request table, admission, batch planning, retraction and token-level stop checks.
//
// Inverted control: the scheduler never calls the model. A driver loop runs
//     plan = schedule();  logits = forward(plan);  ids = sample(logits);  out = commit(ids);
// schedule() admits waiting requests (policy order, prefix matching, chunked prefill, memory
// budget) into a prefill batch, or else builds a decode batch of the running requests, retracting
// some when the KV pool cannot hold one more token for each. commit() appends the sampled tokens,
// applies the stop rules (EOS, stop_token_ids, max_new_tokens, context) and gives finished
// requests' KV to the radix cache. The scheduler owns the PageAllocator and the RadixCache.
//
// Overlap scheduling splits commit() in two so the host plans step N+1 while the device computes
// step N:  plan = schedule(); launch(plan); commit_pending(); plan2 = schedule();
// launch(plan2, tokens of plan on the device); resolve(tokens of plan); commit_pending() ...
// Placeholders stand for the unknown tokens in plan2.input_ids (see pending_token()); a request
// that resolve() finishes while it is in plan2 is reported then and dropped by plan2's commit.
// Penalty counts of a pending token are counted by resolve(): a driver overlaps only steps
// without penalties.
//
// Threading: not thread-safe; one driver thread calls everything.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "sglang/batch_plan.h"
#include "sglang/page_allocator.h"
#include "sglang/radix_cache.h"
#include "sglang/request.h"
#include "sglang/request_limits.h"
#include "sglang/schedule_policy.h"

namespace sglang {

struct SchedulerConfig {
  int32_t max_total_tokens = 65536;       // KV pool size in tokens (rounded down to pages)
  int32_t page_size = 1;
  int32_t max_running_requests = 256;
  int32_t max_prefill_tokens = 16384;     // new tokens per prefill batch
  int32_t chunked_prefill_size = 8192;    // <= 0: prompts are never split
  int32_t context_length = 4096;
  int32_t vocab_size = 0;                 // > 0: input ids are checked against it
  std::string schedule_policy = "fcfs";   // fcfs | lpm | dfs-weight
  bool disable_radix_cache = false;
  std::vector<int32_t> eos_token_ids;
  // > 0: requests of at most this many distinct LoRA adapters (RequestParams::lora_id >= 0) run
  // at once (the adapter slots of the model); a waiting request whose adapter would exceed it is
  // passed over until one of the running adapters has no request left.
  int32_t max_loras_per_batch = 0;
  // Memory reserved for running requests' future tokens: min(remaining max_new_tokens,
  // clip_max_new_tokens) * ratio, the ratio decaying from init to min as decoding goes well and
  // reset to init after a retraction.
  double init_new_token_ratio = 0.7;
  double min_new_token_ratio = 0.1;
  double new_token_ratio_decay = 0.001;
  int32_t clip_max_new_tokens = 4096;
};

enum class AbortResult : int32_t {
  kNotFound = 0,  // no such request (finished already, or never added)
  kDone = 1,      // removed and its memory released now
  kDeferred = 2,  // in the plan being computed: released and reported by the next commit()
};

/// Counters for metrics and tests.
struct SchedulerStats {
  int32_t num_waiting = 0;
  int32_t num_running = 0;
  int64_t num_free_tokens = 0;
  int64_t num_evictable_tokens = 0;
  int64_t num_protected_tokens = 0;
  int64_t num_used_tokens = 0;  // held by requests, not counting cached-only pages
  int64_t cache_hit_tokens = 0;
  int64_t cache_miss_tokens = 0;
  int64_t num_retractions = 0;
  double new_token_ratio = 0.0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  /// Queues a request. Throws sglang::Error (a user error, message shown as is) when the prompt
  /// breaks limits().check_prompt. max_new_tokens is clamped so the sequence fits the context and
  /// the KV pool.
  RequestId add_request(std::span<const int32_t> input_ids, const RequestParams& params);

  /// Plans the next step. Must be followed by commit() unless the plan is idle.
  BatchPlan schedule();

  /// Hands back one token per sampled row of the last plan (plan.sample_rows order).
  StepOutput commit(std::span<const int32_t> next_token_ids);

  /// Overlap scheduling: ends the plan in flight while its sampled tokens are still being computed.
  /// Each sampled request gets the placeholder token pending_token(row), so schedule() may plan
  /// the next step before resolve(). A request whose placeholder reaches max_new_tokens or the
  /// context finishes now (its memory is released; resolve() reports it) and is not planned
  /// again. Returns what is settled now (aborts); resolve() must come before the next commit.
  StepOutput commit_pending();

  /// Hands back the tokens of the step ended by commit_pending() (sample_rows order), applies
  /// the stop rules and reports them, as commit() does. May run while a later plan is in flight.
  StepOutput resolve(std::span<const int32_t> next_token_ids);

  /// Whether a step ended by commit_pending() awaits resolve().
  bool has_pending() const { return pending_active_; }

  /// Aborts a request wherever it is; see AbortResult.
  AbortResult abort(RequestId id);

  /// Ends the plan in flight without a commit, for a step whose forward or sampling failed: every
  /// request of the plan is removed and its memory released, and the KV the step wrote is never
  /// given to the radix cache. Returns the removed requests (the caller reports them failed).
  std::vector<RequestId> cancel_plan();

  /// The request rules this scheduler applies (context, KV pool, vocabulary).
  RequestLimits limits() const;

  /// Empties the radix cache. Refused (returns false) while any request is waiting or running.
  bool flush_cache();

  /// The request, or null once it finished / was aborted / never existed. Valid until the next
  /// mutating call.
  const Request* find(RequestId id) const;
  bool idle() const { return requests_.empty(); }
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return config_; }
  /// Tokens a sequence can hold at most: min(context_length, KV pool).
  int32_t max_sequence_len() const { return max_seq_len_; }

  /// The token->slot table [max_running_requests, row_len()] (see BatchPlan).
  const int32_t* req_to_token() const { return req_to_token_.get(); }
  int32_t row_len() const { return max_seq_len_; }

  PageAllocator& allocator() { return allocator_; }
  RadixCache& cache() { return cache_; }

  /// Verifies the allocator, the cache and the request table agree: every page is held by its
  /// requests and the tree exactly as often as its reference count says, locks match, and
  /// free + cached-only + used == capacity. Throws sglang::Error on the first violation.
  void check_integrity() const;

 private:
  Request* get(RequestId id) const;
  int64_t available_tokens() const;
  int64_t reserved_decode_tokens() const;
  bool reserve_pages(int32_t num_pages);
  bool grow_kv(Request* req, int32_t new_kv_len);
  void write_slots(Request* req, int32_t begin, int32_t end);

  // prefill side (scheduler_prefill.cc)
  bool plan_prefill(BatchPlan& plan);
  bool admit(Request* req, BatchPlan& plan, int32_t& budget_tokens, int32_t& budget_chunk,
             int64_t& budget_memory);
  void add_extend(Request* req, int32_t extend, BatchPlan& plan);
  void cache_unfinished(Request* req);
  bool lora_fits(const Request* req, const std::vector<Request*>& in_plan) const;

  // decode side (scheduler_decode.cc)
  bool plan_decode(BatchPlan& plan);
  void retract(Request* req, BatchPlan& plan);

  // shared
  void fill_sampling_extras(BatchPlan& plan) const;
  FinishReason check_finish(const Request& req, int32_t token) const;
  void release(Request* req);
  void erase(Request* req);
  void unlink(Request* req);
  void take_pool_index(Request* req);

  SchedulerConfig config_;
  int32_t max_seq_len_;
  PageAllocator allocator_;
  RadixCache cache_;
  std::unique_ptr<SchedulePolicy> policy_;
  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;
  std::vector<Request*> waiting_;
  std::vector<Request*> running_;  // decoding, in admission order
  Request* chunked_ = nullptr;     // mid-prefill request, at most one
  std::vector<int32_t> free_pool_indices_;
  std::unique_ptr<int32_t[]> req_to_token_;
  std::vector<Request*> in_flight_;  // requests of the plan awaiting commit()
  bool plan_in_flight_ = false;
  ForwardMode in_flight_mode_ = ForwardMode::kIdle;
  std::vector<int32_t> in_flight_sample_req_;  // plan.sample_indices of the plan in flight
  // The step ended by commit_pending(), by sample row (null: settled already, or removed).
  std::vector<Request*> pending_;
  bool pending_active_ = false;
  RequestId next_id_ = 1;
  uint64_t next_arrival_ = 0;
  double new_token_ratio_;
  int64_t num_retractions_ = 0;
};

}  // namespace sglang
