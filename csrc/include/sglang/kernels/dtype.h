// Bit-exact conversions between fp32 and the 16-bit logits dtypes (IEEE fp16, bfloat16).
//
// Shared by the CPU (.cc) and CUDA (.cu) kernels so both round the same way: fp32 -> 16 bit is
// round-to-nearest-even (what torch's `.to(dtype)` does), NaN stays NaN (quiet), infinities and
// overflow give infinities. The 16-bit values travel as raw `uint16_t` bits; no fp16 type is used.
// Header-only, standard library only; the functions are host+device under nvcc.
#pragma once

#include <cstdint>
#include <cstring>

#include "sglang/kernels/sampling.h"

#if defined(__CUDACC__)
#define SGL_HOST_DEVICE __host__ __device__
#else
#define SGL_HOST_DEVICE
#endif

namespace sglang::kernels {

/// Size in bytes of one element of `dtype` (0 for an unknown value).
SGL_HOST_DEVICE inline int dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
  }
  return 0;
}

/// True for the three supported dtypes (guards against out-of-range enum values from Python).
SGL_HOST_DEVICE inline bool dtype_valid(DType dtype) { return dtype_size(dtype) != 0; }

SGL_HOST_DEVICE inline uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

SGL_HOST_DEVICE inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

/// IEEE half (as bits) -> fp32, exact.
SGL_HOST_DEVICE inline float half_to_float(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7C00u << 13;
  uint32_t o = static_cast<uint32_t>(h & 0x7FFF) << 13;
  const uint32_t exp = o & kShiftedExp;
  o += (127 - 15) << 23;
  if (exp == kShiftedExp) {
    o += (128 - 16) << 23;  // inf / NaN
  } else if (exp == 0) {
    o += 1 << 23;  // zero / subnormal: renormalise through an fp32 subtraction (exact)
    o = float_to_bits(bits_to_float(o) - bits_to_float(113u << 23));
  }
  return bits_to_float(o | (static_cast<uint32_t>(h & 0x8000) << 16));
}

/// fp32 -> IEEE half bits, round to nearest even.
SGL_HOST_DEVICE inline uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (127u + 16) << 23) {  // >= 65536: inf, or NaN
    o = u > 0x7F800000u ? 0x7E00 : 0x7C00;
  } else if (u < 113u << 23) {  // half subnormal or zero: align with an fp32 add of 0.5
    o = float_to_bits(bits_to_float(u) + 0.5f) - 0x3F000000u;
  } else {  // normal: rebias the exponent, round the mantissa
    const uint32_t mant_odd = (u >> 13) & 1;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFF + mant_odd;
    o = u >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

/// bfloat16 bits -> fp32, exact.
SGL_HOST_DEVICE inline float bf16_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

/// fp32 -> bfloat16 bits, round to nearest even (NaN -> quiet NaN).
SGL_HOST_DEVICE inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/// Element `i` of a row of `dtype`, as fp32.
SGL_HOST_DEVICE inline float load_as_float(const void* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16:
      return half_to_float(static_cast<const uint16_t*>(row)[i]);
    case DType::kBFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(row)[i]);
    default:
      return static_cast<const float*>(row)[i];
  }
}

/// Stores fp32 `v` into element `i` of a row of `dtype`, rounding to nearest even.
SGL_HOST_DEVICE inline void store_from_float(void* row, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kFloat16:
      static_cast<uint16_t*>(row)[i] = float_to_half(v);
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(row)[i] = float_to_bf16(v);
      break;
    default:
      static_cast<float*>(row)[i] = v;
  }
}

/// Pointer to the start of row `r` of a logits view.
SGL_HOST_DEVICE inline void* row_pointer(const LogitsView& v, int64_t r) {
  return static_cast<char*>(v.data) + r * v.row_stride * dtype_size(v.dtype);
}

}  // namespace sglang::kernels
