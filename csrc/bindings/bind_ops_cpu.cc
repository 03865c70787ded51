// Python bindings of the ops CPU kernels (part of sglang._core). Filled in by the ops kernels.
#include "bindings.h"

namespace sglang::bindings {

void bind_ops_cpu(py::module_& m) { (void)m; }

}  // namespace sglang::bindings
