// Fused CPU kernels of a decoder layer: RMSNorm (optionally with the residual add), SiLU-and-mul,
// RoPE + KV-cache store, and paged attention (decode and extend) over the KV pool.
//
// Data flow, per layer of a Llama-style model:
//   hidden -> fused_add_rms_norm -> qkv projection (torch) -> rope_kv_store (rotates q in place,
//   writes rotated k and v into the layer's KV cache at the step's out_slots) ->
//   paged_decode_attention / extend_attention (reads K/V through req_to_token) -> o projection ->
//   fused_add_rms_norm -> gate_up projection -> silu_and_mul -> down projection.
// The step's arrays (positions, out_slots, req_to_token, req_pool_indices, seq_lens, prefix_lens,
// extend_start) come from the scheduler's BatchPlan (sglang/batch_plan.h) via ForwardBatch.
//
// Conventions (as the sampling kernels): raw pointers, sizes and a DType; strides are in elements
// (not bytes); activations and the KV cache are fp32 or bf16 (kFloat16 is rejected), all math is
// fp32. Launchers validate what they will read (sizes, strides, index ranges: positions, slots,
// table entries) and return kInvalidArgument without writing anything when it is wrong; they never
// throw and never allocate on the caller's behalf beyond thread-local scratch. They run on the
// calling thread plus the core's worker pool (ThreadPool::global()). The vector path follows
// active_isa(): AVX-512 or AVX2 (the build floor; a "scalar" cap also runs the AVX2 code).
#pragma once

#include <cstdint>

#include "sglang/kernels/sampling.h"  // DType, Status

namespace sglang::kernels {

/// A [rows, cols] matrix of `dtype`: row r starts at `data + r * row_stride` (elements), its
/// elements are contiguous.
struct RowsView {
  void* data;
  DType dtype;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
};

/// out = rms_norm(x) * weight, row by row (x, out: [rows, cols]; weight: [cols] of x's dtype).
///   fp32: out = x * rsqrt(mean(x^2) + eps) * w            (torch.nn.functional.rms_norm)
///   bf16: out = bf16(bf16(x * rsqrt(mean(x^2) + eps)) * w) (HF: normalize in fp32, round, then
///         multiply by the bf16 weight in bf16)
/// `out` may alias `x` (same data and stride).
Status rms_norm_cpu(const RowsView& x, const void* weight, float eps, const RowsView& out);

/// In place: residual = x + residual (rounded to the dtype), then x = rms_norm(residual) * weight
/// (same semantics as rms_norm_cpu). x and residual: [rows, cols] of one dtype, not overlapping.
Status fused_add_rms_norm_cpu(const RowsView& x, const RowsView& residual, const void* weight,
                              float eps);

/// out[t, :] = silu(x[t, :d]) * x[t, d:] with d = out.cols, x.cols == 2 * d (x and out of one
/// dtype). bf16 rounds silu to bf16 before the product, as torch's silu(...).mul_(...) does.
Status silu_and_mul_cpu(const RowsView& x, const RowsView& out);

/// Arguments of rope_kv_store_cpu. q/k/v are per-token rows of heads: element (t, h, i) of q is
/// at q + t * q_stride + h * head_dim + i (heads contiguous; q_stride >= num_heads * head_dim),
/// likewise k, v with k_stride, v_stride and num_kv_heads. They are usually column slices of one
/// fused qkv [T, (H + 2 * KVH) * D] tensor. The caches are [num_slots, num_kv_heads, head_dim]
/// with `cache_stride` elements per slot (>= num_kv_heads * head_dim). cos/sin: [max_positions,
/// head_dim / 2] contiguous (NeoX "rotate_half" layout). All float tensors share `dtype`.
struct RopeKvArgs {
  void* q;
  const void* k;
  const void* v;
  int64_t q_stride;
  int64_t k_stride;
  int64_t v_stride;
  int64_t num_tokens;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;  // even
  const int64_t* positions;  // [num_tokens], each in [0, max_positions)
  const void* cos;
  const void* sin;
  int64_t max_positions;
  void* k_cache;
  void* v_cache;
  int64_t num_slots;
  int64_t cache_stride;
  const int64_t* out_slots;  // [num_tokens], each in [0, num_slots)
  DType dtype;
};

/// Rotates q in place and stores rotate(k) -> k_cache[out_slots[t]], v -> v_cache[out_slots[t]].
/// With x1 = x[:D/2], x2 = x[D/2:], c = cos[pos], s = sin[pos]:
///   out[:D/2] = x1 * c - x2 * s,  out[D/2:] = x2 * c + x1 * s
/// (bf16 rounds each product and the sum to bf16, as torch's bf16 ops do). k and v are not
/// modified. out_slots must be distinct (tokens run in parallel); q must not overlap k, v or the
/// caches.
Status rope_kv_store_cpu(const RopeKvArgs& args);

/// The paged KV cache of one layer and the slot table shared by the attention launchers.
/// K of token j of request b, head h: k_cache + slot * cache_stride + h * head_dim with
/// slot = req_to_token[req_pool_indices[b] * table_stride + j] (int32, in [0, num_slots)).
struct PagedKv {
  const void* k_cache;
  const void* v_cache;
  int64_t num_slots;
  int64_t cache_stride;  // elements per slot, >= num_kv_heads * head_dim
  const int32_t* req_to_token;
  int64_t table_rows;
  int64_t table_stride;  // elements per table row (>= the longest seq_len)
  const int64_t* req_pool_indices;  // [batch], each in [0, table_rows)
  const int32_t* seq_lens;          // [batch], each in [1, table_stride]
  int64_t batch;
};

/// Shapes of a query/output pair: q element (t, h, i) at q + t * q_stride + h * head_dim + i,
/// out likewise with out_stride. q, out and the caches share `dtype`; out must not overlap q.
struct AttnShape {
  const void* q;
  int64_t q_stride;
  void* out;
  int64_t out_stride;
  int64_t num_heads;     // a multiple of num_kv_heads (GQA group = num_heads / num_kv_heads)
  int64_t num_kv_heads;
  int64_t head_dim;      // <= 256
  float scale;
  DType dtype;
};

/// Decode: one query token per request (q/out rows = batch). Request b attends over its keys
/// 0..seq_lens[b]-1 with softmax(q k^T * scale) v, fp32 accumulators, online softmax. Work is
/// split over (request, kv head) and, when that gives fewer items than threads, over chunks of
/// the sequence merged with their log-sum-exp (flash-decoding).
Status paged_decode_attention_cpu(const AttnShape& shape, const PagedKv& kv);

/// Extend (prefill, chunked prefill, cached prefix): q/out rows are the new tokens; request b owns
/// rows extend_start[b] .. extend_start[b+1]-1 (extend_start: [batch + 1], non-decreasing, from 0;
/// extend_start[batch] = number of rows), and its i-th row is the token at position
/// prefix_lens[b] + i, which attends over keys 0..prefix_lens[b] + i (causal). The new tokens' K/V
/// must already be in the cache; seq_lens[b] must equal prefix_lens[b] + its number of rows.
Status extend_attention_cpu(const AttnShape& shape, const PagedKv& kv, const int32_t* prefix_lens,
                            const int32_t* extend_start);

}  // namespace sglang::kernels
