// Launchers of the row-wise fused ops (RMSNorm, add + RMSNorm, SiLU-and-mul) and the choice of
// the per-ISA kernel table. Semantics in sglang/kernels/cpu_ops.h; kernels in ops_kernels.inc.
#include <cstdint>

#include "ops_cpu_impl.h"
#include "sglang/kernels/cpu_isa.h"

namespace sglang::kernels {

namespace ops {

const OpsIsaTable& ops_table() {
  return active_isa() == CpuIsa::kAvx512 ? ops_table_avx512() : ops_table_avx2();
}

}  // namespace ops

namespace {

bool same_shape(const RowsView& a, const RowsView& b) {
  return a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols;
}

// Element-operations per row, as plan_threads counts them (a norm row is ~4 passes over cols).
constexpr int64_t kNormCost = 4;
constexpr int64_t kSiluCost = 16;

}  // namespace

Status rms_norm_cpu(const RowsView& x, const void* weight, float eps, const RowsView& out) {
  if (!ops::valid_rows(x) || !ops::valid_rows(out) || !same_shape(x, out) || weight == nullptr) {
    return Status::kInvalidArgument;
  }
  const ops::OpsIsaTable& t = ops::ops_table();
  ops::parallel_ranges(x.rows, x.cols * kNormCost, [&](int64_t r0, int64_t r1) {
    t.rms_norm_rows(x, weight, eps, out, r0, r1);
  });
  return Status::kOk;
}

Status fused_add_rms_norm_cpu(const RowsView& x, const RowsView& residual, const void* weight,
                              float eps) {
  if (!ops::valid_rows(x) || !ops::valid_rows(residual) || !same_shape(x, residual) ||
      weight == nullptr || (x.rows > 0 && x.data == residual.data)) {
    return Status::kInvalidArgument;
  }
  const ops::OpsIsaTable& t = ops::ops_table();
  ops::parallel_ranges(x.rows, x.cols * kNormCost, [&](int64_t r0, int64_t r1) {
    t.add_rms_norm_rows(x, residual, weight, eps, r0, r1);
  });
  return Status::kOk;
}

Status silu_and_mul_cpu(const RowsView& x, const RowsView& out) {
  if (!ops::valid_rows(x) || !ops::valid_rows(out) || x.dtype != out.dtype ||
      x.rows != out.rows || x.cols != 2 * out.cols) {
    return Status::kInvalidArgument;
  }
  const ops::OpsIsaTable& t = ops::ops_table();
  ops::parallel_ranges(x.rows, out.cols * kSiluCost, [&](int64_t r0, int64_t r1) {
    t.silu_mul_rows(x, out, r0, r1);
  });
  return Status::kOk;
}

}  // namespace sglang::kernels
