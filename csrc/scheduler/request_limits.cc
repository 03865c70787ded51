#include "sglang/request_limits.h"

#include "sglang/common.h"

namespace sglang {

void RequestLimits::check_prompt(std::span<const int32_t> input_ids) const {
  const int64_t len = static_cast<int64_t>(input_ids.size());
  if (len == 0) SGL_REJECT() << "The input is empty: at least one token is needed.";
  if (len >= context_length) {
    SGL_REJECT() << "The input (" << len << " tokens) is longer than the model's context length ("
                 << context_length << " tokens).";
  }
  if (len >= max_sequence_len) {
    SGL_REJECT() << "The input (" << len << " tokens) does not fit the KV cache pool ("
                 << max_sequence_len
                 << " tokens); start the server with a larger --max-total-tokens.";
  }
  if (vocab_size <= 0) return;
  for (int32_t t : input_ids) {
    if (t < 0 || t >= vocab_size) {
      SGL_REJECT() << "Input token id " << t << " is out of the vocabulary range [0, "
                   << vocab_size << ").";
    }
  }
}

void RequestLimits::check_token_ids(std::string_view label, std::span<const int64_t> ids) const {
  if (vocab_size <= 0) return;
  for (int64_t t : ids) {
    if (t < 0 || t >= vocab_size) {
      SGL_REJECT() << label << " " << t << " is out of the vocabulary range [0, " << vocab_size
                   << ").";
    }
  }
}

int64_t RequestLimits::fit_max_new_tokens(int64_t prompt_len, int64_t max_new_tokens,
                                          bool auto_truncate) const {
  if (max_new_tokens < 0 || prompt_len + max_new_tokens < context_length) return max_new_tokens;
  if (auto_truncate) return context_length - prompt_len - 1;
  SGL_REJECT() << "Requested token count exceeds the model's maximum context length of "
               << context_length << " tokens. You requested a total of "
               << prompt_len + max_new_tokens << " tokens: " << prompt_len
               << " tokens from the input messages and " << max_new_tokens
               << " tokens for the completion. Please reduce the number of tokens in the input "
                  "messages or the completion to fit within the limit.";
}

}  // namespace sglang
