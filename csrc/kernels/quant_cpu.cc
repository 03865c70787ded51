// CPU launchers of the GGUF block-quant kernels (semantics in sglang/kernels/quant.h).
//
// quant_matmul_cpu: Q4_0 / Q4_1 / Q8_0 on AVX2 / AVX-512 take an integer path (x quantized once
// per call to 16 bits per block, integer block dot products): from lanes_gemm_min_rows() rows the
// batched GEMM of quant_gemm_cpu.cc (x rows in the SIMD lanes; it takes Q4_K too), below it the
// "integer decode path" below, which splits the weight rows over threads in tiles of kTileRows
// rows and serves the x rows in groups of 4 (VNNI) / 2 (AVX2). Otherwise (Q4_K at decode sizes,
// Q5_K, Q6_K, the scalar path), per tile, the x rows are taken in groups of up to MR (the
// register tile: 4 on AVX-512, 2 on AVX2) and each group makes one pass over the tile's blocks,
// FMAing every decoded weight vector into kTileRows x MR fp32 accumulators. So the weight
// is read from memory once per call whatever m is (decode is memory-bound), and its decode is
// shared by MR x rows. Two fp32 decoders:
//   * fused (Q4_0 / Q4_1 / Q8_0 on AVX2 / AVX-512): a 32-value block goes straight from its 16
//     nibble bytes / 32 int8 into fp32 lanes (w = d * q + m in one FMA), rows prefetched ahead;
//   * unpack (K-quants, and every format on the scalar path): each row of the tile is first
//     unpacked into a uniform form in a per-thread L1 buffer, int8 q plus a float scale s and
//     offset o per 16 weights (w = s * q + o: Q4_K/Q5_K s = d * sc, o = -dmin * mn; Q6_K q - 32,
//     o = 0), then the micro-kernel widens 16 q at a time and applies s, o with one FMA.
// The per-block sum(x) trick (s * sum(q * x) + o * sum(x)) would not save anything here: the
// offset rides in the FMA that applies the scale, so it costs nothing extra.
//
// dequantize_cpu writes s * q + o with a separate multiply and add (fp-contract off in this file),
// which is the exact operation order of ggml's reference, so the result is bit-exact.
#pragma GCC optimize("fp-contract=off")
// GCC 12 flags _mm512_undefined_* inside its own AVX-512 intrinsics (a known false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/quant.h"
#include "sglang/kernels/thread_pool.h"
#include "quant_cpu_impl.h"

#define SGL_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace sglang::kernels {

namespace {

using quant_internal::XBlock;
using quant_internal::block_q16;
using quant_internal::h2f;
using quant_internal::quantize_x_row;

constexpr int64_t kChunk = 16;    // weights per scale/offset entry (Q6_K's sub-block size)
constexpr int64_t kTileRows = 4;  // weight rows per micro-kernel pass
constexpr int kMaxRowsAvx512 = 4;  // x rows per weight pass: 16 zmm accumulators of 32
constexpr int kMaxRowsAvx2 = 2;    // x rows per weight pass: 8 ymm accumulators of 16

inline uint16_t f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// The unpackers use SSE/AVX2 byte ops (AVX2 is the library's floor; every path shares them).

/// q[0..16) = low nibbles of 16 bytes, q[16..32) = high nibbles, minus `bias`.
inline void unpack_nibbles16(const uint8_t* qs, int8_t* q, int8_t bias) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i b = _mm_set1_epi8(bias);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_sub_epi8(_mm_and_si128(v, mask), b));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16),
                   _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), b));
}

inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline void store256(int8_t* p, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

inline void unpack_q4_0(const uint8_t* b, int8_t* q, float* s, float* o) {
  unpack_nibbles16(b + 2, q, 8);
  s[0] = s[1] = h2f(b);
  o[0] = o[1] = 0.0f;
}

inline void unpack_q4_1(const uint8_t* b, int8_t* q, float* s, float* o) {
  unpack_nibbles16(b + 4, q, 0);
  s[0] = s[1] = h2f(b);
  o[0] = o[1] = h2f(b + 2);
}

inline void unpack_q8_0(const uint8_t* b, int8_t* q, float* s, float* o) {
  std::memcpy(q, b + 2, 32);
  s[0] = s[1] = h2f(b);
  o[0] = o[1] = 0.0f;
}

/// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block.
inline void scale_min_k4(int j, const uint8_t* sc, int* scale, int* min) {
  if (j < 4) {
    *scale = sc[j] & 63;
    *min = sc[j + 4] & 63;
  } else {
    *scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
    *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

/// Scales/offsets of the 8 sub-blocks of 32 of a Q4_K/Q5_K block (two kChunk entries each):
/// s = d * sc, o = -(dmin * mn), the reference's roundings.
inline void k_quant_scales(const uint8_t* b, float* s, float* o) {
  const float d = h2f(b);
  const float dmin = h2f(b + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    scale_min_k4(j, b + 4, &sc, &mn);
    s[2 * j] = s[2 * j + 1] = d * static_cast<float>(sc);
    o[2 * j] = o[2 * j + 1] = -(dmin * static_cast<float>(mn));
  }
}

/// Q4_K: 4 groups of 32 bytes; sub-block 2j = low nibbles of group j, 2j + 1 = high nibbles.
inline void unpack_q4_k(const uint8_t* b, int8_t* q, float* s, float* o) {
  k_quant_scales(b, s, o);
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int j = 0; j < 4; ++j) {
    const __m256i v = load256(b + 16 + 32 * j);
    store256(q + 64 * j, _mm256_and_si256(v, mask));
    store256(q + 64 * j + 32, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
  }
}

/// Q5_K: as Q4_K, plus bit s of qh[l] as bit 4 of value l of sub-block s.
inline void unpack_q5_k(const uint8_t* b, int8_t* q, float* s, float* o) {
  k_quant_scales(b, s, o);
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  const __m256i qh = load256(b + 16);
  auto high = [&](int sub) {
    const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << sub));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), bit4);
  };
  for (int j = 0; j < 4; ++j) {
    const __m256i v = load256(b + 48 + 32 * j);
    store256(q + 64 * j, _mm256_or_si256(_mm256_and_si256(v, mask), high(2 * j)));
    store256(q + 64 * j + 32,
             _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), high(2 * j + 1)));
  }
}

/// Q6_K: per half h, value 32 * g + l = (4 bits of ql) | (bits 2g..2g+1 of qh[l]) << 4, minus 32.
inline void unpack_q6_k(const uint8_t* b, int8_t* q, float* s, float* o) {
  const __m256i lo4 = _mm256_set1_epi8(0x0F);
  const __m256i hi2 = _mm256_set1_epi8(0x30);
  const __m256i bias = _mm256_set1_epi8(32);
  for (int h = 0; h < 2; ++h) {
    const __m256i hb = load256(b + 128 + 32 * h);
    const __m256i l0 = load256(b + 64 * h);
    const __m256i l1 = load256(b + 64 * h + 32);
    int8_t* y = q + 128 * h;
    const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(hb, 4), hi2);
    const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(hb, 2), hi2);
    const __m256i h2 = _mm256_and_si256(hb, hi2);
    const __m256i h3 = _mm256_and_si256(_mm256_srli_epi16(hb, 2), hi2);
    store256(y, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, lo4), h0), bias));
    store256(y + 32, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, lo4), h1), bias));
    store256(y + 64, _mm256_sub_epi8(
                         _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), lo4), h2),
                         bias));
    store256(y + 96, _mm256_sub_epi8(
                         _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), lo4), h3),
                         bias));
  }
  const float d = h2f(b + 208);
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int j = 0; j < 16; ++j) {
    s[j] = d * static_cast<float>(sc[j]);
    o[j] = 0.0f;
  }
}

/// One weight row in the uniform unpacked form.
struct Unpacked {
  int8_t* q;  // [k]
  float* s;   // [k / kChunk]
  float* o;   // [k / kChunk]
};

/// Unpacks `blocks` consecutive blocks of kBlock values (the unpacker inlined into the loop).
template <int64_t kBlock, int64_t kBytes, void (*kUnpack)(const uint8_t*, int8_t*, float*, float*)>
void unpack_blocks(const uint8_t* row, int64_t blocks, const Unpacked& u) {
  constexpr int64_t kChunks = kBlock / kChunk;
  for (int64_t b = 0; b < blocks; ++b) {
    kUnpack(row + b * kBytes, u.q + b * kBlock, u.s + b * kChunks, u.o + b * kChunks);
  }
}

using UnpackRowFn = void (*)(const uint8_t*, int64_t, const Unpacked&);

struct FormatInfo {
  int64_t block_size;
  int64_t block_bytes;
  UnpackRowFn unpack;
};

bool format_info(QuantFormat fmt, FormatInfo* info) {
  switch (fmt) {
    case QuantFormat::kQ4_0: *info = {32, 18, unpack_blocks<32, 18, unpack_q4_0>}; return true;
    case QuantFormat::kQ4_1: *info = {32, 20, unpack_blocks<32, 20, unpack_q4_1>}; return true;
    case QuantFormat::kQ8_0: *info = {32, 34, unpack_blocks<32, 34, unpack_q8_0>}; return true;
    case QuantFormat::kQ4_K: *info = {256, 144, unpack_blocks<256, 144, unpack_q4_k>}; return true;
    case QuantFormat::kQ5_K: *info = {256, 176, unpack_blocks<256, 176, unpack_q5_k>}; return true;
    case QuantFormat::kQ6_K: *info = {256, 210, unpack_blocks<256, 210, unpack_q6_k>}; return true;
  }
  return false;
}

/// Unpacks one weight row (k / block_size blocks) into u.
void unpack_row(const FormatInfo& f, const uint8_t* row, int64_t k, const Unpacked& u) {
  f.unpack(row, k / f.block_size, u);
}

/// Per-thread unpack buffers for kTileRows rows of k weights (row i at offset i * k / i * k/16).
struct TileScratch {
  std::vector<int8_t> q;
  std::vector<float> s;
  std::vector<float> o;

  void reserve(int64_t k) {
    q.resize(static_cast<size_t>(kTileRows * k));
    s.resize(static_cast<size_t>(kTileRows * k / kChunk));
    o.resize(static_cast<size_t>(kTileRows * k / kChunk));
  }
  Unpacked row(int64_t i, int64_t k) {
    return {q.data() + i * k, s.data() + i * (k / kChunk), o.data() + i * (k / kChunk)};
  }
};

TileScratch& tile_scratch() {
  thread_local TileScratch scratch;
  return scratch;
}

// ---- micro-kernels: res[r][i] = sum_c x_r[c] * w_i[c] for kTileRows weight rows, MR x rows ----

struct TileArgs {
  const int8_t* q;  // kTileRows rows, stride k
  const float* s;   // kTileRows rows, stride k / kChunk
  const float* o;
  int64_t k;
  const float* x;  // MR rows, stride ldx
  int64_t ldx;
};

void tile_scalar(const TileArgs& a, int mr, float res[][kTileRows]) {
  const int64_t nc = a.k / kChunk;
  for (int r = 0; r < mr; ++r) {
    const float* x = a.x + r * a.ldx;
    for (int64_t i = 0; i < kTileRows; ++i) {
      float acc = 0.0f;
      for (int64_t c = 0; c < a.k; ++c) {
        const float w = static_cast<float>(a.q[i * a.k + c]) * a.s[i * nc + c / kChunk] +
                        a.o[i * nc + c / kChunk];
        acc += w * x[c];
      }
      res[r][i] = acc;
    }
  }
}

template <int MR>
__attribute__((target("avx2,fma"))) void tile_avx2(const TileArgs& a, float res[][kTileRows]) {
  const int64_t nc = a.k / kChunk;
  __m256 acc[kTileRows][MR];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < nc; ++c) {
    __m256 x0[MR], x1[MR];
    for (int r = 0; r < MR; ++r) {
      x0[r] = _mm256_loadu_ps(a.x + r * a.ldx + c * kChunk);
      x1[r] = _mm256_loadu_ps(a.x + r * a.ldx + c * kChunk + 8);
    }
    for (int i = 0; i < kTileRows; ++i) {
      const __m128i qi =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.q + i * a.k + c * kChunk));
      const __m256 s = _mm256_broadcast_ss(a.s + i * nc + c);
      const __m256 o = _mm256_broadcast_ss(a.o + i * nc + c);
      const __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qi)), s, o);
      const __m256 w1 = _mm256_fmadd_ps(
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(qi, 8))), s, o);
      for (int r = 0; r < MR; ++r) {
        acc[i][r] = _mm256_fmadd_ps(w0, x0[r], acc[i][r]);
        acc[i][r] = _mm256_fmadd_ps(w1, x1[r], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < kTileRows; ++i) {
    for (int r = 0; r < MR; ++r) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[i][r]),
                                  _mm256_extractf128_ps(acc[i][r], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      res[r][i] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
    }
  }
}

template <int MR>
SGL_AVX512_TARGET void tile_avx512(const TileArgs& a, float res[][kTileRows]) {
  const int64_t nc = a.k / kChunk;
  __m512 acc[kTileRows][MR];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < nc; ++c) {
    __m512 xv[MR];
    for (int r = 0; r < MR; ++r) xv[r] = _mm512_loadu_ps(a.x + r * a.ldx + c * kChunk);
    for (int i = 0; i < kTileRows; ++i) {
      const __m128i qi =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.q + i * a.k + c * kChunk));
      const __m512 w = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qi)),
                                       _mm512_set1_ps(a.s[i * nc + c]),
                                       _mm512_set1_ps(a.o[i * nc + c]));
      for (int r = 0; r < MR; ++r) acc[i][r] = _mm512_fmadd_ps(w, xv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < kTileRows; ++i) {
    for (int r = 0; r < MR; ++r) res[r][i] = _mm512_reduce_add_ps(acc[i][r]);
  }
}

/// Runs the micro-kernel of `isa` over up to its row limit of x rows; returns the rows done.
int run_tile(CpuIsa isa, const TileArgs& a, int64_t rows_left, float res[][kTileRows]) {
  if (isa == CpuIsa::kAvx512) {
    switch (std::min<int64_t>(rows_left, kMaxRowsAvx512)) {
      case 1: tile_avx512<1>(a, res); return 1;
      case 2: tile_avx512<2>(a, res); return 2;
      case 3: tile_avx512<3>(a, res); return 3;
      default: tile_avx512<4>(a, res); return 4;
    }
  }
  if (isa == CpuIsa::kAvx2) {
    if (rows_left == 1) {
      tile_avx2<1>(a, res);
      return 1;
    }
    tile_avx2<kMaxRowsAvx2>(a, res);
    return kMaxRowsAvx2;
  }
  const int mr = static_cast<int>(std::min<int64_t>(rows_left, kMaxRowsAvx512));
  tile_scalar(a, mr, res);
  return mr;
}

// ---- fused micro-kernels for the 32-value formats (Q4_0 / Q4_1 / Q8_0) ----
// These blocks are small enough to decode straight into registers (16 bytes of nibbles or 32
// int8 -> fp32 lanes, one scale and offset per block), which skips the unpack buffer: the decode
// costs a handful of ops per 16 weights, shared by the MR x rows of the pass.

// The fused kernels walk kTileRows weight rows side by side; hardware prefetchers follow one
// stream better than four interleaved ones, so each row is prefetched this many blocks ahead
// (a prefetch past the end of the buffer is harmless: prefetches never fault).
constexpr int64_t kPrefetchBlocks = 8;

/// Rows of the weight tile for the fused kernels: kTileRows row pointers (a row past n repeats
/// the last real row; its results are discarded).
struct FusedArgs {
  const uint8_t* rows[kTileRows];
  int64_t blocks;  // k / 32
  const float* x;  // MR rows, stride ldx
  int64_t ldx;
};

/// The 16 low / high nibbles of a Q4 block as int8 (q - 8 for Q4_0).
template <QuantFormat F>
inline void q4_nibbles(const uint8_t* b, __m128i* lo, __m128i* hi) {
  constexpr int kHeader = F == QuantFormat::kQ4_0 ? 2 : 4;  // d (and m for Q4_1)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kHeader));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i bias = _mm_set1_epi8(F == QuantFormat::kQ4_0 ? 8 : 0);
  *lo = _mm_sub_epi8(_mm_and_si128(v, mask), bias);
  *hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), bias);
}

/// w[0..32) of one block as two 16-lane vectors (w = d * q + m; m = 0 for Q4_0 / Q8_0).
template <QuantFormat F>
SGL_AVX512_TARGET inline void decode32_avx512(const uint8_t* b, __m512* w0, __m512* w1) {
  const __m512 d = _mm512_set1_ps(h2f(b));
  __m128i lo, hi;
  if constexpr (F == QuantFormat::kQ8_0) {
    lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
    hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18));
  } else {
    q4_nibbles<F>(b, &lo, &hi);
  }
  const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
  const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
  if constexpr (F == QuantFormat::kQ4_1) {
    const __m512 m = _mm512_set1_ps(h2f(b + 2));
    *w0 = _mm512_fmadd_ps(q0, d, m);
    *w1 = _mm512_fmadd_ps(q1, d, m);
  } else {
    *w0 = _mm512_mul_ps(q0, d);
    *w1 = _mm512_mul_ps(q1, d);
  }
}

template <QuantFormat F, int MR>
SGL_AVX512_TARGET void fused_avx512(const FusedArgs& a, float res[][kTileRows]) {
  constexpr int64_t kBytes = F == QuantFormat::kQ8_0 ? 34 : (F == QuantFormat::kQ4_1 ? 20 : 18);
  __m512 acc[kTileRows][MR];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < a.blocks; ++b) {
    __m512 x0[MR], x1[MR];
    for (int r = 0; r < MR; ++r) {
      x0[r] = _mm512_loadu_ps(a.x + r * a.ldx + b * 32);
      x1[r] = _mm512_loadu_ps(a.x + r * a.ldx + b * 32 + 16);
    }
    for (int i = 0; i < kTileRows; ++i) {
      __m512 w0, w1;
      _mm_prefetch(reinterpret_cast<const char*>(a.rows[i] + (b + kPrefetchBlocks) * kBytes),
                   _MM_HINT_T0);
      decode32_avx512<F>(a.rows[i] + b * kBytes, &w0, &w1);
      for (int r = 0; r < MR; ++r) {
        acc[i][r] = _mm512_fmadd_ps(w0, x0[r], acc[i][r]);
        acc[i][r] = _mm512_fmadd_ps(w1, x1[r], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < kTileRows; ++i) {
    for (int r = 0; r < MR; ++r) res[r][i] = _mm512_reduce_add_ps(acc[i][r]);
  }
}

/// w[0..32) of one block as four 8-lane vectors.
template <QuantFormat F>
__attribute__((target("avx2,fma"))) inline void decode32_avx2(const uint8_t* b, __m256 w[4]) {
  const __m256 d = _mm256_set1_ps(h2f(b));
  __m128i lo, hi;
  if constexpr (F == QuantFormat::kQ8_0) {
    lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
    hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18));
  } else {
    q4_nibbles<F>(b, &lo, &hi);
  }
  const __m256 q[4] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
                       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))};
  if constexpr (F == QuantFormat::kQ4_1) {
    const __m256 m = _mm256_set1_ps(h2f(b + 2));
    for (int h = 0; h < 4; ++h) w[h] = _mm256_fmadd_ps(q[h], d, m);
  } else {
    for (int h = 0; h < 4; ++h) w[h] = _mm256_mul_ps(q[h], d);
  }
}

template <QuantFormat F, int MR>
__attribute__((target("avx2,fma"))) void fused_avx2(const FusedArgs& a, float res[][kTileRows]) {
  constexpr int64_t kBytes = F == QuantFormat::kQ8_0 ? 34 : (F == QuantFormat::kQ4_1 ? 20 : 18);
  __m256 acc[kTileRows][MR];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < a.blocks; ++b) {
    for (int i = 0; i < kTileRows; ++i) {
      __m256 w[4];
      _mm_prefetch(reinterpret_cast<const char*>(a.rows[i] + (b + kPrefetchBlocks) * kBytes),
                   _MM_HINT_T0);
      decode32_avx2<F>(a.rows[i] + b * kBytes, w);
      for (int r = 0; r < MR; ++r) {
        const float* x = a.x + r * a.ldx + b * 32;
        for (int h = 0; h < 4; ++h) {
          acc[i][r] = _mm256_fmadd_ps(w[h], _mm256_loadu_ps(x + 8 * h), acc[i][r]);
        }
      }
    }
  }
  for (int i = 0; i < kTileRows; ++i) {
    for (int r = 0; r < MR; ++r) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[i][r]),
                                  _mm256_extractf128_ps(acc[i][r], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      res[r][i] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
    }
  }
}

template <QuantFormat F>
int run_fused_format(CpuIsa isa, const FusedArgs& a, int64_t rows_left, float res[][kTileRows]) {
  if (isa == CpuIsa::kAvx512) {
    switch (std::min<int64_t>(rows_left, kMaxRowsAvx512)) {
      case 1: fused_avx512<F, 1>(a, res); return 1;
      case 2: fused_avx512<F, 2>(a, res); return 2;
      case 3: fused_avx512<F, 3>(a, res); return 3;
      default: fused_avx512<F, 4>(a, res); return 4;
    }
  }
  if (rows_left == 1) {
    fused_avx2<F, 1>(a, res);
    return 1;
  }
  fused_avx2<F, kMaxRowsAvx2>(a, res);
  return kMaxRowsAvx2;
}

/// The fused kernel of a 32-value format on a SIMD path: x rows done, or 0 when there is none.
int run_fused(QuantFormat fmt, CpuIsa isa, const FusedArgs& a, int64_t rows_left,
              float res[][kTileRows]) {
  if (isa == CpuIsa::kScalar) return 0;
  switch (fmt) {
    case QuantFormat::kQ4_0: return run_fused_format<QuantFormat::kQ4_0>(isa, a, rows_left, res);
    case QuantFormat::kQ4_1: return run_fused_format<QuantFormat::kQ4_1>(isa, a, rows_left, res);
    case QuantFormat::kQ8_0: return run_fused_format<QuantFormat::kQ8_0>(isa, a, rows_left, res);
    default: return 0;
  }
}

// ---- integer decode path for the 32-value formats (Q4_0 / Q4_1 / Q8_0), decode-sized m ----
// The fp32 fused kernels spend most of their time widening weights to fp32 (cvtepi8_epi32 +
// cvtepi32_ps per 16 weights) and are compute-bound well below DRAM bandwidth. Here each x row
// is quantized once per call to 16 bits per 32-value block (s_b = max|x_b| / 32639,
// x16 = round(x / s_b), |x16| <= 32639), and a block's dot product with the weights' integer q
// is exact in int32: q widened to int16 (vpmovzxbw + a nibble mask / shift, vpmovsxbw for Q8_0),
// then vpdpwssd (AVX-512 VNNI) or madd_epi16 (AVX2) against x16: 8 int32 lanes of 4 products
// each, converted once and scaled by d_w * s_b with one FMA. 16-bit activations give ~1.5e-5
// relative error per element (the tests allow 1e-4 of max |out|).
//   * Q4_0's q - 8: the accumulator starts at corr = -8 * (the lane's 4 x16 summed), so the offset
//     cancels exactly in int32;
//   * Q4_1 adds m_w * s_b * sum(x16), for the tile's 4 rows in one 4-lane FMA: the min term sees
//     the same rounded x as d_w * q, so x's rounding error meets w = d_w * q + m_w as a whole
//     (d_w * q alone is 0..15 d_w, not centred: the error was 1.6e-4 of max |out| in a test).
// Why 16-bit x and int16 weights rather than two int8 planes of x (x16 = 256 * xh + xl) against
// u8 weights with vpdpbusd / maddubs: per block and x row that takes two dot instructions plus
// a shift and an add to combine the planes, vs. two here; the weights' widening to int16 is done
// once per block and shared by the x rows. (Measured ~8% faster on Zen 4 at m = 1; it also
// avoids maddubs' int16 saturation and, for Q8_0, the sign trick's -(-128) = -128 on xl.)
// The fp32 kernels stay the path for larger m: per x row and block this path costs two dots, a
// convert, a permute and an FMA vs. two FMAs there, so its cheaper decode stops paying off
// (at m = 4 on Zen 4 it was still 1.2x faster; AVX2 stops at 2 rows for its 16 registers).

constexpr int kIntRowsVnni = 4;  // x rows up to which quant_matmul_cpu takes the integer path:
constexpr int kIntRowsAvx2 = 2;  // 4 x 4 / 2 x 4 ymm accumulators (AVX2 has 16 registers)


/// True when quant_matmul_cpu takes the integer decode path (the fp32 kernels are the scalar
/// cap's path). Any m below the batched GEMM's lanes_gemm_min_rows(): each weight tile serves
/// the x rows in groups of kIntRowsVnni / kIntRowsAvx2 while it is in cache.
bool use_int_path(QuantFormat fmt, CpuIsa isa, bool vnni, int64_t m) {
  (void)vnni;
  (void)m;
  return isa != CpuIsa::kScalar &&
         (fmt == QuantFormat::kQ4_0 || fmt == QuantFormat::kQ4_1 || fmt == QuantFormat::kQ8_0);
}

struct IntArgs {
  const uint8_t* rows[kTileRows];  // as FusedArgs
  int64_t blocks;                  // k / 32
  const XBlock* x;                 // MR rows of `blocks` XBlocks, one after the other
};

inline float hsum256(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

inline __m256i load_si256(const void* p) {
  return _mm256_load_si256(static_cast<const __m256i*>(p));
}

/// The fp16 at byte `off` of block b of the 4 tile rows, as 4 fp32 lanes (Q4_1's m: the min term
/// is one 4-lane FMA per block and x row for the whole tile, not one per weight row).
template <int64_t kBytes, int kOff>
inline __m128 tile_halves(const IntArgs& a, int64_t b) {
  auto h = [&](int i) {
    uint16_t v;
    std::memcpy(&v, a.rows[i] + b * kBytes + kOff, 2);
    return static_cast<int>(v);
  };
  static_assert(kTileRows == 4);
  __m128i v = _mm_cvtsi32_si128(h(0));
  v = _mm_insert_epi16(v, h(1), 1);
  v = _mm_insert_epi16(v, h(2), 2);
  v = _mm_insert_epi16(v, h(3), 3);
  return _mm_cvtph_ps(v);
}

// The two kernels differ only in the dot instruction. Integer ranges: |q| <= 128 (Q8_0) and
// |x16| <= 32639, so a lane (4 products, plus Q4_0's |corr| <= 8 * 4 * 32639) stays below 2^24:
// no int32 overflow (madd's pairs included), and the int32 -> fp32 convert is exact.
#define SGL_INT_KERNEL(NAME, TARGET, DOT)                                                        \
  template <QuantFormat F, int MR>                                                               \
  TARGET void NAME(const IntArgs& a, float res[][kTileRows]) {                                   \
    constexpr int64_t kBytes =                                                                   \
        F == QuantFormat::kQ8_0 ? 34 : (F == QuantFormat::kQ4_1 ? 20 : 18);                      \
    __m256 acc[kTileRows][MR];                                                                   \
    for (auto& row : acc) {                                                                      \
      for (auto& v : row) v = _mm256_setzero_ps();                                               \
    }                                                                                            \
    __m128 min_acc[MR];                                                                          \
    for (auto& v : min_acc) v = _mm_setzero_ps();                                                \
    for (int64_t b = 0; b < a.blocks; ++b) {                                                     \
      /* d_w * s_b of the 4 rows at once; row i's is lane i, broadcast by one permute */         \
      const __m128 d4 = tile_halves<kBytes, 0>(a, b);                                            \
      __m256 scale4[MR];                                                                         \
      for (int r = 0; r < MR; ++r) {                                                             \
        scale4[r] = _mm256_castps128_ps256(_mm_mul_ps(d4, _mm_set1_ps(a.x[r * a.blocks + b].s))); \
      }                                                                                          \
      if constexpr (F == QuantFormat::kQ4_1) {                                                   \
        const __m128 m4 = tile_halves<kBytes, 2>(a, b);                                          \
        for (int r = 0; r < MR; ++r) {                                                           \
          min_acc[r] = _mm_fmadd_ps(m4, _mm_set1_ps(a.x[r * a.blocks + b].sum), min_acc[r]);     \
        }                                                                                        \
      }                                                                                          \
      for (int i = 0; i < kTileRows; ++i) {                                                      \
        const uint8_t* blk = a.rows[i] + b * kBytes;                                             \
        /* the same block one tile (kTileRows rows) ahead: a tile's rows are contiguous, so    \
           this stays one tile's bytes ahead of the stream (8 blocks ahead of each row was    \
           ~10% slower over the demo model's layer GEMVs on Zen 4) */                         \
        _mm_prefetch(reinterpret_cast<const char*>(blk + kTileRows * a.blocks * kBytes),       \
                     _MM_HINT_T0);                                                             \
        __m256i q0, q1;                                                                          \
        block_q16<F>(blk, &q0, &q1);                                                             \
        for (int r = 0; r < MR; ++r) {                                                           \
          const XBlock& xb = a.x[r * a.blocks + b];                                              \
          const __m256i init =                                                                   \
              F == QuantFormat::kQ4_0 ? load_si256(xb.corr) : _mm256_setzero_si256();            \
          const __m256i dot = DOT(init, q0, q1, xb.x16);                                         \
          const __m256 scale = _mm256_permutevar8x32_ps(scale4[r], _mm256_set1_epi32(i));        \
          acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i][r]);                \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
    for (int r = 0; r < MR; ++r) {                                                               \
      float mins[kTileRows];                                                                     \
      _mm_storeu_ps(mins, min_acc[r]);                                                           \
      for (int i = 0; i < kTileRows; ++i) res[r][i] = hsum256(acc[i][r]) + mins[i];              \
    }                                                                                            \
  }

#define SGL_VNNI_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define SGL_DOT_VNNI(init, q0, q1, x)                                                    \
  _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(init, q0, load_si256(x)), q1, load_si256((x) + 16))
#define SGL_DOT_AVX2(init, q0, q1, x)                                           \
  _mm256_add_epi32(_mm256_add_epi32(init, _mm256_madd_epi16(q0, load_si256(x))), \
                   _mm256_madd_epi16(q1, load_si256((x) + 16)))

SGL_INT_KERNEL(int_vnni, SGL_VNNI_TARGET, SGL_DOT_VNNI)
SGL_INT_KERNEL(int_avx2, __attribute__((target("avx2,fma,f16c"))), SGL_DOT_AVX2)

#undef SGL_INT_KERNEL
#undef SGL_DOT_VNNI
#undef SGL_DOT_AVX2

template <QuantFormat F>
void run_int_format(bool vnni, const IntArgs& a, int64_t m, float res[][kTileRows]) {
  static_assert(kIntRowsVnni == 4 && kIntRowsAvx2 == 2);
  if (vnni) {
    switch (m) {
      case 1: int_vnni<F, 1>(a, res); return;
      case 2: int_vnni<F, 2>(a, res); return;
      case 3: int_vnni<F, 3>(a, res); return;
      default: int_vnni<F, 4>(a, res); return;
    }
  } else {
    m == 1 ? int_avx2<F, 1>(a, res) : int_avx2<F, 2>(a, res);
  }
}

struct MatmulArgs {
  QuantFormat fmt;
  FormatInfo f;
  const uint8_t* weight;
  int64_t row_bytes;
  int64_t n;
  int64_t k;
  const float* x;
  int64_t m;
  int64_t ldx;
  const float* bias;
  float* out;
  int64_t ldo;
  CpuIsa isa;
  const XBlock* xq;  // the integer path's quantized x (m rows of k / 32 blocks), or null
  bool vnni;         // the integer path's kernel: int_vnni, else int_avx2
};

/// Writes res (done x rows from r0) to out, plus bias.
void store_tile(const MatmulArgs& a, int64_t j0, int64_t r0, int done, float res[][kTileRows]) {
  const int64_t rows = std::min(kTileRows, a.n - j0);
  for (int r = 0; r < done; ++r) {
    float* o = a.out + (r0 + r) * a.ldo + j0;
    for (int64_t i = 0; i < rows; ++i) o[i] = res[r][i] + (a.bias ? a.bias[j0 + i] : 0.0f);
  }
}

/// The fused path for weight rows [j0, j0 + kTileRows); false when the format/ISA has none.
bool matmul_tile_fused(const MatmulArgs& a, int64_t j0) {
  if (a.isa == CpuIsa::kScalar || a.f.block_size != 32) return false;
  FusedArgs f{{}, a.k / 32, nullptr, a.ldx};
  for (int64_t i = 0; i < kTileRows; ++i) {
    f.rows[i] = a.weight + std::min(j0 + i, a.n - 1) * a.row_bytes;
  }
  float res[kMaxRowsAvx512][kTileRows];
  for (int64_t r0 = 0; r0 < a.m;) {
    f.x = a.x + r0 * a.ldx;
    const int done = run_fused(a.fmt, a.isa, f, a.m - r0, res);
    if (done == 0) return false;  // (only before any output was written: r0 == 0)
    store_tile(a, j0, r0, done, res);
    r0 += done;
  }
  return true;
}

/// Weight rows [j0, j0 + kTileRows) (clipped to n; missing rows are zero) times every x row:
/// the fused decoder when the format / ISA has one, else unpack + micro-kernel.
void matmul_tile(const MatmulArgs& a, int64_t j0) {
  if (a.xq != nullptr) {
    IntArgs t{{}, a.k / 32, a.xq};
    for (int64_t i = 0; i < kTileRows; ++i) {
      t.rows[i] = a.weight + std::min(j0 + i, a.n - 1) * a.row_bytes;
    }
    float res[kIntRowsVnni][kTileRows];
    const int64_t group = a.vnni ? kIntRowsVnni : kIntRowsAvx2;
    const int64_t blocks = a.k / 32;
    for (int64_t r0 = 0; r0 < a.m; r0 += group) {
      const int64_t rows = std::min(group, a.m - r0);
      t.x = a.xq + r0 * blocks;
      switch (a.fmt) {
        case QuantFormat::kQ4_0: run_int_format<QuantFormat::kQ4_0>(a.vnni, t, rows, res); break;
        case QuantFormat::kQ4_1: run_int_format<QuantFormat::kQ4_1>(a.vnni, t, rows, res); break;
        default: run_int_format<QuantFormat::kQ8_0>(a.vnni, t, rows, res); break;
      }
      store_tile(a, j0, r0, static_cast<int>(rows), res);
    }
    return;
  }
  if (matmul_tile_fused(a, j0)) return;
  TileScratch& scratch = tile_scratch();
  scratch.reserve(a.k);
  const int64_t rows = std::min(kTileRows, a.n - j0);
  for (int64_t i = 0; i < kTileRows; ++i) {
    const Unpacked u = scratch.row(i, a.k);
    if (i < rows) {
      unpack_row(a.f, a.weight + (j0 + i) * a.row_bytes, a.k, u);
    } else {
      std::fill_n(u.q, a.k, int8_t{0});
      std::fill_n(u.s, a.k / kChunk, 0.0f);
      std::fill_n(u.o, a.k / kChunk, 0.0f);
    }
  }
  float res[kMaxRowsAvx512][kTileRows];
  for (int64_t r0 = 0; r0 < a.m;) {
    const TileArgs t{scratch.q.data(), scratch.s.data(), scratch.o.data(),
                     a.k,              a.x + r0 * a.ldx, a.ldx};
    const int done = run_tile(a.isa, t, a.m - r0, res);
    store_tile(a, j0, r0, done, res);
    r0 += done;
  }
}

/// Runs fn(item) for item in [0, items) split into contiguous ranges over `threads` threads.
template <typename Fn>
void parallel_ranges(int64_t items, int threads, const Fn& fn) {
  if (threads <= 1) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  ThreadPool::global().parallel_for(threads, threads, [&](int64_t t) {
    const int64_t begin = items * t / threads;
    const int64_t end = items * (t + 1) / threads;
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

}  // namespace

namespace quant_internal {

/// Quantizes x row `x` (k values) into k / 32 XBlocks; `offset` is the weights' zero point (8 for
/// Q4_0, else 0). A block with a non-finite value gets s = NaN (its outputs become NaN, as with
/// the fp32 path). AVX2 (the library's floor); cvtps_epi32 rounds half to even.
void quantize_x_row(const float* x, int64_t k, int32_t offset, XBlock* out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 lim = _mm256_set1_ps(32639.0f);
  const __m256 neg_lim = _mm256_set1_ps(-32639.0f);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* xb = x + b * 32;
    XBlock& q = out[b];
    __m256 v[4];
    __m256 amax8 = _mm256_setzero_ps();
    __m256 nan8 = _mm256_setzero_ps();
    for (int h = 0; h < 4; ++h) {
      v[h] = _mm256_loadu_ps(xb + 8 * h);
      amax8 = _mm256_max_ps(amax8, _mm256_and_ps(v[h], abs_mask));  // (max_ps drops a NaN)
      nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v[h], v[h], _CMP_UNORD_Q));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    const bool finite = std::isfinite(amax) && _mm256_movemask_ps(nan8) == 0;
    q.s = finite ? amax * (1.0f / 32639.0f) : std::numeric_limits<float>::quiet_NaN();
    // |x * inv| <= 32639 up to roundings: the clamp only guards that last ulp.
    const __m256 inv = _mm256_set1_ps(finite && amax > 0.0f ? 32639.0f / amax : 0.0f);
    __m256i i32[4];
    for (int h = 0; h < 4; ++h) {
      const __m256 r = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[h], inv), neg_lim), lim);
      i32[h] = _mm256_cvtps_epi32(r);
    }
    // packs works per 128-bit lane: [0..3 8..11 4..7 12..15] -> permute the 64-bit quarters.
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(i32[0], i32[1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(i32[2], i32[3]), 0xD8);
    _mm256_store_si256(reinterpret_cast<__m256i*>(q.x16), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(q.x16 + 16), hi);
    // Lane l of madd / vpdpwssd over (elements 0..15, elements 16..31) sums these four values.
    const __m256i lanes =
        _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
    _mm256_store_si256(reinterpret_cast<__m256i*>(q.corr),
                       _mm256_mullo_epi32(lanes, _mm256_set1_epi32(-offset)));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    q.sum = q.s * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

void unpack_k_superblock(QuantFormat fmt, const uint8_t* block, int8_t* q, float* s, float* o) {
  if (fmt == QuantFormat::kQ5_K) {
    unpack_q5_k(block, q, s, o);
  } else {
    unpack_q4_k(block, q, s, o);
  }
}

}  // namespace quant_internal

bool quant_format_valid(int32_t fmt) {
  FormatInfo f;
  return format_info(static_cast<QuantFormat>(fmt), &f);
}

int64_t quant_block_size(QuantFormat fmt) {
  FormatInfo f;
  return format_info(fmt, &f) ? f.block_size : 0;
}

int64_t quant_block_bytes(QuantFormat fmt) {
  FormatInfo f;
  return format_info(fmt, &f) ? f.block_bytes : 0;
}

Status quant_matmul_cpu(QuantFormat fmt, const void* weight, int64_t n, int64_t k, const float* x,
                        int64_t m, int64_t ldx, const float* bias, float* out, int64_t ldo,
                        int num_threads) {
  FormatInfo f;
  if (!format_info(fmt, &f) || n < 0 || m < 0 || k <= 0 || k % f.block_size != 0) {
    return Status::kInvalidArgument;
  }
  if ((m > 1 && ldx < k) || (m > 1 && ldo < n) || ldx < 0 || ldo < 0) {
    return Status::kInvalidArgument;
  }
  if (m == 0 || n == 0) return Status::kOk;
  if (weight == nullptr || x == nullptr || out == nullptr) return Status::kInvalidArgument;
  const CpuIsa isa = active_isa();
  // Decode-sized m: x quantized once here, on the calling thread, before the parallel part (the
  // workers only read it; the caller waits for them, so its thread-local buffer outlives them).
  const XBlock* xq = nullptr;
  // VNNI's vpdpwssd on AVX-512 CPUs that have it; AVX-512 without VNNI runs the AVX2 kernel.
  const bool vnni = isa == CpuIsa::kAvx512 && cpu_features().avx512_vnni;
  const int64_t lanes_rows = quant_internal::lanes_gemm_min_rows(isa);
  if (lanes_rows > 0 && m >= lanes_rows && quant_internal::lanes_gemm_format(fmt)) {
    quant_internal::lanes_gemm(fmt, isa, static_cast<const uint8_t*>(weight), n, k, x, m, ldx,
                               bias, out, ldo, num_threads);
    return Status::kOk;
  }
  if (use_int_path(fmt, isa, vnni, m)) {
    thread_local std::vector<XBlock> xbuf;
    const int64_t blocks = k / 32;
    xbuf.resize(static_cast<size_t>(m * blocks));
    const int32_t offset = fmt == QuantFormat::kQ4_0 ? 8 : 0;
    for (int64_t r = 0; r < m; ++r) {
      quantize_x_row(x + r * ldx, k, offset, xbuf.data() + r * blocks);
    }
    xq = xbuf.data();
  }
  const MatmulArgs a{.fmt = fmt,
                     .f = f,
                     .weight = static_cast<const uint8_t*>(weight),
                     .row_bytes = k / f.block_size * f.block_bytes,
                     .n = n,
                     .k = k,
                     .x = x,
                     .m = m,
                     .ldx = ldx,
                     .bias = bias,
                     .out = out,
                     .ldo = ldo,
                     .isa = isa,
                     .xq = xq,
                     .vnni = vnni};
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const int threads = plan_threads(tiles, kTileRows * k * m, num_threads);
  parallel_ranges(tiles, threads, [&](int64_t t) { matmul_tile(a, t * kTileRows); });
  return Status::kOk;
}

int64_t quant_matmul_rows_per_pass() {
  switch (active_isa()) {
    case CpuIsa::kAvx512: return kMaxRowsAvx512;
    case CpuIsa::kAvx2: return kMaxRowsAvx2;
    default: return kMaxRowsAvx512;  // the scalar path uses the same grouping
  }
}

Status dequantize_cpu(QuantFormat fmt, const void* weight, int64_t n, int64_t k, float* out,
                      int64_t ldo, int num_threads) {
  FormatInfo f;
  if (!format_info(fmt, &f) || n < 0 || k <= 0 || k % f.block_size != 0 || ldo < 0 ||
      (n > 1 && ldo < k)) {
    return Status::kInvalidArgument;
  }
  if (n == 0) return Status::kOk;
  if (weight == nullptr || out == nullptr) return Status::kInvalidArgument;
  const auto* w = static_cast<const uint8_t*>(weight);
  const int64_t row_bytes = k / f.block_size * f.block_bytes;
  const int threads = plan_threads(n, k, num_threads);
  parallel_ranges(n, threads, [&](int64_t j) {
    TileScratch& scratch = tile_scratch();
    scratch.reserve(k);
    const Unpacked u = scratch.row(0, k);
    unpack_row(f, w + j * row_bytes, k, u);
    float* y = out + j * ldo;
    // Multiply, then add (not fused): the reference's rounding, so the result is bit-exact.
    for (int64_t c = 0; c < k; c += kChunk) {
      const __m256 s = _mm256_broadcast_ss(u.s + c / kChunk);
      const __m256 o = _mm256_broadcast_ss(u.o + c / kChunk);
      const __m128i qi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u.q + c));
      const __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qi));
      const __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(qi, 8)));
      _mm256_storeu_ps(y + c, _mm256_add_ps(_mm256_mul_ps(q0, s), o));
      _mm256_storeu_ps(y + c + 8, _mm256_add_ps(_mm256_mul_ps(q1, s), o));
    }
  });
  return Status::kOk;
}

Status quantize_q8_0_cpu(const float* w, int64_t n, int64_t k, void* out, int num_threads) {
  if (n < 0 || k <= 0 || k % 32 != 0) return Status::kInvalidArgument;
  if (n == 0) return Status::kOk;
  if (w == nullptr || out == nullptr) return Status::kInvalidArgument;
  const int64_t blocks = k / 32;
  auto* dst = static_cast<uint8_t*>(out);
  const int threads = plan_threads(n, k, num_threads);
  parallel_ranges(n, threads, [&](int64_t j) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* src = w + j * k + b * 32;
      uint8_t* blk = dst + (j * blocks + b) * 34;
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(src[i]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const uint16_t dh = f2h(d);
      std::memcpy(blk, &dh, 2);
      for (int i = 0; i < 32; ++i) {
        blk[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(src[i] * id)));
      }
    }
  });
  return Status::kOk;
}

}  // namespace sglang::kernels
