// A fake model for scheduler tests: its "KV cache" stores (token, position) per slot, and its next
// token is a hash of the whole sequence *read back from the KV cache*. So a request produces the
// reference tokens only if every slot the scheduler hands out holds the right KV: prefix reuse,
// chunking, retraction and page sharing are all checked by the outputs themselves.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "sglang/scheduler.h"

namespace sglang::testing {

inline int32_t next_token_of(std::span<const int32_t> seq, int32_t vocab) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : seq) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
  h ^= h >> 33;
  return static_cast<int32_t>(h % static_cast<uint64_t>(vocab));
}

/// Tokens a request must produce regardless of scheduling (greedy fake model).
inline std::vector<int32_t> reference_output(std::vector<int32_t> seq, const RequestParams& p,
                                             const std::vector<int32_t>& eos, int32_t vocab,
                                             int32_t max_seq_len) {
  std::vector<int32_t> out;
  const int32_t prompt = static_cast<int32_t>(seq.size());
  int32_t max_new = p.max_new_tokens < 0 ? max_seq_len - prompt
                                         : std::min(p.max_new_tokens, max_seq_len - prompt);
  if (max_new == 0) return out;
  while (true) {
    int32_t t = next_token_of(seq, vocab);
    seq.push_back(t);
    out.push_back(t);
    const int32_t n = static_cast<int32_t>(out.size());
    if (n >= max_new) break;
    if (n < p.min_new_tokens) continue;
    bool stop = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) !=
                p.stop_token_ids.end();
    if (!p.ignore_eos) stop |= std::find(eos.begin(), eos.end(), t) != eos.end();
    if (stop) break;
  }
  return out;
}

class FakeModel {
 public:
  FakeModel(int64_t num_slots, int32_t vocab) : kv_(num_slots, -1), vocab_(vocab) {}

  /// Runs one plan: writes the KV of its tokens, then reads every sampled request's sequence back
  /// from its slots and returns the next token of each (greedy). Also checks the plan's shape.
  std::vector<int32_t> forward(const Scheduler& s, const BatchPlan& plan) {
    EXPECT_EQ(static_cast<int32_t>(plan.extend_start.size()), plan.num_reqs() + 1);
    for (int32_t i = 0; i < plan.num_tokens(); ++i) {
      const int32_t slot = plan.out_slots[i];
      EXPECT_GE(slot, s.config().page_size) << "a token was placed in the padding page";
      kv_[slot] = encode(plan.input_ids[i], plan.positions[i]);
    }
    std::vector<int32_t> next;
    for (int32_t k = 0; k < plan.num_samples(); ++k) {
      const int32_t r = plan.sample_indices[k];
      EXPECT_EQ(plan.sample_rows[k], plan.extend_start[r + 1] - 1);
      const int32_t* row = s.req_to_token() + static_cast<size_t>(plan.req_pool_indices[r]) * s.row_len();
      std::vector<int32_t> seq(plan.seq_lens[r]);
      for (int32_t pos = 0; pos < plan.seq_lens[r]; ++pos) {
        const int64_t v = kv_[row[pos]];
        EXPECT_EQ(v % kMaxPos, pos) << "slot " << row[pos] << " holds another position's KV";
        seq[pos] = static_cast<int32_t>(v / kMaxPos);
      }
      next.push_back(next_token_of(seq, vocab_));
    }
    return next;
  }

 private:
  static constexpr int64_t kMaxPos = 1 << 20;
  static int64_t encode(int32_t token, int32_t pos) { return token * kMaxPos + pos; }
  std::vector<int64_t> kv_;
  int32_t vocab_;
};

}  // namespace sglang::testing
