// Plain helpers shared by the kernel bindings (CPU in _core, CUDA in _cuda): raw pointers cross
// from Python as integers (tensor.data_ptr(), 0 = null), dtypes as DType ints, and a non-ok
// Status becomes sglang::Error (sglang.CoreError) in _core; _cuda returns Status codes instead.
#pragma once

#include <cstdint>
#include <string>

#include "sglang/common.h"
#include "sglang/kernels/sampling.h"

namespace sglang::bindings {

/// A pointer passed from Python as an integer address (0 = null).
template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

/// Builds a LogitsView from the integer arguments; rejects unknown dtype values.
inline kernels::LogitsView logits_view(uintptr_t data, int dtype, int64_t num_rows, int64_t vocab,
                                       int64_t row_stride) {
  if (dtype < 0 || dtype > static_cast<int>(kernels::DType::kBFloat16)) {
    SGL_FAIL() << "unknown logits dtype " << dtype;
  }
  return {ptr<void>(data), static_cast<kernels::DType>(dtype), num_rows, vocab, row_stride};
}

/// Throws sglang::Error naming `what` when `status` is not kOk.
inline void check_status(kernels::Status status, const char* what) {
  if (status != kernels::Status::kOk) {
    SGL_FAIL() << what << ": " << kernels::status_string(status);
  }
}

}  // namespace sglang::bindings
