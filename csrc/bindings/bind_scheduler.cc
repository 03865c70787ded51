// Python bindings of the scheduler, radix cache and page allocator.
//
// Requests and radix nodes cross as integer handles; token ids as numpy int32 (read in place);
// plan arrays as numpy views that keep their plan alive. Long calls release the GIL.
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings.h"
#include "sglang/common.h"
#include "sglang/scheduler.h"

namespace sglang::bindings {

namespace {

using PlanPtr = std::shared_ptr<BatchPlan>;

template <typename T>
py::array_t<T> plan_array(const PlanPtr& plan, std::vector<T> BatchPlan::*member) {
  // The capsule holds a reference to the plan, so the view outlives the Python plan object.
  auto* keep = new PlanPtr(plan);
  py::capsule owner(keep, [](void* p) { delete static_cast<PlanPtr*>(p); });
  return view_of((*plan).*member, owner);
}

RequestParams make_params(int32_t max_new_tokens, int32_t min_new_tokens, bool ignore_eos,
                          std::vector<int32_t> stop_token_ids, int32_t penalty_scope,
                          std::string cache_namespace, int32_t max_cached_prefix,
                          int32_t lora_id) {
  if (penalty_scope < 0 || penalty_scope > 2) throw py::value_error("penalty_scope must be 0, 1 or 2");
  RequestParams p;
  p.max_new_tokens = max_new_tokens;
  p.min_new_tokens = min_new_tokens;
  p.ignore_eos = ignore_eos;
  p.stop_token_ids = std::move(stop_token_ids);
  p.penalty_scope = static_cast<PenaltyScope>(penalty_scope);
  p.cache_namespace = std::move(cache_namespace);
  p.max_cached_prefix = max_cached_prefix;
  p.lora_id = lora_id;
  return p;
}

py::tuple step_output_tuple(StepOutput out) {
  std::vector<int32_t> reasons(out.finish.size());
  for (size_t i = 0; i < reasons.size(); ++i) reasons[i] = static_cast<int32_t>(out.finish[i]);
  return py::make_tuple(to_numpy(std::move(out.req_ids)), to_numpy(std::move(out.tokens)),
                        to_numpy(std::move(reasons)), to_numpy(std::move(out.matched)));
}

// Runs a commit-like call without the GIL and converts its StepOutput.
template <typename F>
py::tuple step_without_gil(F&& call) {
  StepOutput out;
  {
    py::gil_scoped_release release;
    out = call();
  }
  return step_output_tuple(std::move(out));
}

void bind_config(py::module_& m) {
  py::class_<SchedulerConfig>(m, "SchedulerConfig")
      .def(py::init<>())
      .def_readwrite("max_total_tokens", &SchedulerConfig::max_total_tokens)
      .def_readwrite("page_size", &SchedulerConfig::page_size)
      .def_readwrite("max_running_requests", &SchedulerConfig::max_running_requests)
      .def_readwrite("max_prefill_tokens", &SchedulerConfig::max_prefill_tokens)
      .def_readwrite("chunked_prefill_size", &SchedulerConfig::chunked_prefill_size)
      .def_readwrite("context_length", &SchedulerConfig::context_length)
      .def_readwrite("vocab_size", &SchedulerConfig::vocab_size)
      .def_readwrite("schedule_policy", &SchedulerConfig::schedule_policy)
      .def_readwrite("disable_radix_cache", &SchedulerConfig::disable_radix_cache)
      .def_readwrite("eos_token_ids", &SchedulerConfig::eos_token_ids)
      .def_readwrite("init_new_token_ratio", &SchedulerConfig::init_new_token_ratio)
      .def_readwrite("min_new_token_ratio", &SchedulerConfig::min_new_token_ratio)
      .def_readwrite("new_token_ratio_decay", &SchedulerConfig::new_token_ratio_decay)
      .def_readwrite("clip_max_new_tokens", &SchedulerConfig::clip_max_new_tokens)
      .def_readwrite("max_loras_per_batch", &SchedulerConfig::max_loras_per_batch);

  py::class_<SchedulerStats>(m, "SchedulerStats")
      .def_readonly("num_waiting", &SchedulerStats::num_waiting)
      .def_readonly("num_running", &SchedulerStats::num_running)
      .def_readonly("num_free_tokens", &SchedulerStats::num_free_tokens)
      .def_readonly("num_evictable_tokens", &SchedulerStats::num_evictable_tokens)
      .def_readonly("num_protected_tokens", &SchedulerStats::num_protected_tokens)
      .def_readonly("num_used_tokens", &SchedulerStats::num_used_tokens)
      .def_readonly("cache_hit_tokens", &SchedulerStats::cache_hit_tokens)
      .def_readonly("cache_miss_tokens", &SchedulerStats::cache_miss_tokens)
      .def_readonly("num_retractions", &SchedulerStats::num_retractions)
      .def_readonly("new_token_ratio", &SchedulerStats::new_token_ratio);
}

void bind_limits(py::module_& m) {
  py::class_<RequestLimits>(m, "RequestLimits",
                            "The core's request rules (prompt fit, vocabulary range, generation "
                            "budget); each check raises CoreError with the user-facing message.")
      .def(py::init([](int32_t context_length, int32_t max_sequence_len, int32_t vocab_size) {
             RequestLimits l;
             l.context_length = context_length;
             l.max_sequence_len = max_sequence_len;
             l.vocab_size = vocab_size;
             return l;
           }),
           py::arg("context_length"), py::arg("max_sequence_len"), py::arg("vocab_size"))
      .def_readonly("context_length", &RequestLimits::context_length)
      .def_readonly("max_sequence_len", &RequestLimits::max_sequence_len)
      .def_readonly("vocab_size", &RequestLimits::vocab_size)
      .def(
          "check_prompt",
          [](const RequestLimits& l, const Int32Array& ids) { l.check_prompt(as_span(ids)); },
          py::arg("input_ids"))
      .def(
          "check_token_ids",
          [](const RequestLimits& l, const std::string& label,
             const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids) {
            l.check_token_ids(label, std::span<const int64_t>(ids.data(), ids.size()));
          },
          py::arg("label"), py::arg("ids"))
      .def("fit_max_new_tokens", &RequestLimits::fit_max_new_tokens, py::arg("prompt_len"),
           py::arg("max_new_tokens"), py::arg("auto_truncate"));
}

void bind_plan(py::module_& m) {
  py::enum_<ForwardMode>(m, "ForwardMode")
      .value("IDLE", ForwardMode::kIdle)
      .value("EXTEND", ForwardMode::kExtend)
      .value("DECODE", ForwardMode::kDecode);
  py::enum_<FinishReason>(m, "FinishReason")
      .value("NONE", FinishReason::kNone)
      .value("STOP_TOKEN", FinishReason::kStopToken)
      .value("LENGTH", FinishReason::kLength)
      .value("ABORT", FinishReason::kAbort);
  py::enum_<AbortResult>(m, "AbortResult")
      .value("NOT_FOUND", AbortResult::kNotFound)
      .value("DONE", AbortResult::kDone)
      .value("DEFERRED", AbortResult::kDeferred);

  auto plan = py::class_<BatchPlan, PlanPtr>(m, "BatchPlan");
  plan.def_property_readonly("mode", [](const PlanPtr& p) { return p->mode; })
      .def_property_readonly("num_reqs", &BatchPlan::num_reqs)
      .def_property_readonly("num_tokens", &BatchPlan::num_tokens)
      .def_property_readonly("num_samples", &BatchPlan::num_samples);
#define SGL_PLAN_ARRAY(name) \
  plan.def_property_readonly(#name, [](const PlanPtr& p) { return plan_array(p, &BatchPlan::name); })
  SGL_PLAN_ARRAY(req_ids);
  SGL_PLAN_ARRAY(req_pool_indices);
  SGL_PLAN_ARRAY(prefix_lens);
  SGL_PLAN_ARRAY(extend_lens);
  SGL_PLAN_ARRAY(seq_lens);
  SGL_PLAN_ARRAY(output_lens);
  SGL_PLAN_ARRAY(extend_start);
  SGL_PLAN_ARRAY(input_ids);
  SGL_PLAN_ARRAY(positions);
  SGL_PLAN_ARRAY(out_slots);
  SGL_PLAN_ARRAY(sample_rows);
  SGL_PLAN_ARRAY(sample_indices);
  SGL_PLAN_ARRAY(penalty_indptr);
  SGL_PLAN_ARRAY(penalty_token_ids);
  SGL_PLAN_ARRAY(penalty_counts);
  SGL_PLAN_ARRAY(ban_indptr);
  SGL_PLAN_ARRAY(ban_token_ids);
  SGL_PLAN_ARRAY(retracted);
#undef SGL_PLAN_ARRAY
}

void bind_scheduler_class(py::module_& m) {
  py::class_<Scheduler>(m, "Scheduler")
      .def(py::init<SchedulerConfig>(), py::arg("config"))
      .def(
          "add_request",
          [](Scheduler& s, const Int32Array& input_ids, int32_t max_new_tokens,
             int32_t min_new_tokens, bool ignore_eos, std::vector<int32_t> stop_token_ids,
             int32_t penalty_scope, std::string cache_namespace, int32_t max_cached_prefix,
             int32_t lora_id) {
            return s.add_request(as_span(input_ids),
                                 make_params(max_new_tokens, min_new_tokens, ignore_eos,
                                             std::move(stop_token_ids), penalty_scope,
                                             std::move(cache_namespace), max_cached_prefix,
                                             lora_id));
          },
          py::arg("input_ids"), py::arg("max_new_tokens") = 128, py::arg("min_new_tokens") = 0,
          py::arg("ignore_eos") = false, py::arg("stop_token_ids") = std::vector<int32_t>{},
          py::arg("penalty_scope") = 0, py::arg("cache_namespace") = std::string(),
          py::arg("max_cached_prefix") = -1, py::arg("lora_id") = -1,
          "Queues a request; returns its integer handle. penalty_scope: 0 none, 1 output tokens, "
          "2 prompt and output tokens. max_cached_prefix: at most this many leading tokens come "
          "from the prefix cache (-1: no limit). lora_id: the request's LoRA adapter (-1: none), "
          "for the max_loras_per_batch limit.")
      .def(
          "schedule",
          [](Scheduler& s) {
            PlanPtr plan;
            {
              py::gil_scoped_release release;
              plan = std::make_shared<BatchPlan>(s.schedule());
            }
            return plan;
          },
          "Plans the next step (a BatchPlan whose arrays are numpy views).")
      .def(
          "commit",
          [](Scheduler& s, const Int32Array& next_ids) {
            auto ids = as_span(next_ids);
            return step_without_gil([&] { return s.commit(ids); });
          },
          "(req_ids, tokens, finish_reasons, matched): one entry per request that got a token "
          "or finished. finish_reasons are FinishReason values; tokens are -1 for aborts.",
          py::arg("next_token_ids"))
      .def(
          "commit_pending",
          [](Scheduler& s) { return step_output_tuple(s.commit_pending()); },
          "Overlap scheduling: ends the plan in flight before its tokens are known (each sampled "
          "request gets the placeholder input id -(row + 1) for the next plan); returns what is "
          "settled now (aborts), as commit() does. resolve() must follow before the next commit.")
      .def(
          "resolve",
          [](Scheduler& s, const Int32Array& next_ids) {
            auto ids = as_span(next_ids);
            return step_without_gil([&] { return s.resolve(ids); });
          },
          "The tokens of the step ended by commit_pending(); returns what commit() returns.",
          py::arg("next_token_ids"))
      .def("has_pending", &Scheduler::has_pending)
      .def("abort", &Scheduler::abort, py::arg("rid"))
      .def(
          "cancel_plan",
          [](Scheduler& s) { return to_numpy(s.cancel_plan()); },
          "Ends the plan in flight without a commit (its step failed): removes its requests "
          "without caching the KV the step wrote; returns their handles.")
      .def("limits", &Scheduler::limits, "The RequestLimits this scheduler applies.")
      .def("flush_cache", &Scheduler::flush_cache)
      .def("check_integrity", &Scheduler::check_integrity)
      .def("idle", &Scheduler::idle)
      .def("stats", &Scheduler::stats)
      .def_property_readonly("max_sequence_len", &Scheduler::max_sequence_len)
      .def_property_readonly("num_slots", [](Scheduler& s) { return s.allocator().num_slots(); })
      .def("has_request", [](const Scheduler& s, RequestId id) { return s.find(id) != nullptr; })
      .def(
          "request_info",
          [](const Scheduler& s, RequestId id) -> py::object {
            const Request* r = s.find(id);
            if (r == nullptr) return py::none();
            py::dict d;
            d["state"] = static_cast<int32_t>(r->state);
            d["prompt_len"] = r->prompt_len;
            d["output_len"] = r->output_len();
            d["kv_len"] = r->kv_len;
            d["cached_tokens"] = r->cached_tokens;
            d["num_retractions"] = r->num_retractions;
            d["max_new_tokens"] = r->params.max_new_tokens;
            return d;
          },
          py::arg("rid"), "Status of a live request, or None.")
      .def(
          "output_ids",
          [](const Scheduler& s, RequestId id) {
            const Request* r = s.find(id);
            if (r == nullptr) throw Error("unknown request " + std::to_string(id));
            return to_numpy(std::vector<int32_t>(r->tokens.begin() + r->prompt_len, r->tokens.end()));
          },
          py::arg("rid"))
      .def(
          "req_to_token",
          [](py::object self) {
            const Scheduler& s = self.cast<const Scheduler&>();
            // A read-only 2-D view of the slot table, alive as long as the scheduler.
            py::array_t<int32_t> arr({static_cast<py::ssize_t>(s.config().max_running_requests),
                                      static_cast<py::ssize_t>(s.row_len())},
                                     {static_cast<py::ssize_t>(s.row_len() * sizeof(int32_t)),
                                      static_cast<py::ssize_t>(sizeof(int32_t))},
                                     s.req_to_token(), self);
            py::detail::array_proxy(arr.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            return arr;
          },
          "The [max_running_requests, max_sequence_len] token->KV-slot table (read-only view).")
      .def_property_readonly("cache_evictable_tokens",
                             [](Scheduler& s) { return s.cache().evictable_tokens(); })
      .def_property_readonly("cache_num_nodes", [](Scheduler& s) { return s.cache().num_nodes(); });
}

void bind_cache(py::module_& m) {
  py::class_<PageAllocator>(m, "PageAllocator")
      .def(py::init<int32_t, int32_t>(), py::arg("num_pages"), py::arg("page_size") = 1)
      .def_property_readonly("page_size", &PageAllocator::page_size)
      .def_property_readonly("num_pages", &PageAllocator::num_pages)
      .def_property_readonly("num_slots", &PageAllocator::num_slots)
      .def("num_free_pages", &PageAllocator::num_free_pages)
      .def("alloc",
           [](PageAllocator& a, int32_t n) -> py::object {
             std::vector<int32_t> out;
             if (!a.alloc(n, out)) return py::none();
             return to_numpy(std::move(out));
           },
           py::arg("n"), "n fresh pages (refcount 1), or None when fewer are free.")
      .def("ref", &PageAllocator::ref)
      .def("unref", &PageAllocator::unref)
      .def("refcount", &PageAllocator::refcount)
      .def("check_integrity", &PageAllocator::check_integrity);

  py::class_<RadixCache>(m, "RadixCache")
      .def(py::init<PageAllocator*, bool>(), py::arg("allocator"), py::arg("disabled") = false,
           py::keep_alive<1, 2>())
      .def(
          "match_prefix",
          [](RadixCache& c, const Int32Array& tokens, bool touch, const std::string& ns) {
            MatchResult r = c.match_prefix(ns, as_span(tokens), touch);
            return py::make_tuple(r.length, to_numpy(std::move(r.pages)), r.node);
          },
          py::arg("tokens"), py::arg("touch") = true, py::arg("namespace") = std::string(),
          "(matched_len, pages, node) of the longest cached prefix.")
      .def(
          "insert",
          [](RadixCache& c, const Int32Array& tokens, const Int32Array& pages,
             const std::string& ns) {
            InsertResult r = c.insert(ns, as_span(tokens), as_span(pages));
            return py::make_tuple(r.existing_length, to_numpy(std::move(r.pages)), r.node);
          },
          py::arg("tokens"), py::arg("pages"), py::arg("namespace") = std::string(),
          "(existing_len, tree_pages, node); the tree references the pages it adopts.")
      .def("lock", &RadixCache::lock)
      .def("unlock", &RadixCache::unlock)
      .def("evict", &RadixCache::evict)
      .def("reset", &RadixCache::reset)
      .def_property_readonly("evictable_tokens", &RadixCache::evictable_tokens)
      .def_property_readonly("protected_tokens", &RadixCache::protected_tokens)
      .def_property_readonly("hit_tokens", &RadixCache::hit_tokens)
      .def_property_readonly("miss_tokens", &RadixCache::miss_tokens)
      .def("check_integrity", &RadixCache::check_integrity);
}

}  // namespace

void bind_scheduler(py::module_& m) {
  bind_config(m);
  bind_limits(m);
  bind_plan(m);
  bind_scheduler_class(m);
  bind_cache(m);
}

}  // namespace sglang::bindings
