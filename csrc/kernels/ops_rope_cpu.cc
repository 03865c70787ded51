// Launcher of rope_kv_store (RoPE on q in place, rotated k and v into the KV cache); semantics in
// sglang/kernels/cpu_ops.h, kernel in ops_kernels.inc.
#include <cstdint>

#include "ops_cpu_impl.h"

namespace sglang::kernels {

namespace {

bool valid_rope(const RopeKvArgs& a) {
  if (!ops::ops_dtype(a.dtype) || a.num_tokens < 0 || a.num_heads <= 0 || a.num_kv_heads <= 0 ||
      a.head_dim <= 0 || a.head_dim % 2 != 0 || a.max_positions <= 0 || a.num_slots <= 0) {
    return false;
  }
  if (a.cache_stride < a.num_kv_heads * a.head_dim) return false;
  if (a.cos == nullptr || a.sin == nullptr || a.k_cache == nullptr || a.v_cache == nullptr) {
    return false;
  }
  if (a.num_tokens == 0) return true;
  if (a.q == nullptr || a.k == nullptr || a.v == nullptr || a.positions == nullptr ||
      a.out_slots == nullptr) {
    return false;
  }
  if (a.num_tokens > 1 && (a.q_stride < a.num_heads * a.head_dim ||
                           a.k_stride < a.num_kv_heads * a.head_dim ||
                           a.v_stride < a.num_kv_heads * a.head_dim)) {
    return false;
  }
  bool ok = true;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    ok &= a.positions[t] >= 0 && a.positions[t] < a.max_positions;
    ok &= a.out_slots[t] >= 0 && a.out_slots[t] < a.num_slots;
  }
  return ok;
}

}  // namespace

Status rope_kv_store_cpu(const RopeKvArgs& args) {
  if (!valid_rope(args)) return Status::kInvalidArgument;
  const ops::OpsIsaTable& t = ops::ops_table();
  const int64_t work = (args.num_heads + 2 * args.num_kv_heads) * args.head_dim * 2;
  ops::parallel_ranges(args.num_tokens, work, [&](int64_t t0, int64_t t1) {
    t.rope_tokens(args, t0, t1);
  });
  return Status::kOk;
}

}  // namespace sglang::kernels
