// The fused CPU ops compiled for AVX2 + FMA (the build floor): ops_kernels.inc with 8 lanes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops_cpu_impl.h"
#include "sglang/kernels/dtype.h"

namespace sglang::kernels::ops {

namespace {
namespace avx2 {
#define SGL_OPS_W 8
#include "ops_vec.inc"
#include "ops_kernels.inc"
#undef SGL_OPS_W
}  // namespace avx2
}  // namespace

const OpsIsaTable& ops_table_avx2() {
  // Only addresses are taken here: no avx2 code runs before the ISA is chosen.
  static const OpsIsaTable table{&avx2::rms_norm_rows, &avx2::add_rms_norm_rows,
                                 &avx2::silu_mul_rows,  &avx2::rope_tokens,
                                 &avx2::decode_item,    &avx2::extend_item};
  return table;
}

}  // namespace sglang::kernels::ops
