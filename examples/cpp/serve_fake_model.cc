// Embedding the sglang core in a C++ service: no Python, no torch.
//
// The service owns the driver loop (schedule -> forward -> sample -> commit) and a model; here the
// model is a toy whose next token is a hash of the sequence it reads back from its KV cache, and
// sampling is greedy through the core's CPU sampling kernel. Requests share a system prompt, so
// the radix cache serves the later ones from cache.
//
// Build: cmake -S . -B build -DSGLANG_BUILD_EXAMPLES=ON && cmake --build build --target serve_fake_model
#include <cstdio>
#include <map>
#include <vector>

#include "sglang/kernels/sampling.h"
#include "sglang/scheduler.h"

namespace {

constexpr int32_t kVocab = 256;
constexpr int32_t kEos = 0;

// Toy model: KV slot -> token; logits peak at hash(sequence) % vocab.
class ToyModel {
 public:
  explicit ToyModel(int64_t num_slots) : kv_(num_slots, -1) {}

  std::vector<float> forward(const sglang::Scheduler& s, const sglang::BatchPlan& plan) {
    for (int32_t i = 0; i < plan.num_tokens(); ++i) kv_[plan.out_slots[i]] = plan.input_ids[i];
    std::vector<float> logits(static_cast<size_t>(plan.num_samples()) * kVocab, 0.0f);
    for (int32_t k = 0; k < plan.num_samples(); ++k) {
      const int32_t r = plan.sample_indices[k];
      const int32_t* row = s.req_to_token() + static_cast<size_t>(plan.req_pool_indices[r]) * s.row_len();
      uint64_t h = 1469598103934665603ull;
      for (int32_t pos = 0; pos < plan.seq_lens[r]; ++pos) {
        h = (h ^ static_cast<uint32_t>(kv_[row[pos]])) * 1099511628211ull;
      }
      logits[static_cast<size_t>(k) * kVocab + (h >> 7) % kVocab] = 10.0f;
    }
    return logits;
  }

 private:
  std::vector<int32_t> kv_;
};

}  // namespace

int main() {
  sglang::SchedulerConfig config;
  config.max_total_tokens = 2048;
  config.context_length = 512;
  config.page_size = 4;
  config.vocab_size = kVocab;
  config.eos_token_ids = {kEos};
  sglang::Scheduler scheduler(config);
  ToyModel model(scheduler.allocator().num_slots());

  std::vector<int32_t> system_prompt;
  for (int32_t i = 0; i < 64; ++i) system_prompt.push_back(1 + (i * 37) % (kVocab - 1));
  std::map<sglang::RequestId, std::vector<int32_t>> outputs;
  auto submit = [&](int32_t user) {
    std::vector<int32_t> prompt = system_prompt;
    prompt.push_back(100 + user);
    sglang::RequestParams params;
    params.max_new_tokens = 16;
    outputs[scheduler.add_request(prompt, params)] = {};
  };
  submit(0);  // the first user's prefill puts the system prompt in the cache...

  int steps = 0;
  while (!scheduler.idle()) {
    if (steps == 1) {
      for (int32_t user = 1; user < 4; ++user) submit(user);  // ...the next ones reuse it
    }
    sglang::BatchPlan plan = scheduler.schedule();
    if (plan.mode == sglang::ForwardMode::kIdle) break;
    std::vector<float> logits = model.forward(scheduler, plan);
    const int32_t n = plan.num_samples();
    std::vector<float> temperature(n, 0.0f), top_p(n, 1.0f), min_p(n, 0.0f);
    std::vector<int32_t> top_k(n, -1), next(n);
    std::vector<uint64_t> seeds(n, 42), offsets(plan.output_lens.begin(), plan.output_lens.end());
    // output_lens is per request; map to sampled rows.
    for (int32_t k = 0; k < n; ++k) offsets[k] = plan.output_lens[plan.sample_indices[k]];
    sglang::kernels::LogitsView view{logits.data(), sglang::kernels::DType::kFloat32, n, kVocab,
                                     kVocab};
    sglang::kernels::SamplingArgs args{temperature.data(), top_k.data(), top_p.data(),
                                       min_p.data(), seeds.data(), offsets.data()};
    if (sglang::kernels::sample_cpu(view, args, next.data(), 1) != sglang::kernels::Status::kOk) {
      std::fprintf(stderr, "sampling failed\n");
      return 1;
    }
    sglang::StepOutput out = scheduler.commit(next);
    for (size_t i = 0; i < out.req_ids.size(); ++i) {
      if (out.tokens[i] >= 0) outputs[out.req_ids[i]].push_back(out.tokens[i]);
    }
    scheduler.check_integrity();
    ++steps;
  }
  for (const auto& [id, tokens] : outputs) {
    std::printf("request %lld: %zu tokens:", static_cast<long long>(id), tokens.size());
    for (int32_t t : tokens) std::printf(" %d", t);
    std::printf("\n");
  }
  const sglang::SchedulerStats stats = scheduler.stats();
  std::printf("steps %d, cache hit tokens %lld, miss tokens %lld, free tokens %lld\n", steps,
              static_cast<long long>(stats.cache_hit_tokens),
              static_cast<long long>(stats.cache_miss_tokens),
              static_cast<long long>(stats.num_free_tokens + stats.num_evictable_tokens));
  if (stats.cache_hit_tokens == 0 || !scheduler.idle()) {
    std::fprintf(stderr, "expected prefix cache hits and an idle scheduler\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
