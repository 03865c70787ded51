// The batch plan: what the model runner computes in one step, as flat arrays.
//
// Produced by Scheduler::schedule(), consumed by the driver (Python model runner, or a C++ service)
// which runs the forward pass, samples one token for each entry of `sample_rows`, and hands those
// tokens back through Scheduler::commit(). Arrays are owned by the plan; the Python binding exposes
// them as numpy views that keep the plan alive.
//
// KV addressing: the scheduler keeps a persistent token->slot table `req_to_token` of shape
// [max_running_requests, context_length] (Scheduler::req_to_token()); request i of the batch uses
// row req_pool_indices[i], whose first seq_lens[i] entries are the KV slots of its tokens.
#pragma once

#include <cstdint>
#include <vector>

namespace sglang {

enum class ForwardMode : int32_t {
  kIdle = 0,    // nothing to run
  kExtend = 1,  // prefill (possibly a chunk of a prompt, possibly after a cached prefix)
  kDecode = 2,  // one new token per request
};

using RequestId = int64_t;

/// The placeholder input id of a token still being computed (overlap scheduling): the token
/// sampled in row `sample_row` of the step ended by Scheduler::commit_pending(). Always < 0.
inline int32_t pending_token(int32_t sample_row) { return -(sample_row + 1); }

struct BatchPlan {
  ForwardMode mode = ForwardMode::kIdle;

  // ---- per request of the batch, [num_reqs] ----
  std::vector<RequestId> req_ids;
  std::vector<int32_t> req_pool_indices;  // row of req_to_token
  std::vector<int32_t> prefix_lens;       // tokens whose KV exists before this step
  std::vector<int32_t> extend_lens;       // tokens computed in this step (1 when decoding)
  std::vector<int32_t> seq_lens;          // prefix_lens + extend_lens
  std::vector<int32_t> output_lens;       // tokens generated so far (the sampling offset)
  std::vector<int32_t> extend_start;      // [num_reqs + 1] offsets of each request's tokens

  // ---- per token of the batch, [num_tokens] ----
  std::vector<int32_t> input_ids;
  std::vector<int32_t> positions;
  std::vector<int32_t> out_slots;  // KV slot that receives each token's K/V

  // ---- sampling, [num_samples] ----
  std::vector<int32_t> sample_rows;     // token row whose logits are sampled
  std::vector<int32_t> sample_indices;  // index into the per-request arrays

  // Penalty CSR over the sampled rows (see kernels::PenaltyArgs); empty when no request of the
  // batch tracks penalties. Unique tokens per row; counts are occurrences in the output.
  std::vector<int32_t> penalty_indptr;
  std::vector<int32_t> penalty_token_ids;
  std::vector<int32_t> penalty_counts;
  // Tokens to ban per sampled row (EOS / stop ids while below min_new_tokens); empty when none.
  std::vector<int32_t> ban_indptr;
  std::vector<int32_t> ban_token_ids;

  // Requests preempted by this schedule() call to free KV memory; they wait again.
  std::vector<RequestId> retracted;

  int32_t num_reqs() const { return static_cast<int32_t>(req_ids.size()); }
  int32_t num_tokens() const { return static_cast<int32_t>(input_ids.size()); }
  int32_t num_samples() const { return static_cast<int32_t>(sample_rows.size()); }
};

enum class FinishReason : int32_t {
  kNone = 0,
  kStopToken = 1,  // EOS or a stop_token_id: `matched` holds it
  kLength = 2,     // max_new_tokens or the context length
  kAbort = 3,
};

/// What commit() reports: one entry per request that got a token or finished in this step.
struct StepOutput {
  std::vector<RequestId> req_ids;
  std::vector<int32_t> tokens;          // the new token, -1 for an abort with no token
  std::vector<FinishReason> finish;     // kNone while the request keeps running
  std::vector<int32_t> matched;         // the stop token for kStopToken, else -1
};

}  // namespace sglang
