// The fused CPU ops compiled for AVX-512 (F/BW/VL/DQ): ops_kernels.inc with 16 lanes, inside a
// `#pragma GCC target` region so only these functions use AVX-512 (the library's floor is AVX2).
// Every header is included before the region, so no shared inline function gets AVX-512 code.
// The table is only used when active_isa() is kAvx512.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() (a self-initialized variable) as their
// merge source, which -W(maybe-)uninitialized reports at the intrinsic's line once inlined: a
// known false positive, silenced for the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops_cpu_impl.h"
#include "sglang/kernels/dtype.h"

namespace sglang::kernels::ops {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace {
namespace avx512 {
#define SGL_OPS_W 16
#include "ops_vec.inc"
#include "ops_kernels.inc"
#undef SGL_OPS_W
}  // namespace avx512
}  // namespace
#pragma GCC pop_options

const OpsIsaTable& ops_table_avx512() {
  // Only addresses are taken here: no avx512 code runs before the ISA is chosen.
  static const OpsIsaTable table{&avx512::rms_norm_rows, &avx512::add_rms_norm_rows,
                                 &avx512::silu_mul_rows,  &avx512::rope_tokens,
                                 &avx512::decode_item,    &avx512::extend_item};
  return table;
}

}  // namespace sglang::kernels::ops
