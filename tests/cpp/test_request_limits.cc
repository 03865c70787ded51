// RequestLimits: the core's request rules and their user-facing messages, and their use by the
// scheduler (add_request applies the same object that the serving layer uses at its edge).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sglang/common.h"
#include "sglang/request_limits.h"
#include "sglang/scheduler.h"

namespace sglang {
namespace {

RequestLimits limits() {
  RequestLimits l;
  l.context_length = 32;
  l.max_sequence_len = 24;  // a KV pool smaller than the context
  l.vocab_size = 100;
  return l;
}

std::string message_of(const auto& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RequestLimits, PromptRules) {
  const RequestLimits l = limits();
  l.check_prompt(std::vector<int32_t>{0, 99});
  EXPECT_EQ(message_of([&] { l.check_prompt({}); }),
            "The input is empty: at least one token is needed.");
  EXPECT_EQ(message_of([&] { l.check_prompt(std::vector<int32_t>(40, 1)); }),
            "The input (40 tokens) is longer than the model's context length (32 tokens).");
  EXPECT_EQ(message_of([&] { l.check_prompt(std::vector<int32_t>(25, 1)); }),
            "The input (25 tokens) does not fit the KV cache pool (24 tokens); start the server "
            "with a larger --max-total-tokens.");
  EXPECT_EQ(message_of([&] { l.check_prompt(std::vector<int32_t>{1, 100}); }),
            "Input token id 100 is out of the vocabulary range [0, 100).");
  EXPECT_EQ(message_of([&] { l.check_prompt(std::vector<int32_t>{-1}); }),
            "Input token id -1 is out of the vocabulary range [0, 100).");
}

TEST(RequestLimits, TokenIdLists) {
  const RequestLimits l = limits();
  l.check_token_ids("stop_token_ids: token id", std::vector<int64_t>{0, 5, 99});
  EXPECT_EQ(message_of([&] {
              l.check_token_ids("stop_token_ids: token id", std::vector<int64_t>{3, 2147483648});
            }),
            "stop_token_ids: token id 2147483648 is out of the vocabulary range [0, 100).");
  EXPECT_EQ(message_of([&] { l.check_token_ids("x", std::vector<int64_t>{-1}); }),
            "x -1 is out of the vocabulary range [0, 100).");
  RequestLimits open = l;
  open.vocab_size = 0;  // unknown vocabulary: nothing to check
  open.check_token_ids("x", std::vector<int64_t>{-5, 1000});
}

TEST(RequestLimits, GenerationBudget) {
  const RequestLimits l = limits();
  EXPECT_EQ(l.fit_max_new_tokens(10, 21, false), 21);
  EXPECT_EQ(l.fit_max_new_tokens(10, -1, false), -1);
  EXPECT_EQ(l.fit_max_new_tokens(10, 22, true), 21);
  EXPECT_EQ(message_of([&] { l.fit_max_new_tokens(10, 22, false); }),
            "Requested token count exceeds the model's maximum context length of 32 tokens. You "
            "requested a total of 32 tokens: 10 tokens from the input messages and 22 tokens for "
            "the completion. Please reduce the number of tokens in the input messages or the "
            "completion to fit within the limit.");
}

TEST(RequestLimits, SchedulerAppliesItsLimits) {
  SchedulerConfig c;
  c.max_total_tokens = 1024;
  c.context_length = 64;
  c.vocab_size = 50;
  Scheduler s(c);
  const RequestLimits l = s.limits();
  EXPECT_EQ(l.context_length, 64);
  EXPECT_EQ(l.max_sequence_len, s.max_sequence_len());
  EXPECT_EQ(l.vocab_size, 50);
  const std::vector<int32_t> bad{1, 50};
  EXPECT_EQ(message_of([&] { s.add_request(bad, {}); }), message_of([&] { l.check_prompt(bad); }));
  EXPECT_TRUE(s.idle());
}

}  // namespace
}  // namespace sglang
