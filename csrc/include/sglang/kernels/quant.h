// Matmul, dequantization and quantization kernels on GGUF (ggml) block-quantized weights.
//
// Data flow: the GGUF loader hands over each 2-D weight as it is stored in the file, a uint8
// matrix of N rows x row_bytes (row r holds K / block_size blocks of `quant_block_bytes` bytes,
// ggml's layouts). The model's linear layers call `quant_matmul_cpu` with fp32 activations; the
// weight stays in its blocks and is decoded on the fly, so a decode step reads 4-7x fewer weight
// bytes than fp32. `dequantize_cpu` gives fp32 rows (prefill GEMM tiles, `--quantization none`),
// `quantize_q8_0_cpu` turns fp32 safetensors weights into Q8_0 blocks (`--quantization w8a16`).
//
// Launchers take raw pointers and sizes and return a Status; they never throw and allocate only
// per-thread scratch. They run on the calling thread plus the core's worker pool (`num_threads`
// <= 0: all hardware threads) and pick the AVX-512, AVX2 or scalar path from `active_isa()` on
// every call.
#pragma once

#include <cstdint>

#include "sglang/kernels/sampling.h"  // Status

namespace sglang::kernels {

/// GGML type ids of the supported block formats (values as in the GGUF file).
enum class QuantFormat : int32_t {
  kQ4_0 = 2,   // 32 values: fp16 d, 16 bytes of 4-bit q;        w = d * (q - 8)
  kQ4_1 = 3,   // 32 values: fp16 d, fp16 m, 16 bytes of 4-bit q; w = d * q + m
  kQ8_0 = 8,   // 32 values: fp16 d, 32 int8 q;                   w = d * q
  kQ4_K = 12,  // 256 values: fp16 d, dmin, 12 bytes of 6-bit scales/mins, 4-bit q (8 x 32)
  kQ5_K = 13,  // 256 values: as Q4_K plus 32 bytes of 5th bits
  kQ6_K = 14,  // 256 values: 4+2-bit q, 16 int8 scales (one per 16 values), fp16 d
};

/// True for one of the formats above.
bool quant_format_valid(int32_t fmt);
/// Values per block: 32 or 256 (0 for an unknown format).
int64_t quant_block_size(QuantFormat fmt);
/// Bytes per block: 18, 20, 34, 144, 176 or 210 (0 for an unknown format).
int64_t quant_block_bytes(QuantFormat fmt);

/// out[i, j] = sum_c x[i, c] * dequant(W)[j, c] (+ bias[j]) for i < m, j < n.
/// weight: n rows of k / block_size blocks, contiguous (row j at weight + j * row_bytes).
/// x: row i at x + i * ldx (ldx >= k when m > 1); out: row i at out + i * ldo (ldo >= n when
/// m > 1); bias: [n] or null. Within 1e-4 of the largest |out| of the fp32 product of the
/// dequantized weights. fp32 activations and accumulation, except for Q4_0 / Q4_1 / Q8_0 on the
/// AVX2 / AVX-512 paths (any m): there each 32-value block of x is rounded to 16 bits (scale
/// max|x_b| / 32639, ~1.5e-5 relative per element) and the block dot products are exact integer
/// ones (AVX-512 VNNI vpdpwssd when the CPU has it, else AVX2 madd_epi16): the decode kernel
/// (k in the SIMD lanes, rows in groups of 4 / 2) below 16 rows with VNNI / 32 with AVX2, the
/// batched GEMM (rows in the lanes) from there, which also takes Q4_K. k must be a
/// positive multiple of the block size. kInvalidArgument (nothing written) on a bad format, size,
/// stride or a null pointer that would be read or written.
Status quant_matmul_cpu(QuantFormat fmt, const void* weight, int64_t n, int64_t k, const float* x,
                        int64_t m, int64_t ldx, const float* bias, float* out, int64_t ldo,
                        int num_threads);

/// x rows that quant_matmul_cpu serves per pass over the weights on the active ISA path (its
/// register tile: 4 on AVX-512, 2 on AVX2). Every further group of this many rows widens each
/// weight to fp32 once more, which is what callers weigh against a dequantize + GEMM path.
int64_t quant_matmul_rows_per_pass();

/// out[j, c] = dequant(W)[j, c] for j < n, c < k (row j at out + j * ldo, ldo >= k when n > 1).
/// Bit-exact with ggml's / the gguf package's reference dequantization.
Status dequantize_cpu(QuantFormat fmt, const void* weight, int64_t n, int64_t k, float* out,
                      int64_t ldo, int num_threads);

/// Quantizes w [n, k] (contiguous fp32, k a positive multiple of 32) into n rows of k / 32 Q8_0
/// blocks at `out` (n * k / 32 * 34 bytes), bit-exact with ggml's quantize_row_q8_0_ref:
/// d = amax / 127 (stored as fp16), q = round-half-away(x * (1 / d)) with the fp32 d.
Status quantize_q8_0_cpu(const float* w, int64_t n, int64_t k, void* out, int num_threads);

}  // namespace sglang::kernels
