// The batched integer GEMM of Q4_0 / Q4_1 / Q8_0 weights ("rows in lanes"): prefill chunks and
// large decode batches. Semantics as quant_matmul_cpu (sglang/kernels/quant.h), same numerics as
// its decode-sized integer path: each 32-value block of an x row is rounded to 16 bits
// (quantize_x_row: s_b = max|x_b| / 32639), the block dot products with the weights' integer q
// are exact in int32, and each is scaled by d_w * s_b into fp32 accumulators.
//
// Layout. The decode path puts k in the SIMD lanes and reduces horizontally at the end; that
// costs a reduction per (x row, weight row) and decodes the weights again for every 4 x rows.
// Here the lanes hold x rows instead (L = 16 per zmm, 8 per ymm):
//   * x is packed once per call into tiles of L rows: for block b and pair p (elements 2p, 2p+1
//     of the block), one vector of L int32 lanes, lane r = the two int16 of row r. Plus the L
//     scales s_b and the L min-term sums (s_b * sum(x16)) of the block.
//   * the weights are decoded once per call (per x chunk), a panel of kPanelCols weight rows at
//     a time, into int16 in natural order (a straight widening of each block, no shuffles)
//     plus per-block d and m: pair p of a weight row is one int32, which the micro-kernel
//     broadcasts to all lanes (an embedded-broadcast memory operand), one pointer per row.
//     (An interleaved panel, pairs of the NC rows side by side, needed NC x NC permutes per
//     block to build and was 10-18% slower at 16-32 rows on Zen 4.)
//   * micro-kernel: RM x-row vectors x NC weight rows of int32 accumulators. Per pair: RM loads,
//     NC broadcasts, RM * NC vpdpwssd (AVX-512 VNNI) or madd + add (AVX2). Per block: each
//     accumulator is converted and FMAed into an fp32 accumulator with s_b (a vector: one per
//     row) times d_w (a broadcast), plus Q4_1's m_w * sum(x) term; no horizontal reductions.
// Integer ranges: |x16| <= 32639 and |q| <= 128, 32 products per block: |dot| < 2^27, so int32
// never overflows (madd's pair sums included); the int32 -> fp32 convert rounds above 2^24
// (relative 6e-8, well inside the 1e-4 contract).
//
// Loop order per work item (a weight panel x a chunk of x tiles): decode the panel (L2), then
// for each group of RM x tiles (L1: K * 4 bytes per 16 rows) run the micro-kernel over the
// panel's weight rows NC at a time. Padding: x rows past m are zero, weight rows past n are
// zero; their results are never stored.

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_cpu_impl.h"
#include "sglang/kernels/thread_pool.h"

namespace sglang::kernels::quant_internal {

namespace {

constexpr int64_t kPairs = 16;       // int16 pairs per 32-value block
constexpr int64_t kPanelCols = 48;   // weight rows decoded per panel (a multiple of every NC)
constexpr int64_t kChunkBytes = 256 << 10;  // packed x per work item: a fraction of any L2

#define SGL_LANES_VNNI_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

/// The ops of the micro-kernel on one ISA path: L lanes of int32 / fp32.
struct Avx512Vnni {
  static constexpr int64_t L = 16;
  // 2 x 6 int32 + 2 x 6 fp32 accumulators of 32 zmm. (3 x 4 was as fast at 512 rows and
  // ~25% slower at 32, the bs 32 decode step's size: 8 dot products per pair instead of 12.)
  static constexpr int RM = 2;
  static constexpr int NC = 6;
  using VI = __m512i;
  using VF = __m512;
  SGL_LANES_VNNI_TARGET static inline VI zero_i() { return _mm512_setzero_si512(); }
  SGL_LANES_VNNI_TARGET static inline VF zero_f() { return _mm512_setzero_ps(); }
  SGL_LANES_VNNI_TARGET static inline VI load_i(const int32_t* p) {
    return _mm512_loadu_si512(p);
  }
  SGL_LANES_VNNI_TARGET static inline VF load_f(const float* p) { return _mm512_loadu_ps(p); }
  SGL_LANES_VNNI_TARGET static inline VI bcast_i(const int32_t* p) {
    return _mm512_set1_epi32(*p);
  }
  SGL_LANES_VNNI_TARGET static inline VF bcast_f(const float* p) { return _mm512_set1_ps(*p); }
  SGL_LANES_VNNI_TARGET static inline VI dot(VI acc, VI x, VI w) {
    return _mm512_dpwssd_epi32(acc, x, w);
  }
  SGL_LANES_VNNI_TARGET static inline VF scale_acc(VI acc, VF s, VF d, VF f) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(s, d), f);
  }
  SGL_LANES_VNNI_TARGET static inline VF fmadd(VF a, VF b, VF c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  SGL_LANES_VNNI_TARGET static inline void store_f(float* p, VF v) { _mm512_storeu_ps(p, v); }
};

struct Avx2 {
  static constexpr int64_t L = 8;
  static constexpr int RM = 1;  // 1 x 4 int32 + 1 x 4 fp32 accumulators of 16 ymm
  static constexpr int NC = 4;
  using VI = __m256i;
  using VF = __m256;
  static inline VI zero_i() { return _mm256_setzero_si256(); }
  static inline VF zero_f() { return _mm256_setzero_ps(); }
  static inline VI load_i(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static inline VF load_f(const float* p) { return _mm256_loadu_ps(p); }
  static inline VI bcast_i(const int32_t* p) { return _mm256_set1_epi32(*p); }
  static inline VF bcast_f(const float* p) { return _mm256_broadcast_ss(p); }
  static inline VI dot(VI acc, VI x, VI w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
  }
  static inline VF scale_acc(VI acc, VF s, VF d, VF f) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(s, d), f);
  }
  static inline VF fmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
  static inline void store_f(float* p, VF v) { _mm256_storeu_ps(p, v); }
};

/// One packed x tile of L rows, block b at `tile + b * block_ints(L)`: kPairs vectors of L int32
/// (the pairs), then L floats s_b, then L floats s_b * sum(x16).
constexpr int64_t block_ints(int64_t lanes) { return (kPairs + 2) * lanes; }

/// The decoded weight panel: kPanelCols weight rows of k int16 q each (natural order; Q4_0's
/// q - 8), viewed as int32 pairs (the micro-kernel broadcasts pair p of a row to all lanes), and
/// per (group of nc rows, block, row in the group) d and m, so one broadcast address walks them.
struct Panel {
  std::vector<int32_t> q;
  std::vector<float> d;
  std::vector<float> m;
  void reserve(int64_t k) {
    q.resize(static_cast<size_t>(kPanelCols * k / 2));
    d.resize(static_cast<size_t>(kPanelCols * (k / 32)));
    m.resize(static_cast<size_t>(kPanelCols * (k / 32)));
  }
};

/// The 32 q of one block as int16 in natural order (block_q16; Q4_0 minus 8), and its d and m.
template <QuantFormat F>
inline void decode_block(const uint8_t* blk, int16_t* q, float* d, float* m) {
  __m256i q0, q1;
  block_q16<F>(blk, &q0, &q1);
  if constexpr (F == QuantFormat::kQ4_0) {
    q0 = _mm256_sub_epi16(q0, _mm256_set1_epi16(8));
    q1 = _mm256_sub_epi16(q1, _mm256_set1_epi16(8));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), q0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16), q1);
  *d = h2f(blk);
  *m = F == QuantFormat::kQ4_1 ? h2f(blk + 2) : 0.0f;
}

/// A 32-value-format weight row into the panel: q natural order, d / m every nc floats.
template <QuantFormat F>
void decode_row(const uint8_t* row, int64_t blocks, int64_t nc, int16_t* q, float* d, float* m) {
  constexpr int64_t kBytes = F == QuantFormat::kQ8_0 ? 34 : (F == QuantFormat::kQ4_1 ? 20 : 18);
  for (int64_t b = 0; b < blocks; ++b) {
    decode_block<F>(row + b * kBytes, q + b * 32, d + b * nc, m + b * nc);
  }
}

/// Weight rows [j0, j0 + kPanelCols) (zero past n) into the panel (d and m in groups of nc).
void decode_panel(QuantFormat fmt, const uint8_t* weight, int64_t n, int64_t k, int64_t j0,
                  int64_t nc, Panel* panel) {
  const int64_t blocks = k / 32;
  const bool k_quant = fmt == QuantFormat::kQ4_K;
  const int64_t per_block = k_quant ? 8 : 1;  // 32-value blocks per stored block
  const int64_t bytes = quant_block_bytes(fmt);
  const int64_t row_bytes = blocks / per_block * bytes;
  alignas(32) int8_t q8[256];
  alignas(32) float s16[16];
  alignas(32) float o16[16];
  for (int64_t c = 0; c < kPanelCols; ++c) {
    int16_t* q = reinterpret_cast<int16_t*>(panel->q.data()) + c * k;
    // Row c's d and m of block b at [(g * blocks + b) * nc + c % nc] (g = c / nc).
    float* d = panel->d.data() + (c / nc) * blocks * nc + c % nc;
    float* m = panel->m.data() + (c / nc) * blocks * nc + c % nc;
    if (j0 + c >= n) {
      std::memset(q, 0, static_cast<size_t>(k) * sizeof(int16_t));  // (the panel is int32 storage)
      for (int64_t b = 0; b < blocks; ++b) d[b * nc] = m[b * nc] = 0.0f;
      continue;
    }
    const uint8_t* row = weight + (j0 + c) * row_bytes;
    if (!k_quant) {
      switch (fmt) {
        case QuantFormat::kQ4_0: decode_row<QuantFormat::kQ4_0>(row, blocks, nc, q, d, m); break;
        case QuantFormat::kQ4_1: decode_row<QuantFormat::kQ4_1>(row, blocks, nc, q, d, m); break;
        default: decode_row<QuantFormat::kQ8_0>(row, blocks, nc, q, d, m); break;
      }
      continue;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t sub = b % per_block;  // 32-value sub-block of the K-quant superblock
      if (sub == 0) unpack_k_superblock(fmt, row + b / per_block * bytes, q8, s16, o16);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * sub));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32),
                          _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32 + 16),
                          _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
      d[b * nc] = s16[2 * sub];
      m[b * nc] = o16[2 * sub];
    }
  }
}

/// x rows [t * lanes, t * lanes + lanes) (zero past m) into tile t.
void pack_tile(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t lanes, int64_t t,
               int32_t* tile) {
  const int64_t blocks = k / 32;
  thread_local std::vector<XBlock> row;
  row.resize(static_cast<size_t>(blocks));
  for (int64_t r = 0; r < lanes; ++r) {
    const int64_t i = t * lanes + r;
    if (i < m) {
      quantize_x_row(x + i * ldx, k, 0, row.data());
    } else {
      std::memset(static_cast<void*>(row.data()), 0, row.size() * sizeof(XBlock));
    }
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t* blk = tile + b * block_ints(lanes);
      const XBlock& xb = row[static_cast<size_t>(b)];
      for (int64_t p = 0; p < kPairs; ++p) std::memcpy(blk + p * lanes + r, xb.x16 + 2 * p, 4);
      std::memcpy(blk + kPairs * lanes + r, &xb.s, 4);
      std::memcpy(blk + (kPairs + 1) * lanes + r, &xb.sum, 4);
    }
  }
}

/// The micro-kernel: res[c][r * L + lane] = sum over k of x row (tile r, lane) times weight row
/// c, for RM_ x tiles and V::NC weight rows of the panel starting at `wq` / `wd` / `wm`.
#define SGL_LANES_KERNEL(TARGET, V)                                                          \
  template <bool kMin, int RM_>                                                              \
  TARGET void micro_kernel(const int32_t* const* tiles, const int32_t* wq, const float* wd,  \
                           const float* wm, int64_t k, float* res) {                         \
    constexpr int NC = V::NC;                                                                \
    constexpr int64_t L = V::L;                                                              \
    const int64_t blocks = k / 32;                                                           \
    typename V::VF f[RM_][NC];                                                               \
    for (auto& row : f) {                                                                    \
      for (auto& v : row) v = V::zero_f();                                                   \
    }                                                                                        \
    for (int64_t b = 0; b < blocks; ++b) {                                                   \
      typename V::VI acc[RM_][NC];                                                           \
      for (auto& row : acc) {                                                                \
        for (auto& v : row) v = V::zero_i();                                                 \
      }                                                                                      \
      const int32_t* wc[NC];                                                                 \
      for (int c = 0; c < NC; ++c) wc[c] = wq + c * (k / 2) + b * kPairs;                    \
      _Pragma("GCC unroll 16") for (int64_t p = 0; p < kPairs; ++p) {                        \
        typename V::VI xv[RM_];                                                              \
        for (int r = 0; r < RM_; ++r) {                                                      \
          xv[r] = V::load_i(tiles[r] + b * block_ints(L) + p * L);                           \
        }                                                                                    \
        for (int c = 0; c < NC; ++c) {                                                       \
          const typename V::VI w = V::bcast_i(wc[c] + p);                                    \
          for (int r = 0; r < RM_; ++r) acc[r][c] = V::dot(acc[r][c], xv[r], w);             \
        }                                                                                    \
      }                                                                                      \
      for (int r = 0; r < RM_; ++r) {                                                        \
        const int32_t* blk = tiles[r] + b * block_ints(L);                                   \
        const typename V::VF s = V::load_f(reinterpret_cast<const float*>(blk + kPairs * L)); \
        for (int c = 0; c < NC; ++c) {                                                       \
          f[r][c] = V::scale_acc(acc[r][c], s, V::bcast_f(wd + b * NC + c), f[r][c]);        \
        }                                                                                    \
        if constexpr (kMin) {                                                                \
          const typename V::VF sum =                                                         \
              V::load_f(reinterpret_cast<const float*>(blk + (kPairs + 1) * L));             \
          for (int c = 0; c < NC; ++c) {                                                     \
            f[r][c] = V::fmadd(sum, V::bcast_f(wm + b * NC + c), f[r][c]);                  \
          }                                                                                  \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
    for (int r = 0; r < RM_; ++r) {                                                          \
      for (int c = 0; c < NC; ++c) V::store_f(res + c * RM_ * L + r * L, f[r][c]);           \
    }                                                                                        \
  }

namespace vnni {
using V = Avx512Vnni;
SGL_LANES_KERNEL(SGL_LANES_VNNI_TARGET, V)
}  // namespace vnni
namespace avx2 {
using V = Avx2;
SGL_LANES_KERNEL(, V)
}  // namespace avx2
#undef SGL_LANES_KERNEL

struct GemmArgs {
  QuantFormat fmt;
  const uint8_t* weight;
  int64_t n, k, m;
  const int32_t* xt;  // the packed x tiles
  const float* bias;
  float* out;
  int64_t ldo;
};

/// Writes res[c * rows + i] (the micro-kernel's column-major tile, `rows` x rows from row i0,
/// NC weight rows from j) to out, plus bias; rows past m and weight rows past n are dropped.
template <int NC>
void store_tile(const GemmArgs& a, int64_t j, int64_t i0, int64_t rows, const float* res) {
  float bias[NC];
  for (int c = 0; c < NC; ++c) bias[c] = a.bias != nullptr && j + c < a.n ? a.bias[j + c] : 0.0f;
  const int64_t valid = std::min(rows, a.m - i0);
  if (j + NC <= a.n) {
    for (int64_t i = 0; i < valid; ++i) {
      float* o = a.out + (i0 + i) * a.ldo + j;
      for (int c = 0; c < NC; ++c) o[c] = res[c * rows + i] + bias[c];
    }
    return;
  }
  for (int64_t i = 0; i < valid; ++i) {
    float* o = a.out + (i0 + i) * a.ldo + j;
    for (int64_t c = 0; c < a.n - j; ++c) o[c] = res[c * rows + i] + bias[c];
  }
}

/// Runs weight panel j0 against x tiles [t0, t1) on ISA traits V.
template <typename V>
void run_item(const GemmArgs& a, int64_t j0, int64_t t0, int64_t t1) {
  constexpr int64_t L = V::L;
  constexpr int NC = V::NC;
  static_assert(kPanelCols % NC == 0);
  thread_local Panel panel;
  panel.reserve(a.k);
  decode_panel(a.fmt, a.weight, a.n, a.k, j0, NC, &panel);
  const int64_t blocks = a.k / 32;
  const int64_t tile_ints = blocks * block_ints(L);
  float res[NC * V::RM * L];
  for (int64_t t = t0; t < t1; t += V::RM) {
    const int rm = static_cast<int>(std::min<int64_t>(V::RM, t1 - t));
    const int32_t* tiles[V::RM];
    for (int r = 0; r < V::RM; ++r) tiles[r] = a.xt + std::min(t + r, t1 - 1) * tile_ints;
    for (int64_t c0 = 0; c0 < kPanelCols && j0 + c0 < a.n; c0 += NC) {
      const int32_t* wq = panel.q.data() + c0 * a.k / 2;
      const float* wd = panel.d.data() + c0 * blocks;
      const float* wm = panel.m.data() + c0 * blocks;
      const bool min_term = a.fmt != QuantFormat::kQ4_0 && a.fmt != QuantFormat::kQ8_0;
      if constexpr (std::is_same_v<V, Avx512Vnni>) {
        static_assert(V::RM == 2);
        if (rm == 2) {
          min_term ? vnni::micro_kernel<true, 2>(tiles, wq, wd, wm, a.k, res)
                   : vnni::micro_kernel<false, 2>(tiles, wq, wd, wm, a.k, res);
        } else {
          min_term ? vnni::micro_kernel<true, 1>(tiles, wq, wd, wm, a.k, res)
                   : vnni::micro_kernel<false, 1>(tiles, wq, wd, wm, a.k, res);
        }
      } else {
        min_term ? avx2::micro_kernel<true, V::RM>(tiles, wq, wd, wm, a.k, res)
                 : avx2::micro_kernel<false, V::RM>(tiles, wq, wd, wm, a.k, res);
      }
      store_tile<NC>(a, j0 + c0, t * L, rm * L, res);
    }
  }
}

template <typename V>
void gemm(QuantFormat fmt, const uint8_t* weight, int64_t n, int64_t k, const float* x,
          int64_t m, int64_t ldx, const float* bias, float* out, int64_t ldo, int num_threads) {
  constexpr int64_t L = V::L;
  const int64_t blocks = k / 32;
  const int64_t tiles = (m + L - 1) / L;
  const int64_t tile_ints = blocks * block_ints(L);
  // The caller waits for the workers, so its thread-local buffer outlives their reads.
  thread_local std::vector<int32_t> xt;
  xt.resize(static_cast<size_t>(tiles * tile_ints));
  int32_t* xt_data = xt.data();
  const int pack_threads = plan_threads(tiles, L * k * 8, num_threads);
  auto pack = [&](int64_t t) { pack_tile(x, m, ldx, k, L, t, xt_data + t * tile_ints); };
  if (pack_threads <= 1) {
    for (int64_t t = 0; t < tiles; ++t) pack(t);
  } else {
    ThreadPool::global().parallel_for(tiles, pack_threads, pack);
  }
  const GemmArgs a{fmt, weight, n, k, m, xt_data, bias, out, ldo};
  // Work items: (x chunk, weight panel) pairs. A chunk is at most kChunkBytes of packed x, so it
  // stays in the L2 while every panel passes over it (a whole 4096-row prefill would stream
  // from L3 once per panel: 115 vs 150 GMAC/s measured on Zen 4); each chunk decodes every panel
  // once more, which costs ~1/3 of the micro-kernel at 32 rows, so ~3% at a full chunk. Fewer
  // panels than threads can share evenly also split the x tiles. Items run chunk-major, so the
  // threads work on one chunk at a time.
  const int64_t panels = (n + kPanelCols - 1) / kPanelCols;
  const int threads = plan_threads(panels * tiles, kPanelCols * k * L, num_threads);
  const int64_t tile_bytes = tile_ints * static_cast<int64_t>(sizeof(int32_t));
  int64_t chunk_tiles = std::max<int64_t>(V::RM, kChunkBytes / tile_bytes / V::RM * V::RM);
  int64_t chunks = (tiles + chunk_tiles - 1) / chunk_tiles;
  while (panels * chunks < 4 * threads && chunk_tiles > V::RM) {
    chunk_tiles = std::max<int64_t>(V::RM, (chunk_tiles / 2 + V::RM - 1) / V::RM * V::RM);
    chunks = (tiles + chunk_tiles - 1) / chunk_tiles;
  }
  const int64_t items = panels * chunks;
  auto item = [&](int64_t i) {
    const int64_t t0 = (i / panels) * chunk_tiles;
    const int64_t t1 = std::min(tiles, t0 + chunk_tiles);
    if (t0 < t1) run_item<V>(a, (i % panels) * kPanelCols, t0, t1);
  };
  if (threads <= 1) {
    for (int64_t i = 0; i < items; ++i) item(i);
  } else {
    ThreadPool::global().parallel_for(items, threads, item);
  }
}

}  // namespace

bool lanes_gemm_format(QuantFormat fmt) {
  switch (fmt) {
    case QuantFormat::kQ4_0:
    case QuantFormat::kQ4_1:
    case QuantFormat::kQ8_0:
    case QuantFormat::kQ4_K: return true;
    // Q5_K would fit the kernel too, but its 5-bit q spread the 16-bit rounding of x over more
    // weight range: 1.3e-4 of max |out| on a block with one 1000x outlier, over the contract.
    // Q6_K: 16-value sub-blocks with their own scales.
    default: return false;
  }
}

int64_t lanes_gemm_min_rows(CpuIsa isa) {
  // VNNI: one full zmm of rows (measured on Zen 4 at m = 16: 1.5x the decode path's groups of 4
  // rows). AVX2: the ymm kernel holds one row register (16 registers) and its panel decode is
  // scalar, which it amortizes from 4 row registers on (forced AVX2 on Zen 4: 0.85x at m = 16,
  // 1.1x at m = 32, 1.7x at m = 512).
  if (isa == CpuIsa::kAvx512 && cpu_features().avx512_vnni) return Avx512Vnni::L;
  if (isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx2) return 4 * Avx2::L;
  return 0;
}

void lanes_gemm(QuantFormat fmt, CpuIsa isa, const uint8_t* weight, int64_t n, int64_t k,
                const float* x, int64_t m, int64_t ldx, const float* bias, float* out, int64_t ldo,
                int num_threads) {
  if (isa == CpuIsa::kAvx512 && cpu_features().avx512_vnni) {
    gemm<Avx512Vnni>(fmt, weight, n, k, x, m, ldx, bias, out, ldo, num_threads);
  } else {
    gemm<Avx2>(fmt, weight, n, k, x, m, ldx, bias, out, ldo, num_threads);
  }
}

}  // namespace sglang::kernels::quant_internal
