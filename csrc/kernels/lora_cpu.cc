// CPU kernel of the segmented multi-LoRA update (see sglang/kernels/lora.h).
//
// The rows of the adapter segments are grouped by slot (a counting sort over the segments, so
// a batch that alternates adapters still reads each adapter once) and cut into pieces of at
// most kRowBlock rows of one slot; the pieces run on the calling thread, or on the thread pool
// when the batch carries enough work. For each piece with slot s and rank k:
//   shrink: t[n, j] = scaling[s] * dot(A[s, j, :], x[n, :]) for j < k, fp32 in thread scratch
//           (register tiles of 4 rows x 4 (AVX-512) or 2 (AVX2) ranks, so each loaded vector of
//           x or A feeds several FMAs);
//   expand: for each block of W outputs the [W, k] tile of B is transposed once, in registers,
//           into k vectors tile[j] = B[s, o0 .. o0 + W, j]; then every row of the piece does
//           y[n, o0 .. o0 + W] += sum_j t[n, j] * tile[j] (an axpy over the outputs, 8 rows
//           at a time, fp32, y rounded to its dtype once). The transposition (~3 shuffles per 8
//           elements of B) is shared by the rows of the piece, and B is read row by row, never
//           gathered.
//
// Vector code: GCC vector extensions, written once for W lanes. Every kernel function is an
// always_inline template; two entry points instantiate them, one compiled for the build's AVX2
// floor (W = 8) and one with an AVX-512 target attribute (W = 16), and inlining gives each
// instruction its entry's target. The launcher picks the entry from active_isa() on every call
// (the "scalar" cap runs the AVX2 code, as the other kernels do).

// Vectors are passed between always_inline functions only, so no call ever uses the AVX-512
// argument ABI that -Wpsabi warns about.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "sglang/kernels/lora.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops_cpu_impl.h"
#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/dtype.h"

namespace sglang::kernels {

namespace {

#define SGL_LORA_INLINE [[gnu::always_inline]] inline

/// Rows of one piece processed together (bounds the scratch; B tiles are shared by them).
constexpr int64_t kRowBlock = 64;
/// Ranks per transposed tile of B.
constexpr int kRankTile = 8;

template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef uint32_t U __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
  typedef uint16_t H __attribute__((vector_size(2 * W)));
};
template <int W>
using vf = typename Vec<W>::F;

// ---- loads, stores, reductions ------------------------------------------------------------------

template <int W>
SGL_LORA_INLINE vf<W> load(const float* p) {
  vf<W> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

/// W bf16 values widened to fp32 (exact).
template <int W>
SGL_LORA_INLINE vf<W> load(const uint16_t* p) {
  typename Vec<W>::H h;
  std::memcpy(&h, p, sizeof(h));
  return reinterpret_cast<vf<W>>(__builtin_convertvector(h, typename Vec<W>::U) << 16);
}

template <int W>
SGL_LORA_INLINE void store(float* p, const vf<W>& v) {
  std::memcpy(p, &v, sizeof(v));
}

/// Rounds to bf16, nearest even (NaN stays a quiet NaN), as float_to_bf16 does per element.
template <int W>
SGL_LORA_INLINE void store(uint16_t* p, const vf<W>& v) {
  using U = typename Vec<W>::U;
  using I = typename Vec<W>::I;
  const U u = reinterpret_cast<U>(v);
  const U rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const U quiet = (u >> 16) | 0x40u;
  const U r = reinterpret_cast<I>(u & 0x7FFFFFFFu) > 0x7F800000 ? quiet : rounded;
  const typename Vec<W>::H h = __builtin_convertvector(r, typename Vec<W>::H);
  std::memcpy(p, &h, sizeof(h));
}

template <int W>
SGL_LORA_INLINE float hsum(const vf<W>& v) {
  if constexpr (W == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    vf<W / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hsum<W / 2>(lo + hi);
  }
}

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

// ---- transposition of an [W, 8] tile ------------------------------------------------------------

/// Lanes I... of the concatenation a ++ b (constant indices, so one or two shuffle instructions).
template <int W, int... I>
SGL_LORA_INLINE vf<W> shuffle(const vf<W>& a, const vf<W>& b) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(a, b, I...);
#else  // GCC 11 has only the mask-vector form
  return __builtin_shuffle(a, b, typename Vec<W>::I{I...});
#endif
}

/// Rows r[0..7] (8 lanes each) -> columns, in place: r[j][o] = old r[o][j]. The classic AVX2
/// sequence (unpack, shufps, 128-bit permutes: 24 single-instruction shuffles).
SGL_LORA_INLINE void transpose_8x8(vf<8>* r) {
  vf<8> t[8], s[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = shuffle<8, 0, 8, 1, 9, 4, 12, 5, 13>(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = shuffle<8, 2, 10, 3, 11, 6, 14, 7, 15>(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const vf<8>& a = t[4 * h + i];
      const vf<8>& b = t[4 * h + i + 2];
      s[4 * h + 2 * i] = shuffle<8, 0, 1, 8, 9, 4, 5, 12, 13>(a, b);
      s[4 * h + 2 * i + 1] = shuffle<8, 2, 3, 10, 11, 6, 7, 14, 15>(a, b);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = shuffle<8, 0, 1, 2, 3, 8, 9, 10, 11>(s[j], s[4 + j]);
    r[4 + j] = shuffle<8, 4, 5, 6, 7, 12, 13, 14, 15>(s[j], s[4 + j]);
  }
}

template <int W, int... I>
SGL_LORA_INLINE void unzip(const vf<W>& a, const vf<W>& b, vf<W>& even, vf<W>& odd,
                           std::integer_sequence<int, I...>) {
  even = shuffle<W, (2 * I)...>(a, b);
  odd = shuffle<W, (2 * I + 1)...>(a, b);
}

/// v[0..7] hold the [W, 8] row-major tile (element (o, j) at flat position 8 * o + j of the
/// concatenation v[0] ++ ... ++ v[7]); afterwards v[j][o] = (o, j). Each round deinterleaves the
/// whole sequence (evens, then odds), which rotates the position bits right by one; three rounds
/// move j from the low bits to the top. 24 two-source permutes (vpermt2ps on AVX-512).
template <int W>
SGL_LORA_INLINE void transpose_tile(vf<W>* v) {
  if constexpr (W == 8) {
    transpose_8x8(v);
  } else {
#pragma GCC unroll 3
    for (int round = 0; round < 3; ++round) {
      vf<W> t[8];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        unzip<W>(v[2 * i], v[2 * i + 1], t[i], t[4 + i], std::make_integer_sequence<int, W>());
      }
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) v[i] = t[i];
    }
  }
}

/// 8 consecutive values at p (W == 8), or 8 at p then 8 at p + stride (W == 16), as fp32.
template <int W, typename T>
SGL_LORA_INLINE vf<W> load_b_rows(const T* p, int64_t stride) {
  if constexpr (W == 8) {
    return load<8>(p);
  } else {
    static_assert(W == 16);
    const vf<8> halves[2] = {load<8>(p), load<8>(p + stride)};
    vf<16> v;
    std::memcpy(&v, halves, sizeof(v));
    return v;
  }
}

// ---- one piece ----------------------------------------------------------------------------------

/// A piece: up to kRowBlock rows of the batch that use one slot (their indices in `rows`, from
/// one or several segments), with the slot's A [k, in] and B [out, max_rank].
template <typename T>
struct Piece {
  const T* x;  // x row 0
  int64_t x_stride;
  T* y;  // y row 0
  int64_t y_stride;
  const int32_t* rows;
  int64_t num_rows;
  int64_t in;
  int64_t out;
  const T* a;  // A[s]
  const T* b;  // B[s]
  int64_t max_rank;
  int64_t rank;  // > 0
  float scale;

  const T* x_row(int64_t n) const { return x + rows[n] * x_stride; }
  T* y_row(int64_t n) const { return y + rows[n] * y_stride; }
};

/// Ranks per shrink register tile: 4 rows x 4 ranks = 16 accumulators on AVX-512 (32 registers),
/// 4 x 2 on AVX2 (16 registers).
template <int W>
constexpr int kShrinkRanks = W == 16 ? 4 : 2;

/// t[j + jj, n0 + n] (piece rows n0 + n < n0 + NR, ranks jj < NJ) = scale * dot(A[j + jj], x).
template <int W, int NR, int NJ, typename T>
SGL_LORA_INLINE void shrink_tile(const Piece<T>& p, int64_t n0, int64_t j, float* t) {
  const T* xr[NR];
  const T* aj[NJ];
#pragma GCC unroll 4
  for (int n = 0; n < NR; ++n) xr[n] = p.x_row(n0 + n);
#pragma GCC unroll 4
  for (int jj = 0; jj < NJ; ++jj) aj[jj] = p.a + (j + jj) * p.in;
  vf<W> acc[NR][NJ] = {};
  int64_t i = 0;
  for (; i + W <= p.in; i += W) {
    vf<W> av[NJ];
#pragma GCC unroll 4
    for (int jj = 0; jj < NJ; ++jj) av[jj] = load<W>(aj[jj] + i);
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) {
      const vf<W> xv = load<W>(xr[n] + i);
#pragma GCC unroll 4
      for (int jj = 0; jj < NJ; ++jj) acc[n][jj] += xv * av[jj];
    }
  }
#pragma GCC unroll 4
  for (int n = 0; n < NR; ++n) {
#pragma GCC unroll 4
    for (int jj = 0; jj < NJ; ++jj) {
      float sum = hsum<W>(acc[n][jj]);
      for (int64_t c = i; c < p.in; ++c) sum += ld(xr[n], c) * ld(aj[jj], c);
      t[(j + jj) * kRowBlock + n0 + n] = sum * p.scale;
    }
  }
}

template <int W, int NR, typename T>
SGL_LORA_INLINE void shrink_rows(const Piece<T>& p, int64_t n0, float* t) {
  constexpr int kJ = kShrinkRanks<W>;
  int64_t j = 0;
  for (; j + kJ <= p.rank; j += kJ) shrink_tile<W, NR, kJ>(p, n0, j, t);
  for (; j < p.rank; ++j) shrink_tile<W, NR, 1>(p, n0, j, t);
}

/// t [k, kRowBlock] (rank-major, so the expand broadcasts a row tile's t[j] from one base
/// pointer) = scaling * A[:k] @ x^T for the piece's rows.
template <int W, typename T>
SGL_LORA_INLINE void shrink(const Piece<T>& p, float* t) {
  int64_t n = 0;
  for (; n + 4 <= p.num_rows; n += 4) shrink_rows<W, 4>(p, n, t);
  for (; n + 2 <= p.num_rows; n += 2) shrink_rows<W, 2>(p, n, t);
  if (n < p.num_rows) shrink_rows<W, 1>(p, n, t);
}

/// tile[j * W + w] = B[o0 + w, j] for j < k (rows j >= k of the last rank tile hold garbage that
/// is never read).
template <int W, typename T>
SGL_LORA_INLINE void transpose_b(const Piece<T>& p, int64_t o0, float* tile) {
  const int64_t mr = p.max_rank;
  const T* b = p.b + o0 * mr;
  for (int64_t j0 = 0; j0 < p.rank; j0 += kRankTile) {
    float* dst = tile + j0 * W;
    if (j0 + kRankTile <= mr) {  // every row's 8 values lie inside its row of B
      vf<W> v[kRankTile];
      constexpr int kRowsPerVec = W / kRankTile;
#pragma GCC unroll 8
      for (int q = 0; q < kRankTile; ++q) {
        v[q] = load_b_rows<W>(b + q * kRowsPerVec * mr + j0, mr);
      }
      transpose_tile<W>(v);
#pragma GCC unroll 8
      for (int q = 0; q < kRankTile; ++q) store<W>(dst + q * W, v[q]);
    } else {  // the last tile of a max_rank that is not a multiple of 8: element by element
      const int64_t jn = std::min<int64_t>(kRankTile, p.rank - j0);
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t j = 0; j < jn; ++j) dst[j * W + w] = ld(b + w * mr, j0 + j);
      }
    }
  }
}

/// y[row n0 + n, o0 .. o0 + W] += sum_j t[n0 + n, j] * tile[j] for n < NR.
template <int W, int NR, typename T>
SGL_LORA_INLINE void expand_rows(const Piece<T>& p, int64_t n0, int64_t o0, const float* t,
                                 const float* tile) {
  T* yr[NR];
  vf<W> acc[NR];
#pragma GCC unroll 8
  for (int n = 0; n < NR; ++n) {
    yr[n] = p.y_row(n0 + n) + o0;
    acc[n] = load<W>(yr[n]);
  }
  const int64_t rank = p.rank;
  const float* tj = t + n0;
#pragma GCC unroll 2
  for (int64_t j = 0; j < rank; ++j, tj += kRowBlock) {
    const vf<W> bv = load<W>(tile + j * W);
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[n] += tj[n] * bv;
  }
#pragma GCC unroll 8
  for (int n = 0; n < NR; ++n) store<W>(yr[n], acc[n]);
}

/// y += t @ B[:, :k]^T for the piece's rows.
template <int W, typename T>
SGL_LORA_INLINE void expand(const Piece<T>& p, const float* t, float* tile) {
  int64_t o0 = 0;
  for (; o0 + W <= p.out; o0 += W) {
    transpose_b<W>(p, o0, tile);
    int64_t n = 0;
    for (; n + 4 <= p.num_rows; n += 4) expand_rows<W, 4>(p, n, o0, t, tile);
    for (; n < p.num_rows; ++n) expand_rows<W, 1>(p, n, o0, t, tile);
  }
  for (; o0 < p.out; ++o0) {  // outputs past the last full vector
    const T* brow = p.b + o0 * p.max_rank;
    for (int64_t n = 0; n < p.num_rows; ++n) {
      T* yn = p.y_row(n);
      float sum = 0.0f;
      for (int64_t j = 0; j < p.rank; ++j) sum += t[j * kRowBlock + n] * ld(brow, j);
      st(yn, o0, ld(yn, o0) + sum);
    }
  }
}

template <int W, typename T>
SGL_LORA_INLINE void apply_piece(const Piece<T>& p, float* t, float* tile) {
  shrink<W>(p, t);
  expand<W>(p, t, tile);
}

// ---- entry points per ISA -----------------------------------------------------------------------

/// A piece of a validated call: `num_rows` (<= kRowBlock) row indices of slot `slot` (rank > 0).
struct PieceRef {
  int64_t slot;
  const int32_t* rows;
  int64_t num_rows;
};

/// The call's arguments (validated) and one piece. `t` holds kRowBlock * rank floats, `tile`
/// round_up(rank, 8) * 16.
struct PieceArgs {
  const RowsView& x;
  const RowsView& y;
  const LoraWeights& w;
  const PieceRef& piece;
};

template <typename T>
Piece<T> make_piece(const PieceArgs& a) {
  const int64_t in = a.x.cols, out = a.y.cols, mr = a.w.max_rank, s = a.piece.slot;
  return Piece<T>{static_cast<const T*>(a.x.data),
                  a.x.row_stride,
                  static_cast<T*>(a.y.data),
                  a.y.row_stride,
                  a.piece.rows,
                  a.piece.num_rows,
                  in,
                  out,
                  static_cast<const T*>(a.w.a) + s * mr * in,
                  static_cast<const T*>(a.w.b) + s * out * mr,
                  mr,
                  a.w.ranks[s],
                  a.w.scaling[s]};
}

void apply_piece_avx2(const PieceArgs& a, float* t, float* tile) {
  if (a.x.dtype == DType::kFloat32) {
    apply_piece<8>(make_piece<float>(a), t, tile);
  } else {
    apply_piece<8>(make_piece<uint16_t>(a), t, tile);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) void apply_piece_avx512(
    const PieceArgs& a, float* t, float* tile) {
  if (a.x.dtype == DType::kFloat32) {
    apply_piece<16>(make_piece<float>(a), t, tile);
  } else {
    apply_piece<16>(make_piece<uint16_t>(a), t, tile);
  }
}

// ---- launcher -----------------------------------------------------------------------------------

/// Checks everything the kernel reads; on success sets *max_rank_used (the largest rank of a
/// non-empty adapter segment; 0: nothing to do).
bool valid_call(const RowsView& x, const RowsView& y, const LoraWeights& w,
                const LoraSegments& s, int64_t* max_rank_used) {
  if (!ops::valid_rows(x) || !ops::valid_rows(y) || x.dtype != y.dtype || x.rows != y.rows) {
    return false;
  }
  if (w.max_rank < 0 || w.num_slots < 0 || s.num_segments < 0 || s.indptr == nullptr) {
    return false;
  }
  if (w.num_slots > 0 && (w.ranks == nullptr || w.scaling == nullptr)) return false;
  if (w.num_slots > 0 && w.max_rank > 0 && (w.a == nullptr || w.b == nullptr)) return false;
  if (s.num_segments > 0 && s.slots == nullptr) return false;
  for (int64_t i = 0; i < w.num_slots; ++i) {
    if (w.ranks[i] < 0 || w.ranks[i] > w.max_rank) return false;
  }
  if (s.indptr[0] != 0 || s.indptr[s.num_segments] != x.rows) return false;
  int64_t used = 0;
  for (int64_t g = 0; g < s.num_segments; ++g) {
    const int32_t slot = s.slots[g];
    if (s.indptr[g + 1] < s.indptr[g] || slot < -1 || slot >= w.num_slots) return false;
    if (slot >= 0 && s.indptr[g + 1] > s.indptr[g]) used = std::max<int64_t>(used, w.ranks[slot]);
  }
  *max_rank_used = used;
  return true;
}

/// The call's work: the adapter rows grouped by slot (segment order within a slot), cut into
/// pieces. Lives in the calling thread's scratch (no allocation once warm).
struct Plan {
  std::vector<int64_t> ends;  // [num_slots]: slot s's rows are rows[ends[s - 1] .. ends[s])
  std::vector<int32_t> rows;
  std::vector<PieceRef> pieces;
};

/// Groups the rows of every segment whose slot has rank > 0 by slot (a counting sort).
void group_rows(const LoraWeights& w, const LoraSegments& s, Plan& plan) {
  const int32_t* indptr = s.indptr;
  std::vector<int64_t>& next = plan.ends;  // first the counts, then each slot's next free row
  next.assign(static_cast<size_t>(w.num_slots), 0);
  for (int64_t g = 0; g < s.num_segments; ++g) {
    const int32_t slot = s.slots[g];
    if (slot >= 0 && w.ranks[slot] > 0) next[slot] += indptr[g + 1] - indptr[g];
  }
  int64_t total = 0;
  for (int64_t& n : next) total += std::exchange(n, total);
  plan.rows.resize(static_cast<size_t>(total));
  for (int64_t g = 0; g < s.num_segments; ++g) {
    const int32_t slot = s.slots[g];
    if (slot < 0 || w.ranks[slot] == 0) continue;
    for (int32_t r = indptr[g]; r < indptr[g + 1]; ++r) plan.rows[next[slot]++] = r;
  }
}

/// Cuts each slot's rows into pieces of at most `piece_rows` rows.
void cut_pieces(int64_t piece_rows, Plan& plan) {
  plan.pieces.clear();
  int64_t begin = 0;
  for (size_t slot = 0; slot < plan.ends.size(); ++slot) {
    const int64_t end = plan.ends[slot];
    for (int64_t r = begin; r < end; r += piece_rows) {
      plan.pieces.push_back({static_cast<int64_t>(slot), plan.rows.data() + r,
                             std::min(piece_rows, end - r)});
    }
    begin = end;
  }
}

#undef SGL_LORA_INLINE

}  // namespace

Status lora_apply(const RowsView& x, const RowsView& y, const LoraWeights& weights,
                  const LoraSegments& segments) {
  int64_t max_rank_used = 0;
  if (!valid_call(x, y, weights, segments, &max_rank_used)) return Status::kInvalidArgument;
  if (max_rank_used == 0) return Status::kOk;
  thread_local Plan caller_plan;
  Plan& plan = caller_plan;  // a plain reference: the pool's workers read the caller's plan
  group_rows(weights, segments, plan);
  // FMAs per row: the shrink (rank x in) and the expand (rank x out). plan_threads keeps small
  // batches (decode) on the calling thread unless they carry enough work; the pieces are cut so
  // that every thread gets some, at most kRowBlock rows each.
  const auto rows = static_cast<int64_t>(plan.rows.size());
  const int threads = plan_threads(rows, max_rank_used * (x.cols + y.cols), 0);
  cut_pieces(std::min(kRowBlock, (rows + threads - 1) / threads), plan);

  auto* apply = active_isa() == CpuIsa::kAvx512 ? &apply_piece_avx512 : &apply_piece_avx2;
  const size_t t_floats = static_cast<size_t>(kRowBlock * max_rank_used);
  const size_t tile_floats = (max_rank_used + kRankTile - 1) / kRankTile * kRankTile * 16;
  const size_t scratch_floats = t_floats + tile_floats;
  auto run_piece = [&](int64_t i) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < scratch_floats) scratch.resize(scratch_floats);
    apply(PieceArgs{x, y, weights, plan.pieces[i]}, scratch.data(), scratch.data() + t_floats);
  };
  const auto num_pieces = static_cast<int64_t>(plan.pieces.size());
  if (threads <= 1 || num_pieces <= 1) {
    for (int64_t i = 0; i < num_pieces; ++i) run_piece(i);
  } else {
    ThreadPool::global().parallel_for(num_pieces, threads, run_piece);
  }
  return Status::kOk;
}

}  // namespace sglang::kernels
