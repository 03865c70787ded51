// Segmented multi-LoRA on CPU (S-LoRA / Punica style): one call adds the LoRA deltas of a batch
// whose rows use different adapters.
//
// Data flow: the adapter pool (python/sglang/srt/lora/pool.py) keeps every loaded adapter's
// weights of one projection in a slot of two stacked tensors, A [num_slots, max_rank, in] and
// B [num_slots, out, max_rank] (rank r of a slot uses A[s, :r, :] and B[s, :, :r]), with its rank
// and scaling (alpha / r). The batch's rows are grouped into segments of consecutive rows that
// share a slot (seg_indptr, seg_slots; slot -1: the base model, no delta). After the base
// projection y = x @ W^T, the model calls lora_apply, which adds the deltas into y in place; y is
// often a column slice of a wider fused output (the q, k or v part of qkv), hence its stride.
// The CUDA path of the same contract is Triton (python/sglang/srt/lora/triton_lora.py).
//
// Conventions as the other CPU kernels (sglang/kernels/cpu_ops.h): raw pointers, sizes, strides
// in elements, fp32 or bf16 (x, y, A, B of one dtype), all math in fp32; invalid arguments
// return kInvalidArgument before anything is written. Runs on the calling thread, plus the
// core's worker pool when the batch carries enough work (plan_threads: rank x (in + out) FMAs per
// row); tiny batches never wake it. The vector path follows active_isa(): AVX-512 or AVX2.
#pragma once

#include <cstdint>

#include "sglang/kernels/cpu_ops.h"  // RowsView, DType, Status

namespace sglang::kernels {

/// The stacked adapter weights of one projection (read only; owned by the caller).
struct LoraWeights {
  const void* a;           // [num_slots, max_rank, in] contiguous, dtype of x
  const void* b;           // [num_slots, out, max_rank] contiguous, dtype of x
  int64_t max_rank;        // >= 0
  const int32_t* ranks;    // [num_slots], each in [0, max_rank] (0: the slot adds nothing)
  const float* scaling;    // [num_slots]
  int64_t num_slots;       // >= 0
};

/// The batch's rows grouped into segments: segment g is rows indptr[g] .. indptr[g+1]-1, all
/// using slot slots[g] (-1: no adapter). Segments may be empty; slots may repeat.
struct LoraSegments {
  const int32_t* indptr;   // [num_segments + 1]: indptr[0] = 0, non-decreasing, last = rows
  const int32_t* slots;    // [num_segments], each in [-1, num_slots)
  int64_t num_segments;    // >= 0
};

/// For every row r of a segment with slot s >= 0 (rank k = ranks[s]):
///   y[r, :] += scaling[s] * B[s][:, :k] @ (A[s][:k, :] @ x[r, :])
/// x: [rows, in] (x.cols = in), y: [rows, out] (y.cols = out, y.rows = x.rows), same dtype (fp32
/// or bf16); any row strides (y's >= out when rows > 1). The shrink A @ x and the expand are
/// accumulated in fp32 and y is rounded once to its dtype. Rows outside adapter segments are
/// left untouched (bit for bit). y must not overlap x, A or B. kInvalidArgument (nothing
/// written) on: another dtype, mismatched shapes, a null pointer that would be read, a slot
/// outside [-1, num_slots), a rank outside [0, max_rank], indptr not starting at 0,
/// decreasing, or not ending at the number of rows.
Status lora_apply(const RowsView& x, const RowsView& y, const LoraWeights& weights,
                  const LoraSegments& segments);

}  // namespace sglang::kernels
