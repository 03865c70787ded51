// The text of each kernel Status, shared by the two definitions of status_string: status.cc (in
// sglang_core) and status_cuda.cu (in sglang_cuda_kernels), so each library is complete on its
// own. Each definition sits alone in its object file, so a binary linking both libraries pulls
// in only one of them.
#pragma once

#include "sglang/kernels/sampling.h"

namespace sglang::kernels::detail {

inline const char* status_text(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kCudaError:
      return "CUDA error";
    case Status::kNotBuilt:
      return "not built (this build has no CUDA kernels)";
  }
  return "unknown status";
}

}  // namespace sglang::kernels::detail
