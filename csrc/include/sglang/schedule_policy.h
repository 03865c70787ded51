// Scheduling policies: the order in which waiting requests are considered for admission.
//
// Mechanism (admission under the budgets, prefix locking, allocation) lives in the Scheduler; a
// policy only orders the waiting list. Policies may read the radix cache (without changing it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sglang/radix_cache.h"

namespace sglang {

struct Request;

class SchedulePolicy {
 public:
  virtual ~SchedulePolicy() = default;
  /// Reorders `waiting` in place; the first element is admitted first.
  virtual void order(std::vector<Request*>& waiting, RadixCache& cache) = 0;
};

/// "fcfs" (arrival order), "lpm" (longest cached prefix first) or "dfs-weight" (depth-first over
/// the cached prefix tree, heaviest subtrees first, keeping requests that share a prefix
/// together). Throws sglang::Error for another name.
std::unique_ptr<SchedulePolicy> make_schedule_policy(const std::string& name);

}  // namespace sglang
