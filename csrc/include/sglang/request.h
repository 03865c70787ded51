// A request as the scheduler sees it: token ids, KV pages, stop conditions, penalty counters.
//
// Created by Scheduler::add_request, owned by the Scheduler's request table, destroyed when it
// finishes or is aborted. `tokens` is the prompt followed by the generated tokens; everything else
// (output length, remaining budget) is derived from it.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "sglang/batch_plan.h"
#include "sglang/radix_cache.h"

namespace sglang {

/// Which tokens a request's penalty counters cover.
enum class PenaltyScope : int32_t {
  kNone = 0,              // no penalties: nothing tracked
  kOutput = 1,            // frequency / presence: generated tokens
  kPromptAndOutput = 2,   // repetition penalty: prompt tokens too
};

/// Per-request options the core acts on. Text-level options (stop strings) stay in Python.
struct RequestParams {
  int32_t max_new_tokens = 128;  // < 0: up to the context length
  int32_t min_new_tokens = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  PenaltyScope penalty_scope = PenaltyScope::kNone;
  std::string cache_namespace;  // prefixes are shared only within one namespace
  // At most this many leading tokens are taken from the prefix cache (< 0: no limit). A request
  // that wants logits of prompt positions (prompt logprobs) must compute them.
  int32_t max_cached_prefix = -1;
  // The LoRA adapter the request runs with (-1: the base model). At most
  // SchedulerConfig::max_loras_per_batch distinct adapters run at once.
  int32_t lora_id = -1;
};

enum class RequestState : int32_t { kWaiting = 0, kRunning = 1, kFinished = 2 };

struct Request {
  RequestId id = 0;
  RequestParams params;
  std::vector<int32_t> tokens;  // prompt then output
  int32_t prompt_len = 0;
  RequestState state = RequestState::kWaiting;
  uint64_t arrival = 0;  // admission order key (retracted requests keep theirs)

  // KV: pages held (one reference each), covering positions [0, kv_len).
  std::vector<int32_t> pages;
  int32_t kv_len = 0;
  // Leading pages that belong to the radix tree (matched or inserted) and the locked node there.
  int32_t tree_pages = 0;
  NodeId locked_node = kNoNode;
  int32_t pool_index = -1;  // row of req_to_token while running
  int32_t cached_tokens = 0;  // prefix hit at first admission (reported as cached_tokens)
  int32_t num_retractions = 0;
  bool in_flight = false;     // part of the plan awaiting commit()
  bool abort_pending = false;
  // Overlap scheduling: the last token is a placeholder until Scheduler::resolve() (see there).
  bool token_pending = false;
  bool finish_reported = false;  // finished by resolve() while planned again: dropped silently

  // Penalty counters: unique seen tokens, in first-seen order, with their output counts.
  std::vector<int32_t> seen_tokens;
  std::vector<int32_t> seen_counts;
  std::unordered_map<int32_t, int32_t> seen_index;

  int32_t output_len() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
  int32_t seq_len() const { return static_cast<int32_t>(tokens.size()); }
  /// Tokens of the sequence whose KV is not computed yet.
  int32_t pending_len() const { return seq_len() - kv_len; }
  /// Records a token for the penalty counters (output tokens count, prompt tokens do not).
  void count_token(int32_t token, bool is_output);
};

}  // namespace sglang
