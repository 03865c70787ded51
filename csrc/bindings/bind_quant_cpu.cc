// Python bindings of the quant CPU kernels (part of sglang._core). Filled in by the quant kernels.
#include "bindings.h"

namespace sglang::bindings {

void bind_quant_cpu(py::module_& m) { (void)m; }

}  // namespace sglang::bindings
