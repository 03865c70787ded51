// Internal: the per-ISA entry points of the fused CPU ops (see sglang/kernels/cpu_ops.h).
//
// ops_avx2_cpu.cc and ops_avx512_cpu.cc compile the same kernel bodies (ops_kernels.inc) for their
// ISA and each fill one OpsIsaTable. The launchers (ops_norm_cpu.cc, ops_rope_cpu.cc,
// ops_attention_cpu.cc) validate the arguments, split the work over the thread pool and call the
// table of active_isa() for each piece; the entries assume validated arguments.
#pragma once

#include <cstdint>

#include "sglang/kernels/cpu_ops.h"
#include "sglang/kernels/thread_pool.h"

namespace sglang::kernels::ops {

/// Query heads one decode pass processes together (larger GQA groups run in several passes).
constexpr int kMaxGroupPass = 8;
/// KV heads one decode item processes (it reads each key row once for all of them).
constexpr int64_t kMaxDecodeHeads = 8;
/// Largest head_dim the attention kernels take (head_dim must also be a multiple of 16).
constexpr int64_t kMaxHeadDim = 256;

struct OpsIsaTable {
  /// rms_norm_cpu over rows [r0, r1).
  void (*rms_norm_rows)(const RowsView& x, const void* weight, float eps, const RowsView& out,
                        int64_t r0, int64_t r1);
  /// fused_add_rms_norm_cpu over rows [r0, r1).
  void (*add_rms_norm_rows)(const RowsView& x, const RowsView& residual, const void* weight,
                            float eps, int64_t r0, int64_t r1);
  /// silu_and_mul_cpu over rows [r0, r1).
  void (*silu_mul_rows)(const RowsView& x, const RowsView& out, int64_t r0, int64_t r1);
  /// rope_kv_store_cpu over tokens [t0, t1).
  void (*rope_tokens)(const RopeKvArgs& args, int64_t t0, int64_t t1);
  /// Decode attention of request b, KV heads [h0, h1), over its keys [k0, k1) (k0 < k1). With
  /// partial == nullptr writes the normalized output rows of those heads' query groups;
  /// otherwise writes, for each head h0 + i, at partial + i * group * (head_dim + 2): the
  /// unnormalized accumulators [group, head_dim], then m [group], l [group] (running max of the
  /// scaled scores and the sum of exp(score - m)).
  void (*decode_item)(const AttnShape& shape, const PagedKv& kv, int64_t b, int64_t h0,
                      int64_t h1, int64_t k0, int64_t k1, float* partial);
  /// Extend attention of request b, KV head h for q rows [r0, r1); row r0 is the token at
  /// position pos0 and row r0 + i attends over keys 0..pos0 + i.
  void (*extend_item)(const AttnShape& shape, const PagedKv& kv, int64_t b, int64_t h, int64_t r0,
                      int64_t r1, int64_t pos0);
};

const OpsIsaTable& ops_table_avx2();
const OpsIsaTable& ops_table_avx512();
/// The table of active_isa() (AVX2 below AVX-512: AVX2 is the build floor).
const OpsIsaTable& ops_table();

/// True for the activation / KV dtypes the ops take (fp32, bf16).
inline bool ops_dtype(DType d) { return d == DType::kFloat32 || d == DType::kBFloat16; }

/// A valid matrix view: ops dtype, cols > 0, distinct rows (row_stride >= cols when rows > 1).
inline bool valid_rows(const RowsView& v) {
  if (!ops_dtype(v.dtype) || v.rows < 0 || v.cols <= 0) return false;
  if (v.rows > 0 && v.data == nullptr) return false;
  return v.rows <= 1 || v.row_stride >= v.cols;
}

/// Runs fn(begin, end) over [0, n) split into one contiguous range per thread (plan_threads with
/// `work_per_item` element-operations per item); on the calling thread alone for small work.
template <typename F>
void parallel_ranges(int64_t n, int64_t work_per_item, F&& fn) {
  const int threads = plan_threads(n, work_per_item, 0);
  if (threads <= 1) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  ThreadPool::global().parallel_for(threads, threads, [&](int64_t c) {
    const int64_t begin = n * c / threads, end = n * (c + 1) / threads;
    if (begin < end) fn(begin, end);
  });
}

}  // namespace sglang::kernels::ops
