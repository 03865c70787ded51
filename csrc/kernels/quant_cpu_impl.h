// Internal to the CPU quant kernels (quant_cpu.cc, quant_gemm_cpu.cc): the 16-bit quantized
// activation block both integer paths share, and the batched ("rows in lanes") integer GEMM.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/quant.h"

namespace sglang::kernels::quant_internal {

/// One quantized 32-value block of an x row (128 bytes, so every field is 32-byte aligned).
struct alignas(64) XBlock {
  int16_t x16[32];  // round(x / s)
  int32_t corr[8];  // -offset * (x16[2l] + x16[2l + 1] + x16[16 + 2l] + x16[17 + 2l]) for lane l
  float s;          // s_b = max|x_b| / 32639
  float sum;        // s_b * sum(x16) (Q4_1's min term)
};
static_assert(sizeof(XBlock) == 128);

/// An fp16 at p (unaligned) as float.
inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

/// The 32 q of a block as int16: elements 0..15 in *q0, 16..31 in *q1 (Q4 nibbles 0..15: the
/// low nibble of byte i is element i, the high nibble element 16 + i; Q8_0 int8 sign-extended).
template <QuantFormat F>
inline void block_q16(const uint8_t* b, __m256i* q0, __m256i* q1) {
  if constexpr (F == QuantFormat::kQ8_0) {
    *q0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
    *q1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18)));
  } else {
    constexpr int kHeader = F == QuantFormat::kQ4_0 ? 2 : 4;
    const __m256i v =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kHeader)));
    *q0 = _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
    *q1 = _mm256_srli_epi16(v, 4);  // zero-extended bytes: nothing above the high nibble
  }
}

/// Quantizes x row `x` (k values) into k / 32 XBlocks; `offset` is the weights' zero point (8 for
/// Q4_0, else 0). A block with a non-finite value gets s = NaN (its outputs become NaN, as with
/// the fp32 path). AVX2 (the library's floor); cvtps_epi32 rounds half to even.
void quantize_x_row(const float* x, int64_t k, int32_t offset, XBlock* out);

/// A Q4_K (or Q5_K) superblock (256 values) as int8 q (0..15 / 0..31) plus, per 16 values, the
/// scale s = d * sc and offset o = -dmin * mn (w = s * q + o; both halves of a 32-value
/// sub-block share them).
void unpack_k_superblock(QuantFormat fmt, const uint8_t* block, int8_t* q, float* s, float* o);

/// True for the formats the batched integer GEMM multiplies: Q4_0, Q4_1, Q8_0 and Q4_K (its
/// 32-value sub-blocks have one scale and offset each).
bool lanes_gemm_format(QuantFormat fmt);

/// x rows from which quant_matmul_cpu takes the batched integer GEMM on this ISA path (one full
/// register of rows), or 0 when the path has none (scalar).
int64_t lanes_gemm_min_rows(CpuIsa isa);

/// The batched integer GEMM (quant_gemm_cpu.cc): lanes_gemm_format() formats only, arguments
/// already checked by quant_matmul_cpu. x rows sit in the SIMD lanes (16 per zmm, 8 per ymm),
/// so each decoded weight pair is one broadcast shared by a whole register of rows.
void lanes_gemm(QuantFormat fmt, CpuIsa isa, const uint8_t* weight, int64_t n, int64_t k,
                const float* x, int64_t m, int64_t ldx, const float* bias, float* out, int64_t ldo,
                int num_threads);

}  // namespace sglang::kernels::quant_internal
