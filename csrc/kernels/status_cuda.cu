// status_string for sglang_cuda_kernels (see status_text.h for why it sits alone in this file).
#include "sglang/kernels/sampling.h"
#include "status_text.h"

namespace sglang::kernels {

const char* status_string(Status s) { return detail::status_text(s); }

}  // namespace sglang::kernels
