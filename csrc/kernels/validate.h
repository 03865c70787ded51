// Internal argument checks shared by the CPU and CUDA launchers.
//
// CPU launchers validate everything they will read (pointers, sizes, CSR structure, token ids)
// before touching the logits, so invalid input returns kInvalidArgument and leaves them unchanged.
// CUDA launchers check what the host can see (pointers, sizes); device arrays are not read here.
#pragma once

#include <cstdint>

#include "sglang/kernels/dtype.h"
#include "sglang/kernels/sampling.h"

namespace sglang::kernels::validate {

/// Checks the shape of a logits view. In-place launchers need distinct rows
/// (row_stride >= vocab when there is more than one row); read-only ones accept any stride >= 0.
inline bool valid_view(const LogitsView& v, bool in_place) {
  if (!dtype_valid(v.dtype) || v.num_rows < 0 || v.vocab_size <= 0 || v.row_stride < 0) {
    return false;
  }
  if (v.num_rows > 0 && v.data == nullptr) return false;
  if (in_place && v.num_rows > 1 && v.row_stride < v.vocab_size) return false;
  return true;
}

/// Checks a per-row CSR list in host memory: non-null arrays (when there are rows), indptr
/// non-negative and non-decreasing, every token id in [0, vocab).
inline bool valid_csr(const int32_t* indptr, const int32_t* token_ids, int64_t num_rows,
                      int64_t vocab) {
  if (num_rows == 0) return true;
  if (indptr == nullptr) return false;
  if (indptr[0] < 0) return false;
  for (int64_t r = 0; r < num_rows; ++r) {
    if (indptr[r + 1] < indptr[r]) return false;
  }
  if (indptr[num_rows] > indptr[0] && token_ids == nullptr) return false;
  for (int64_t i = indptr[0]; i < indptr[num_rows]; ++i) {
    if (token_ids[i] < 0 || token_ids[i] >= vocab) return false;
  }
  return true;
}

}  // namespace sglang::kernels::validate
