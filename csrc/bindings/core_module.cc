// The sglang._core extension: scheduler, radix cache, allocator and CPU kernels.
#include "sglang/common.h"
#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  m.doc() = "sglang native core: scheduler, radix prefix cache, paged KV allocator, CPU kernels";
  static py::exception<sglang::Error> core_error(m, "CoreError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const sglang::Error& e) {
      py::set_error(core_error, e.what());
    }
  });
  sglang::bindings::bind_scheduler(m);
  sglang::bindings::bind_kernels_cpu(m);
  sglang::bindings::bind_quant_cpu(m);
  sglang::bindings::bind_ops_cpu(m);
  sglang::bindings::bind_lora_cpu(m);
}
