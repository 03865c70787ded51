// The request rules of the core, each in one place: what a prompt, a list of token ids and a
// generation budget may be.
//
// The scheduler applies them in add_request (the core checks what it is given, whoever embeds
// it); a serving layer builds the same object from the engine's numbers and applies it at its edge,
// before a request crosses to the engine, so every rule and its user-facing message exist once.
// All checks throw sglang::Error with a message meant for the user (SGL_REJECT). Stateless.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace sglang {

struct RequestLimits {
  int32_t context_length = 4096;    // the model's context window
  int32_t max_sequence_len = 4096;  // min(context_length, KV pool tokens)
  int32_t vocab_size = 0;           // > 0: token ids are checked against it

  /// Throws for an empty prompt, one that does not fit the context or the KV pool, or a token id
  /// outside the vocabulary.
  void check_prompt(std::span<const int32_t> input_ids) const;

  /// Throws when an id is outside [0, vocab_size): "<label> <id> is out of the vocabulary range
  /// [0, V)." (label e.g. "stop_token_ids: token id"). No-op when vocab_size <= 0.
  void check_token_ids(std::string_view label, std::span<const int64_t> ids) const;

  /// The generation budget of a prompt of `prompt_len` tokens asking for `max_new_tokens`
  /// (< 0: as many as fit). A prompt plus budget reaching the context length is refused with the
  /// OpenAI-style message, or cut to fit with `auto_truncate`. Returns the budget to use (< 0
  /// unchanged). The scheduler further clamps it to the KV pool.
  int64_t fit_max_new_tokens(int64_t prompt_len, int64_t max_new_tokens, bool auto_truncate) const;
};

}  // namespace sglang
