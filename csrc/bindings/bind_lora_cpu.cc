// Python binding of the segmented multi-LoRA CPU kernel (part of sglang._core).
//
// As the other kernel bindings: raw addresses as ints (0 = null), sizes, strides in elements and
// a DType int; the GIL is released while the kernel runs and a non-ok Status raises
// sglang._core.CoreError. The torch adapter (sglang.srt.lora.kernels.lora_apply_) checks the
// tensors and passes their data_ptr(). Semantics in sglang/kernels/lora.h.
#include "bindings.h"
#include "kernel_args.h"
#include "sglang/kernels/lora.h"

namespace sglang::bindings {

namespace k = sglang::kernels;

void bind_lora_cpu(py::module_& m) {
  m.def(
      "lora_apply",
      [](uintptr_t x, uintptr_t y, int dtype, int64_t num_rows, int64_t in_features,
         int64_t x_stride, int64_t out_features, int64_t y_stride, uintptr_t a, uintptr_t b,
         int64_t max_rank, uintptr_t ranks, uintptr_t scaling, int64_t num_slots,
         uintptr_t seg_indptr, uintptr_t seg_slots, int64_t num_segments) {
        const auto dt = static_cast<k::DType>(dtype);  // an unknown code is rejected by the kernel
        const k::RowsView xv{ptr<void>(x), dt, num_rows, in_features, x_stride};
        const k::RowsView yv{ptr<void>(y), dt, num_rows, out_features, y_stride};
        const k::LoraWeights w{ptr<const void>(a),       ptr<const void>(b),
                               max_rank,                 ptr<const int32_t>(ranks),
                               ptr<const float>(scaling), num_slots};
        const k::LoraSegments s{ptr<const int32_t>(seg_indptr), ptr<const int32_t>(seg_slots),
                                num_segments};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::lora_apply(xv, yv, w, s);
        }
        if (status != k::Status::kOk) {
          SGL_FAIL() << "lora_apply: " << k::status_string(status)
                     << " (dtype code " << dtype << " must be float32 or bfloat16; shapes, a "
                     << "segment slot outside [-1, num_slots), a rank outside [0, max_rank] or "
                     << "seg_indptr not non-decreasing from 0 to num_rows)";
        }
      },
      py::arg("x_ptr"), py::arg("y_ptr"), py::arg("dtype"), py::arg("num_rows"),
      py::arg("in_features"), py::arg("x_stride"), py::arg("out_features"), py::arg("y_stride"),
      py::arg("a_ptr"), py::arg("b_ptr"), py::arg("max_rank"), py::arg("ranks_ptr"),
      py::arg("scaling_ptr"), py::arg("num_slots"), py::arg("seg_indptr_ptr"),
      py::arg("seg_slots_ptr"), py::arg("num_segments"),
      "In place: y[r] += scaling[s] * B[s][:, :rank[s]] @ (A[s][:rank[s]] @ x[r]) for the rows r "
      "of every segment whose slot s is >= 0 (segmented multi-LoRA).");
}

}  // namespace sglang::bindings
