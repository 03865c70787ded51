// Scheduler: scenarios with the fake model, and randomized runs checked against reference outputs
// with check_integrity() after every schedule() and commit().
#include <gtest/gtest.h>

#include <map>
#include <cstdio>
#include <random>
#include <set>

#include "fake_model.h"
#include "sglang/common.h"
#include "sglang/scheduler.h"

namespace sglang {
namespace {

using testing::FakeModel;
using testing::reference_output;
using Tokens = std::vector<int32_t>;

constexpr int32_t kVocab = 64;

struct Driver {
  explicit Driver(SchedulerConfig cfg)
      : sched(cfg), model(sched.allocator().num_slots(), kVocab), eos(cfg.eos_token_ids) {}

  RequestId add(const Tokens& prompt, RequestParams p = {}) {
    RequestId id = sched.add_request(prompt, p);
    prompts[id] = prompt;
    params[id] = p;
    return id;
  }

  // One schedule/forward/commit step; returns the plan's mode. With `overlap`, the step ends
  // with commit_pending() and its tokens are resolved during the next step, after that step's
  // plan is made and "launched" with the placeholders replaced (as a device would).
  ForwardMode step() {
    BatchPlan plan = sched.schedule();
    sched.check_integrity();
    for (RequestId id : plan.retracted) ++retracted[id];
    if (plan.mode == ForwardMode::kIdle) {
      if (sched.has_pending()) record(sched.resolve(pending_tokens));
      sched.check_integrity();
      return plan.mode;
    }
    modes.push_back(plan.mode);
    if (plan.mode == ForwardMode::kExtend) {
      for (int32_t i = 0; i < plan.num_reqs(); ++i) {
        max_extend = std::max(max_extend, plan.extend_lens[i]);
        if (plan.prefix_lens[i] > 0 && sched.find(plan.req_ids[i])->output_len() == 0) {
          prefix_hits[plan.req_ids[i]] = std::max(prefix_hits[plan.req_ids[i]], plan.prefix_lens[i]);
        }
      }
    }
    for (int32_t& id : plan.input_ids) {
      if (id >= 0) continue;
      EXPECT_TRUE(sched.has_pending()) << "a placeholder without a pending step";
      id = pending_tokens.at(static_cast<size_t>(-id - 1));
      ++placeholders;
    }
    std::vector<int32_t> next = model.forward(sched, plan);
    if (sched.has_pending()) {
      record(sched.resolve(pending_tokens));
      sched.check_integrity();
    }
    if (abort_between_forward_and_commit >= 0) {
      EXPECT_NE(sched.abort(abort_between_forward_and_commit), AbortResult::kNotFound);
      abort_between_forward_and_commit = -1;
    }
    if (overlap) {
      record(sched.commit_pending());
      pending_tokens = next;
    } else {
      record(sched.commit(next));
    }
    sched.check_integrity();
    return plan.mode;
  }

  void record(const StepOutput& out) {
    for (size_t i = 0; i < out.req_ids.size(); ++i) {
      RequestId id = out.req_ids[i];
      EXPECT_FALSE(finished.count(id)) << "request " << id << " reported after it finished";
      if (out.tokens[i] >= 0) outputs[id].push_back(out.tokens[i]);
      if (out.finish[i] != FinishReason::kNone) finished[id] = out.finish[i];
    }
  }

  void run(int max_steps = 100000) {
    for (int i = 0; i < max_steps && !sched.idle(); ++i) step();
    ASSERT_TRUE(sched.idle()) << "requests left after " << max_steps << " steps";
    sched.check_integrity();
  }

  Tokens expected(RequestId id) const {
    return reference_output(prompts.at(id), params.at(id), eos, kVocab, sched.max_sequence_len());
  }

  Scheduler sched;
  FakeModel model;
  Tokens eos;
  std::map<RequestId, Tokens> prompts;
  std::map<RequestId, RequestParams> params;
  std::map<RequestId, Tokens> outputs;
  std::map<RequestId, FinishReason> finished;
  std::map<RequestId, int> retracted;
  std::map<RequestId, int32_t> prefix_hits;
  std::vector<ForwardMode> modes;
  int32_t max_extend = 0;
  RequestId abort_between_forward_and_commit = -1;
  bool overlap = false;
  std::vector<int32_t> pending_tokens;
  int64_t placeholders = 0;
};

Tokens iota_tokens(int32_t n, int32_t start = 1) {
  Tokens t(n);
  for (int32_t i = 0; i < n; ++i) t[i] = (start + i * 7) % kVocab;
  return t;
}

SchedulerConfig small_config() {
  SchedulerConfig c;
  c.max_total_tokens = 4096;
  c.context_length = 1024;
  c.vocab_size = kVocab;
  c.eos_token_ids = {0};
  return c;
}

TEST(Scheduler, SingleRequestMatchesReference) {
  Driver d(small_config());
  RequestParams p;
  p.max_new_tokens = 20;
  RequestId id = d.add(iota_tokens(10), p);
  d.run();
  EXPECT_EQ(d.outputs[id], d.expected(id));
  EXPECT_EQ(d.modes.front(), ForwardMode::kExtend);
}

TEST(Scheduler, ChunkedPrefillOfLongPrompt) {
  SchedulerConfig c = small_config();
  c.chunked_prefill_size = 16;
  Driver d(c);
  RequestParams p;
  p.max_new_tokens = 8;
  p.ignore_eos = true;
  RequestId id = d.add(iota_tokens(100), p);
  d.run();
  EXPECT_EQ(d.outputs[id], d.expected(id));
  EXPECT_EQ(d.max_extend, 16);
  int extends = 0;
  for (ForwardMode m : d.modes) extends += m == ForwardMode::kExtend;
  EXPECT_EQ(extends, 7);  // ceil(100 / 16)
  EXPECT_EQ(d.finished[id], FinishReason::kLength);
}

TEST(Scheduler, PrefixReuseAcrossRequests) {
  for (int32_t page_size : {1, 16}) {
    SchedulerConfig c = small_config();
    c.page_size = page_size;
    Driver d(c);
    RequestParams p;
    p.max_new_tokens = 5;
    p.ignore_eos = true;
    Tokens system = iota_tokens(64, 3);
    Tokens a = system, b = system;
    a.push_back(5);
    b.push_back(9);
    RequestId ia = d.add(a, p);
    d.run();
    RequestId ib = d.add(b, p);
    d.run();
    EXPECT_EQ(d.outputs[ia], d.expected(ia));
    EXPECT_EQ(d.outputs[ib], d.expected(ib));
    EXPECT_EQ(d.prefix_hits[ib], 64) << "page_size " << page_size;
    EXPECT_EQ(d.sched.stats().cache_hit_tokens, 64);
  }
}

TEST(Scheduler, ConcurrentRequestsShareAPrefillRound) {
  SchedulerConfig c = small_config();
  Driver d(c);
  RequestParams p;
  p.max_new_tokens = 30;
  p.ignore_eos = true;
  Tokens system = iota_tokens(40, 2);
  std::vector<RequestId> ids;
  for (int i = 0; i < 6; ++i) {
    Tokens t = system;
    t.push_back(10 + i);
    ids.push_back(d.add(t, p));
  }
  d.step();  // all six prefill together (no hits yet)
  for (int i = 0; i < 6; ++i) {
    Tokens t = system;
    t.push_back(20 + i);
    ids.push_back(d.add(t, p));
  }
  d.run();
  for (RequestId id : ids) EXPECT_EQ(d.outputs[id], d.expected(id));
  for (int i = 6; i < 12; ++i) EXPECT_EQ(d.prefix_hits[ids[i]], 40);
}

TEST(Scheduler, RetractionWhenPoolTooSmallKeepsOutputs) {
  SchedulerConfig c = small_config();
  c.max_total_tokens = 160;
  c.context_length = 160;
  c.page_size = 4;
  c.init_new_token_ratio = 0.0;  // admit greedily so decoding must retract
  c.min_new_token_ratio = 0.0;
  Driver d(c);
  RequestParams p;
  p.max_new_tokens = 60;
  p.ignore_eos = true;
  std::vector<RequestId> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(d.add(iota_tokens(12, 5 + i), p));
  d.run();
  int retractions = 0;
  for (auto& [id, n] : d.retracted) retractions += n;
  EXPECT_GT(retractions, 0);
  EXPECT_EQ(d.sched.stats().num_retractions, retractions);
  for (RequestId id : ids) {
    EXPECT_EQ(d.outputs[id], d.expected(id)) << "request " << id;
    EXPECT_EQ(d.finished[id], FinishReason::kLength);
  }
}

TEST(Scheduler, AbortWaitingPrefillingAndRunning) {
  SchedulerConfig c = small_config();
  c.chunked_prefill_size = 8;
  c.max_running_requests = 2;
  Driver d(c);
  RequestParams p;
  p.max_new_tokens = 50;
  p.ignore_eos = true;
  RequestId running = d.add(iota_tokens(5), p);
  d.step();  // prefill of `running`
  RequestId prefilling = d.add(iota_tokens(40, 9), p);
  RequestId waiting = d.add(iota_tokens(6, 11), p);
  d.step();  // first chunk of `prefilling`; `waiting` cannot run (max 2)
  ASSERT_NE(d.sched.find(prefilling), nullptr);
  EXPECT_EQ(d.sched.find(prefilling)->state, RequestState::kRunning);
  EXPECT_EQ(d.sched.abort(waiting), AbortResult::kDone);
  EXPECT_EQ(d.sched.abort(prefilling), AbortResult::kDone);
  d.sched.check_integrity();
  d.step();
  EXPECT_EQ(d.sched.abort(running), AbortResult::kDone);
  EXPECT_EQ(d.sched.abort(running), AbortResult::kNotFound);
  EXPECT_TRUE(d.sched.idle());
  d.sched.check_integrity();
  EXPECT_EQ(d.sched.stats().num_used_tokens, 0);
}

TEST(Scheduler, AbortInFlightIsReportedByCommit) {
  Driver d(small_config());
  RequestParams p;
  p.max_new_tokens = 50;
  p.ignore_eos = true;
  RequestId id = d.add(iota_tokens(5), p);
  d.step();
  d.abort_between_forward_and_commit = id;
  d.step();
  EXPECT_EQ(d.finished[id], FinishReason::kAbort);
  EXPECT_TRUE(d.sched.idle());
  d.sched.check_integrity();
}

TEST(Scheduler, RejectsBadRequests) {
  SchedulerConfig c = small_config();
  c.context_length = 32;
  Scheduler s(c);
  try {
    s.add_request(iota_tokens(40), {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "The input (40 tokens) is longer than the model's context length (32 tokens).");
  }
  EXPECT_THROW(s.add_request(Tokens{}, {}), Error);
  EXPECT_THROW(s.add_request(Tokens{1, kVocab}, {}), Error);
  EXPECT_THROW(s.add_request(Tokens{-1}, {}), Error);
  EXPECT_TRUE(s.idle());
  SchedulerConfig bad = small_config();
  bad.schedule_policy = "random";
  EXPECT_THROW(Scheduler{bad}, Error);
}

// A step whose forward fails: cancel_plan() drops the plan's requests and never caches the KV
// the step would have written (the fake model did not write it: reusing it would give wrong
// tokens), while prefix pages cached by earlier, complete steps stay usable.
TEST(Scheduler, CancelPlanDropsRequestsAndUncomputedKv) {
  SchedulerConfig c = small_config();
  c.page_size = 4;
  c.chunked_prefill_size = 16;
  Driver d(c);
  const Tokens prompt = iota_tokens(40);
  RequestParams p;
  p.max_new_tokens = 6;
  RequestId a = d.add(prompt, p);
  d.step();  // first chunk computed: its pages go to the tree
  BatchPlan failed = d.sched.schedule();
  ASSERT_EQ(failed.mode, ForwardMode::kExtend);
  std::vector<RequestId> dropped = d.sched.cancel_plan();  // no forward: the KV is garbage
  EXPECT_EQ(dropped, std::vector<RequestId>{a});
  EXPECT_TRUE(d.sched.idle());
  d.sched.check_integrity();
  EXPECT_EQ(d.sched.stats().num_used_tokens, 0);
  EXPECT_THROW(d.sched.commit(std::vector<int32_t>{}), Error);  // the plan is gone

  RequestId again = d.add(prompt, p);
  d.step();
  EXPECT_EQ(d.sched.find(again)->cached_tokens, 16);  // the complete first chunk; nothing more
  d.run();
  EXPECT_EQ(d.outputs[again], d.expected(again));

  // A failed decode step, with an abort pending on one of its requests.
  RequestId x = d.add(iota_tokens(12, 3), p);
  RequestId y = d.add(iota_tokens(9, 5), p);
  while (d.modes.size() < 6 || d.sched.find(x)->output_len() < 2) d.step();
  BatchPlan decode = d.sched.schedule();
  ASSERT_EQ(decode.mode, ForwardMode::kDecode);
  EXPECT_EQ(d.sched.abort(y), AbortResult::kDeferred);
  dropped = d.sched.cancel_plan();
  EXPECT_EQ(std::set<RequestId>(dropped.begin(), dropped.end()), (std::set<RequestId>{x, y}));
  EXPECT_TRUE(d.sched.idle());
  d.sched.check_integrity();
  RequestId x2 = d.add(iota_tokens(12, 3), p);
  d.run();
  EXPECT_EQ(d.outputs[x2], d.expected(x2));
}

TEST(Scheduler, StopConditions) {
  Driver d(small_config());
  Tokens prompt = iota_tokens(7);
  // The first reference token (ignoring stops) becomes a stop token.
  RequestParams free_run;
  free_run.max_new_tokens = 10;
  free_run.ignore_eos = true;
  Tokens ref = reference_output(prompt, free_run, {}, kVocab, 1024);
  RequestParams stop;
  stop.max_new_tokens = 10;
  stop.stop_token_ids = {ref[2]};
  stop.ignore_eos = true;
  RequestId a = d.add(prompt, stop);
  RequestParams min_new = stop;
  min_new.min_new_tokens = 5;
  RequestId b = d.add(prompt, min_new);
  RequestParams zero;
  zero.max_new_tokens = 0;
  RequestId z = d.add(prompt, zero);
  d.run();
  const size_t first_stop = std::find(ref.begin(), ref.end(), ref[2]) - ref.begin();
  EXPECT_EQ(d.outputs[a].size(), first_stop + 1);
  EXPECT_EQ(d.finished[a], FinishReason::kStopToken);
  EXPECT_GE(d.outputs[b].size(), 5u);
  EXPECT_EQ(d.outputs[b], d.expected(b));
  EXPECT_TRUE(d.outputs[z].empty());
  EXPECT_EQ(d.finished[z], FinishReason::kLength);
}

TEST(Scheduler, PenaltyAndBanArraysInPlan) {
  Scheduler s(small_config());
  RequestParams p;
  p.penalty_scope = PenaltyScope::kPromptAndOutput;
  p.min_new_tokens = 2;
  p.stop_token_ids = {7};
  RequestId id = s.add_request(Tokens{3, 3, 4}, p);
  BatchPlan plan = s.schedule();
  ASSERT_EQ(plan.num_samples(), 1);
  EXPECT_EQ(plan.penalty_indptr, (Tokens{0, 2}));
  EXPECT_EQ(plan.penalty_token_ids, (Tokens{3, 4}));
  EXPECT_EQ(plan.penalty_counts, (Tokens{0, 0}));
  EXPECT_EQ(plan.ban_indptr, (Tokens{0, 2}));
  EXPECT_EQ(plan.ban_token_ids, (Tokens{0, 7}));
  s.commit(Tokens{4});
  plan = s.schedule();
  EXPECT_EQ(plan.penalty_counts, (Tokens{0, 1}));
  s.commit(Tokens{9});
  plan = s.schedule();
  EXPECT_EQ(plan.penalty_token_ids, (Tokens{3, 4, 9}));
  EXPECT_EQ(plan.penalty_counts, (Tokens{0, 1, 1}));
  EXPECT_TRUE(plan.ban_indptr.empty());  // min_new_tokens reached
  s.commit(Tokens{1});
  EXPECT_EQ(s.abort(id), AbortResult::kDone);
  s.check_integrity();
}

TEST(Scheduler, MaxCachedPrefixLimitsReuse) {
  Driver d(small_config());
  RequestParams p;
  p.max_new_tokens = 2;
  Tokens prompt = iota_tokens(30);
  d.add(prompt, p);
  d.run();
  RequestParams limited = p;
  limited.max_cached_prefix = 10;
  RequestId id = d.add(prompt, limited);
  d.run();
  EXPECT_EQ(d.prefix_hits[id], 10);
  EXPECT_EQ(d.outputs[id], d.expected(id));
}

TEST(Scheduler, LoraAdapterLimitPerBatch) {
  // Requests of 5 adapters (and the base model) with 2 adapter slots: every plan holds at most 2
  // adapters, a request of a third adapter is passed over (not blocking those behind it), and
  // every request completes with its reference output.
  SchedulerConfig c = small_config();
  c.max_loras_per_batch = 2;
  Driver d(c);
  std::vector<RequestId> ids;
  for (int i = 0; i < 15; ++i) {
    RequestParams p;
    p.max_new_tokens = 6 + i % 4;
    p.ignore_eos = true;
    p.lora_id = i % 3 == 2 ? -1 : (i / 3) % 5;
    ids.push_back(d.add(iota_tokens(8 + i, i + 1), p));
  }
  std::set<int32_t> seen_in_first_plan;
  for (int step = 0; step < 1000 && !d.sched.idle(); ++step) {
    BatchPlan plan = d.sched.schedule();
    d.sched.check_integrity();
    if (plan.mode == ForwardMode::kIdle) break;
    std::set<int32_t> adapters;
    for (RequestId id : plan.req_ids) {
      const int32_t lora = d.sched.find(id)->params.lora_id;
      if (lora >= 0) adapters.insert(lora);
      if (step == 0) seen_in_first_plan.insert(lora);
    }
    EXPECT_LE(adapters.size(), 2u) << "step " << step;
    StepOutput out = d.sched.commit(d.model.forward(d.sched, plan));
    for (size_t i = 0; i < out.req_ids.size(); ++i) {
      if (out.tokens[i] >= 0) d.outputs[out.req_ids[i]].push_back(out.tokens[i]);
    }
  }
  ASSERT_TRUE(d.sched.idle());
  d.sched.check_integrity();
  // The first prefill took adapters 0 and 1 and the base requests, skipping those of 2..4.
  EXPECT_EQ(seen_in_first_plan, (std::set<int32_t>{-1, 0, 1}));
  for (RequestId id : ids) EXPECT_EQ(d.outputs[id], d.expected(id));
}

TEST(Scheduler, FlushCacheOnlyWhenIdle) {
  Driver d(small_config());
  RequestParams p;
  p.max_new_tokens = 3;
  d.add(iota_tokens(20), p);
  EXPECT_FALSE(d.sched.flush_cache());
  d.run();
  EXPECT_GT(d.sched.cache().cached_tokens(), 0);
  EXPECT_TRUE(d.sched.flush_cache());
  EXPECT_EQ(d.sched.cache().cached_tokens(), 0);
  EXPECT_EQ(d.sched.stats().num_free_tokens, 4096);
}

// ---- randomized -------------------------------------------------------------------------------

struct RandomCase {
  int32_t page_size;
  int32_t pool;
  int32_t chunk;
  const char* policy;
  bool disable_cache;
  uint32_t seed;
  bool expect_retractions = false;
  bool overlap = false;
};

void run_random(const RandomCase& rc) {
  std::mt19937 rng(rc.seed);
  SchedulerConfig c;
  c.page_size = rc.page_size;
  c.max_total_tokens = rc.pool;
  c.context_length = 256;
  c.chunked_prefill_size = rc.chunk;
  c.max_prefill_tokens = 96;
  c.max_running_requests = 12;
  c.vocab_size = kVocab;
  c.eos_token_ids = {0};
  c.schedule_policy = rc.policy;
  c.disable_radix_cache = rc.disable_cache;
  c.init_new_token_ratio = 0.3;
  Driver d(c);
  d.overlap = rc.overlap;
  std::vector<Tokens> bases;
  for (int i = 0; i < 3; ++i) bases.push_back(iota_tokens(20 + 17 * i, 1 + i));
  std::vector<RequestId> live;
  std::set<RequestId> aborted;
  int added = 0;
  for (int step = 0; step < 20000 && (added < 150 || !d.sched.idle()); ++step) {
    if (added < 150 && rng() % 3 == 0) {
      Tokens t = bases[rng() % bases.size()];
      t.resize(rng() % (t.size() + 1));
      const int extra = 1 + rng() % 30;
      for (int j = 0; j < extra; ++j) t.push_back(1 + rng() % (kVocab - 1));
      RequestParams p;
      p.max_new_tokens = rng() % 5 == 0 ? -1 : static_cast<int32_t>(rng() % 40);
      p.min_new_tokens = rng() % 4 == 0 ? static_cast<int32_t>(rng() % 5) : 0;
      p.ignore_eos = rng() % 2;
      if (rng() % 3 == 0) p.stop_token_ids = {static_cast<int32_t>(rng() % kVocab)};
      p.penalty_scope = static_cast<PenaltyScope>(rng() % 3);
      live.push_back(d.add(t, p));
      ++added;
    }
    if (!live.empty() && rng() % 40 == 0) {
      RequestId victim = live[rng() % live.size()];
      if (d.sched.abort(victim) != AbortResult::kNotFound) aborted.insert(victim);
    }
    d.step();
  }
  ASSERT_TRUE(d.sched.idle());
  d.sched.check_integrity();
  for (RequestId id : live) {
    if (aborted.count(id)) continue;
    ASSERT_TRUE(d.finished.count(id)) << "request " << id << " never finished";
    ASSERT_EQ(d.outputs[id], d.expected(id)) << "request " << id;
  }
  const auto s = d.sched.stats();
  std::printf("[ stats    ] %s ps=%d pool=%d: %d finished, %d aborted, %lld hit tokens, "
              "%lld retractions, %zu steps\n",
              rc.policy, rc.page_size, rc.pool, static_cast<int>(d.finished.size()),
              static_cast<int>(aborted.size()), static_cast<long long>(s.cache_hit_tokens),
              static_cast<long long>(s.num_retractions), d.modes.size());
  if (!rc.disable_cache) EXPECT_GT(s.cache_hit_tokens, 0);
  if (rc.expect_retractions) EXPECT_GT(s.num_retractions, 0);
  EXPECT_EQ(s.num_used_tokens, 0);
  EXPECT_EQ(s.num_protected_tokens, 0);
  if (rc.overlap) EXPECT_GT(d.placeholders, 0);
}

TEST(Scheduler, RandomizedFcfs) { run_random({1, 512, 32, "fcfs", false, 1}); }
TEST(Scheduler, RandomizedLpmPaged) { run_random({4, 512, 24, "lpm", false, 2}); }
TEST(Scheduler, RandomizedDfsWeightPage16) { run_random({16, 1024, 48, "dfs-weight", false, 3}); }
TEST(Scheduler, RandomizedTinyPoolRetracts) { run_random({1, 300, 16, "fcfs", false, 4, true}); }
TEST(Scheduler, RandomizedTinyPoolPaged) { run_random({4, 320, 0, "lpm", false, 5, true}); }
TEST(Scheduler, RandomizedNoRadixCache) { run_random({2, 400, 32, "fcfs", true, 6}); }

// ---- overlap scheduling (commit_pending / resolve) ---------------------------------------------

TEST(Scheduler, RandomizedOverlapFcfs) { run_random({1, 512, 32, "fcfs", false, 7, false, true}); }
TEST(Scheduler, RandomizedOverlapLpmPaged) { run_random({4, 512, 24, "lpm", false, 8, false, true}); }
TEST(Scheduler, RandomizedOverlapTinyPool) {
  run_random({1, 300, 16, "fcfs", false, 9, true, true});
}
TEST(Scheduler, RandomizedOverlapTinyPoolPaged) {
  run_random({4, 320, 0, "dfs-weight", false, 10, true, true});
}

TEST(Scheduler, OverlapPlansWithPlaceholdersAndDropsFinishedLate) {
  Driver d(small_config());
  RequestParams p;
  p.max_new_tokens = 50;
  const RequestId a = d.add(iota_tokens(9), p);
  Tokens want = d.expected(a);
  // Stop at the 3rd generated token: it is known only after the 4th step was planned.
  p.stop_token_ids = {want[2]};
  const RequestId b = d.add(iota_tokens(9), p);
  d.sched.abort(a);
  ASSERT_EQ(d.sched.stats().num_waiting, 1);
  d.overlap = true;
  d.step();  // prefill b; its first token is pending
  BatchPlan plan = d.sched.schedule();
  ASSERT_EQ(plan.mode, ForwardMode::kDecode);
  EXPECT_EQ(plan.input_ids, Tokens{pending_token(0)});
  EXPECT_EQ(d.sched.abort(b), AbortResult::kDeferred);  // pending and planned: deferred
  StepOutput out = d.sched.resolve(Tokens{want[0]});
  EXPECT_TRUE(out.req_ids.empty()) << "an aborted request's token is not reported";
  out = d.sched.commit_pending();
  ASSERT_EQ(out.req_ids, std::vector<RequestId>{b});
  EXPECT_EQ(out.finish[0], FinishReason::kAbort);
  EXPECT_TRUE(d.sched.has_pending());
  EXPECT_TRUE(d.sched.resolve(Tokens{want[1]}).req_ids.empty());
  EXPECT_TRUE(d.sched.idle());
  d.sched.check_integrity();

  // Finished by a stop token while planned again: reported once, the extra step dropped.
  const RequestId c = d.add(iota_tokens(9), p);
  d.modes.clear();
  d.run();
  const Tokens want_c = d.expected(c);
  ASSERT_LE(want_c.size(), 3u);
  EXPECT_EQ(d.outputs[c], want_c);
  EXPECT_EQ(d.finished[c], FinishReason::kStopToken);
  EXPECT_EQ(d.modes.size(), want_c.size() + 1) << "the step planned before the stop was known";
  EXPECT_EQ(d.sched.stats().num_free_tokens + d.sched.cache().cached_tokens(), 4096);
}

TEST(Scheduler, OverlapLengthFinishIsNotPlannedAgain) {
  Driver d(small_config());
  d.overlap = true;
  RequestParams p;
  p.max_new_tokens = 3;
  p.ignore_eos = true;
  const RequestId a = d.add(iota_tokens(5), p);
  p.max_new_tokens = 0;  // prefill only
  const RequestId b = d.add(iota_tokens(6, 3), p);
  d.run();
  EXPECT_EQ(d.outputs[a], d.expected(a));
  EXPECT_EQ(d.finished[a], FinishReason::kLength);
  EXPECT_EQ(d.finished[b], FinishReason::kLength);
  EXPECT_TRUE(d.outputs[b].empty());
  // prefill (token 1), decode (token 2), decode (token 3): no step past max_new_tokens.
  EXPECT_EQ(d.modes.size(), 3u);
}

TEST(Scheduler, OverlapCancelPlanWithPendingTokens) {
  Driver d(small_config());
  d.overlap = true;
  RequestParams p;
  p.max_new_tokens = 20;
  p.ignore_eos = true;
  const RequestId a = d.add(iota_tokens(7), p);
  d.step();
  d.step();  // a's second token pending
  BatchPlan plan = d.sched.schedule();
  ASSERT_EQ(plan.mode, ForwardMode::kDecode);
  const RequestId b = d.add(iota_tokens(8, 5), p);  // waits: not in the failed plan
  EXPECT_EQ(d.sched.cancel_plan(), std::vector<RequestId>{a});
  EXPECT_TRUE(d.sched.resolve(d.pending_tokens).req_ids.empty()) << "a was removed";
  d.sched.check_integrity();
  d.run();
  EXPECT_EQ(d.outputs[b], d.expected(b));
  EXPECT_EQ(d.sched.stats().num_used_tokens, 0);
}

TEST(Scheduler, OverlapMisuseIsRefused) {
  Driver d(small_config());
  EXPECT_THROW(d.sched.resolve(Tokens{}), Error);
  d.add(iota_tokens(4));
  BatchPlan plan = d.sched.schedule();
  d.sched.commit_pending();
  plan = d.sched.schedule();
  EXPECT_THROW(d.sched.commit_pending(), Error) << "the pending step must be resolved first";
  EXPECT_THROW(d.sched.resolve(Tokens{1, 2}), Error) << "one token per sampled row";
}

}  // namespace
}  // namespace sglang
