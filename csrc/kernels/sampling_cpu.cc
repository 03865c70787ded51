// CPU launcher of `sample` (semantics in sglang/kernels/sampling.h).
//
// Per row, on one thread (rows are spread over the worker pool):
//   1. the row as fp32 (fp16/bf16 converted into a scratch buffer), and its max (NaN ignored);
//   2. greedy rows: argmax, the lowest id among the maxima;
//   3. e[i] = exp((x[i] - max) / T) in (0, 1] (the max weighs exactly 1) and their sum S;
//   4. the kept set is {e >= pivot}: the pivot is the largest of the top-k value (k-th largest e),
//      the top-p value and min_p (min_p * max_prob in weight units). Top-p only needs the largest
//      weights: tokens below (1 - top_p) * S / V can never be kept, the rest are partially
//      selected (nth_element) and sorted in growing batches until their mass decides the pivot;
//   5. inverse CDF over the kept weights in ascending id order, with chunk sums to find the
//      chunk holding u * kept_mass first.
// Hot loops use AVX2/FMA/F16C intrinsics where the compiler targets them, plain loops otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SGL_SAMPLING_AVX2 1
#endif

#include "sglang/kernels/dtype.h"
#include "sglang/kernels/sampling.h"
#include "sglang/kernels/thread_pool.h"
#include "validate.h"

namespace sglang::kernels {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// exp(x) for x below this is flushed to 0 (keeps 2^floor(x / ln 2) a normal float).
constexpr float kExpMin = -87.0f;
constexpr int64_t kDrawChunk = 512;

/// Per-thread scratch buffers, reused across rows and calls.
struct Scratch {
  std::vector<float> x;       // the row as fp32 (16-bit dtypes only)
  std::vector<float> e;       // weights
  std::vector<float> cand;    // candidate weights for top-k / top-p (size only grows)
  std::vector<float> bucket;  // radix buckets holding the top-p pivot
  std::vector<float> bucket2;
  std::vector<double> chunk_sums;
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// ---- vector primitives -------------------------------------------------------------------------

#ifdef SGL_SAMPLING_AVX2
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline double hsum(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  double s = 0.0;
  for (float f : lanes) s += f;
  return s;
}

/// exp(x) for x <= 0 (Cephes polynomial, ~1 ulp); 0 for x < kExpMin or NaN; exp(0) == 1 exactly.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 valid = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpMin));  // NaN lanes -> kExpMin (masked below)
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i pow2 = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  pow2 = _mm256_slli_epi32(pow2, 23);
  return _mm256_and_ps(valid, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2)));
}
#endif

/// Row r of `logits` as fp32: the row itself for fp32, else converted into `buf`.
const float* row_as_float(const LogitsView& logits, int64_t r, std::vector<float>& buf) {
  const void* row = row_pointer(logits, r);
  if (logits.dtype == DType::kFloat32) return static_cast<const float*>(row);
  const int64_t n = logits.vocab_size;
  buf.resize(n);
  const auto* src = static_cast<const uint16_t*>(row);
  float* dst = buf.data();
  int64_t i = 0;
#ifdef SGL_SAMPLING_AVX2
  if (logits.dtype == DType::kFloat16) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  } else {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = load_as_float(src, logits.dtype, i);
  return dst;
}

/// Largest non-NaN value (-inf when there is none).
float max_ignore_nan(const float* x, int64_t n) {
  int64_t i = 0;
  float m = kNegInf;
#ifdef SGL_SAMPLING_AVX2
  __m256 acc = _mm256_set1_ps(kNegInf);
  for (; i + 8 <= n; i += 8) acc = _mm256_max_ps(_mm256_loadu_ps(x + i), acc);  // NaN -> acc
  m = hmax(acc);
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

/// Greedy: the lowest id holding the max `m` (0 when no logit is above -inf).
int32_t argmax(const float* x, int64_t n, float m) {
  if (!(m > kNegInf)) return 0;
  int64_t i = 0;
#ifdef SGL_SAMPLING_AVX2
  const __m256 mv = _mm256_set1_ps(m);
  for (; i + 8 <= n; i += 8) {
    const int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), mv, _CMP_EQ_OQ));
    if (bits != 0) return static_cast<int32_t>(i + __builtin_ctz(bits));
  }
#endif
  for (; i < n; ++i) {
    if (x[i] == m) return static_cast<int32_t>(i);
  }
  return 0;
}

/// e[i] = exp((x[i] - m) * inv_t) (0 for -inf / NaN / underflow); returns the sum. x may alias e.
double compute_weights(const float* x, int64_t n, float m, float inv_t, float* e) {
  int64_t i = 0;
  double sum = 0.0;
#ifdef SGL_SAMPLING_AVX2
  const __m256 mv = _mm256_set1_ps(m);
  const __m256 tv = _mm256_set1_ps(inv_t);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 w = exp_nonpositive(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), tv));
    _mm256_storeu_ps(e + i, w);
    acc = _mm256_add_ps(acc, w);
  }
  if (i < n) {  // tail through the same vector code, padded with -inf (weight 0)
    alignas(32) float pad[8];
    for (int j = 0; j < 8; ++j) pad[j] = i + j < n ? x[i + j] : kNegInf;
    const __m256 w = exp_nonpositive(_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(pad), mv), tv));
    _mm256_store_ps(pad, w);
    acc = _mm256_add_ps(acc, w);
    for (int j = 0; i + j < n; ++j) e[i + j] = pad[j];
  }
  sum = hsum(acc);
#else
  for (; i < n; ++i) {
    const float a = (x[i] - m) * inv_t;
    e[i] = a >= kExpMin ? std::exp(a) : 0.0f;
    sum += e[i];
  }
#endif
  return sum;
}

/// Sum of the weights >= thr in e[0, n).
float kept_sum(const float* e, int64_t n, float thr) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef SGL_SAMPLING_AVX2
  const __m256 tv = _mm256_set1_ps(thr);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 w = _mm256_loadu_ps(e + i);
    acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_cmp_ps(w, tv, _CMP_GE_OQ), w));
  }
  s = static_cast<float>(hsum(acc));
#endif
  for (; i < n; ++i) s += e[i] >= thr ? e[i] : 0.0f;
  return s;
}

// ---- the kept set ------------------------------------------------------------------------------

/// Collects into c[0, *count) the weights >= cutoff (c has room for n). With k > 0 it keeps only
/// the k largest, shrinking the buffer with nth_element as it fills and admitting only weights
/// above its current k-th largest, and returns the k-th largest weight overall; it returns 0 when
/// fewer than k weights reach the cutoff (top-k then does not bind).
float gather_candidates(const float* e, int64_t n, float cutoff, int64_t k, float* c,
                        int64_t* count) {
  float floor = cutoff > 0.0f ? std::nextafter(cutoff, 0.0f) : -1.0f;  // admit e > floor
  const int64_t cap = k > 0 ? std::max<int64_t>(4 * k, 256) : n;
  int64_t m = 0;
  auto shrink = [&] {
    std::nth_element(c, c + (k - 1), c + m, std::greater<>());
    floor = std::max(floor, c[k - 1]);
    m = k;
  };
  int64_t i = 0;
#ifdef SGL_SAMPLING_AVX2
  __m256 floor_v = _mm256_set1_ps(floor);
  for (; i + 8 <= n; i += 8) {
    unsigned mask = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(e + i), floor_v, _CMP_GT_OQ)));
    for (; mask != 0; mask &= mask - 1) c[m++] = e[i + __builtin_ctz(mask)];
    if (k > 0 && m >= cap) {
      shrink();
      floor_v = _mm256_set1_ps(floor);
    }
  }
#endif
  for (; i < n; ++i) {
    if (e[i] > floor) c[m++] = e[i];
    if (k > 0 && m >= cap) shrink();
  }
  float kth = 0.0f;
  if (k > 0 && m >= k) {
    shrink();
    kth = c[k - 1];
  }
  *count = m;
  return kth;
}

/// Walks weights c[0, m) sorted descending, `above` being the mass of all weights larger than
/// c[0]; returns the smallest weight kept by top-p (whose strictly larger weights sum to < target),
/// or c[m - 1] when all are kept. c[0]'s group must be kept (above < target).
float walk_sorted(const float* c, int64_t m, double above, double target) {
  double cum = above;
  for (int64_t j = 0; j < m; ++j) {
    if (j > 0 && c[j] != c[j - 1] && cum >= target) return c[j - 1];
    cum += c[j];
  }
  return c[m - 1];
}

/// Number of weights in e[0, n) that are >= cutoff.
int64_t count_at_least(const float* e, int64_t n, float cutoff) {
  int64_t count = 0;
  int64_t i = 0;
#ifdef SGL_SAMPLING_AVX2
  const __m256 cv = _mm256_set1_ps(cutoff);
  for (; i + 8 <= n; i += 8) {
    count += __builtin_popcount(static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(e + i), cv, _CMP_GE_OQ))));
  }
#endif
  for (; i < n; ++i) count += e[i] >= cutoff ? 1 : 0;
  return count;
}

// Radix levels of top_p_pivot: 8 bits each (exponent, then mantissa bits 22-15, 14-7, 6-0).
constexpr int kRadixKeys = 256;
constexpr int kRadixLevels = 4;
constexpr int kRadixShift[kRadixLevels] = {23, 15, 7, 0};

/// Counts and masses of c[0, m) by key = (bits >> shift) & 255. Four interleaved partial
/// histograms keep runs of equal keys from serialising on one counter.
void radix_histogram(const float* c, int64_t m, int shift, int32_t* counts, double* mass) {
  constexpr int kWays = 4;
  int32_t part_counts[kWays][kRadixKeys] = {};
  double part_mass[kWays][kRadixKeys] = {};
  int64_t i = 0;
  for (; i + kWays <= m; i += kWays) {
    for (int w = 0; w < kWays; ++w) {
      const uint32_t key = (float_to_bits(c[i + w]) >> shift) & (kRadixKeys - 1);
      ++part_counts[w][key];
      part_mass[w][key] += c[i + w];
    }
  }
  for (; i < m; ++i) {
    const uint32_t key = (float_to_bits(c[i]) >> shift) & (kRadixKeys - 1);
    ++part_counts[0][key];
    part_mass[0][key] += c[i];
  }
  for (int k = 0; k < kRadixKeys; ++k) {
    counts[k] = (part_counts[0][k] + part_counts[1][k]) + (part_counts[2][k] + part_counts[3][k]);
    mass[k] = (part_mass[0][k] + part_mass[1][k]) + (part_mass[2][k] + part_mass[3][k]);
  }
}

/// Copies the weights of c[0, m) whose key at `shift` equals `key` to out; returns their number.
int64_t radix_gather(const float* c, int64_t m, int shift, uint32_t key, float* out) {
  int64_t count = 0;
  int64_t i = 0;
#ifdef SGL_SAMPLING_AVX2
  const __m256i key_v = _mm256_set1_epi32(static_cast<int>(key));
  const __m256i mask_v = _mm256_set1_epi32(kRadixKeys - 1);
  const __m128i shift_v = _mm_cvtsi32_si128(shift);
  for (; i + 8 <= m; i += 8) {
    const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(c + i));
    const __m256i keys = _mm256_and_si256(_mm256_srl_epi32(bits, shift_v), mask_v);
    unsigned hit = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(keys, key_v))));
    for (; hit != 0; hit &= hit - 1) out[count++] = c[i + __builtin_ctz(hit)];
  }
#endif
  for (; i < m; ++i) {
    if (((float_to_bits(c[i]) >> shift) & (kRadixKeys - 1)) == key) out[count++] = c[i];
  }
  return count;
}

/// The top-p pivot among weights c[0, m) in [0, 1]: a superset of the tokens top-p keeps that
/// holds every weight above any of its members (so "strictly larger" mass is exact): the
/// smallest weight whose strictly larger weights sum to < target. Small sets are sorted; larger
/// ones go through a radix descent on the weight's bits (8 bits a level; the bits of weights
/// >= 0 order like the weights): a histogram of counts and masses finds the one bucket holding
/// the pivot, and only that bucket goes on to the next level.
float top_p_pivot(const float* c, int64_t m, double target, Scratch& s) {
  constexpr int64_t kSortDirectly = 256;
  double above = 0.0;  // mass of the weights larger than every one in c
  std::vector<float>* next = &s.bucket;
  for (int level = 0; level < kRadixLevels && m > kSortDirectly; ++level) {
    int32_t counts[kRadixKeys];
    double mass[kRadixKeys];
    radix_histogram(c, m, kRadixShift[level], counts, mass);
    int key = kRadixKeys - 1;
    for (; key >= 0; --key) {
      if (counts[key] == 0) continue;
      if (above + mass[key] >= target) break;
      above += mass[key];
    }
    if (key < 0) return *std::min_element(c, c + m);  // rounding: all of c is kept
    next->resize(counts[key]);
    m = radix_gather(c, m, kRadixShift[level], static_cast<uint32_t>(key), next->data());
    c = next->data();
    next = next == &s.bucket ? &s.bucket2 : &s.bucket;
  }
  next->assign(c, c + m);
  std::sort(next->begin(), next->end(), std::greater<>());
  return walk_sorted(next->data(), m, above, target);
}

/// The pivot of the kept set {e >= pivot} (see sampling.h), in weight units (max weight 1).
float kept_pivot(const float* e, int64_t n, double sum, int32_t top_k, float top_p, float min_p,
                 Scratch& s) {
  constexpr int64_t kGatherAtMost = 4096;
  const float pivot_min_p = min_p > 0.0f ? std::min(min_p, 1.0f) : 0.0f;
  const bool use_k = top_k > 1 && top_k < n;
  const bool use_p = top_p < 1.0f;  // false for NaN
  if (!use_k && !use_p) return pivot_min_p;
  top_p = std::max(top_p, 0.0f);
  // Tokens below `cutoff` are dropped by min-p, or by top-p: more than top_p * S lies above them
  // (at most n of them weigh < cutoff, less than (1 - top_p) * S in all).
  float cutoff = pivot_min_p;
  if (use_p) cutoff = std::max(cutoff, static_cast<float>(0.5 * (1.0 - top_p) * sum / n));
  float pivot = pivot_min_p;
  const float* cand = e;  // top-p alone on a flat distribution: histogram all of e directly
  int64_t count = n;
  if (use_k || count_at_least(e, n, cutoff) <= kGatherAtMost) {
    if (static_cast<int64_t>(s.cand.size()) < n) s.cand.resize(n);
    pivot =
        std::max(pivot, gather_candidates(e, n, cutoff, use_k ? top_k : 0, s.cand.data(), &count));
    cand = s.cand.data();
  }
  if (use_p && count > 0) pivot = std::max(pivot, top_p_pivot(cand, count, top_p * sum, s));
  return std::min(pivot, 1.0f);
}

/// Inverse CDF over the weights >= thr, in ascending id order, at u * kept mass.
int32_t draw(const float* e, int64_t n, float thr, float u, std::vector<double>& chunk_sums) {
  const int64_t num_chunks = (n + kDrawChunk - 1) / kDrawChunk;
  chunk_sums.resize(num_chunks);
  double total = 0.0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kDrawChunk;
    chunk_sums[c] = kept_sum(e + begin, std::min(kDrawChunk, n - begin), thr);
    total += chunk_sums[c];
  }
  const double target = static_cast<double>(u) * total;
  double running = 0.0;
  int64_t last_kept = -1;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kDrawChunk;
    const int64_t end = std::min(n, begin + kDrawChunk);
    if (chunk_sums[c] > 0.0 && running + chunk_sums[c] > target) {
      for (int64_t i = begin; i < end; ++i) {
        if (e[i] < thr) continue;
        running += e[i];
        last_kept = i;
        if (running > target) return static_cast<int32_t>(i);
      }
      return static_cast<int32_t>(last_kept);  // rounding: the chunk's last kept token
    }
    running += chunk_sums[c];
  }
  // u * mass rounded past the total: the last kept token.
  for (int64_t i = n - 1; i >= 0; --i) {
    if (e[i] >= thr) return static_cast<int32_t>(i);
  }
  return 0;
}

int32_t sample_row(const LogitsView& logits, const SamplingArgs& args, int64_t r) {
  Scratch& s = thread_scratch();
  const int64_t n = logits.vocab_size;
  const float* x = row_as_float(logits, r, s.x);
  const float m = max_ignore_nan(x, n);
  const float temperature = args.temperature[r];
  float inv_t = 1.0f / temperature;
  if (!(temperature > 0.0f) || args.top_k[r] == 1 || !std::isfinite(m) || std::isinf(inv_t)) {
    return argmax(x, n, m);
  }
  inv_t = std::max(inv_t, std::numeric_limits<float>::min());  // T = +inf: -inf stays -inf
  s.e.resize(n);
  const double sum = compute_weights(x, n, m, inv_t, s.e.data());
  const float pivot =
      kept_pivot(s.e.data(), n, sum, args.top_k[r], args.top_p[r], args.min_p[r], s);
  // Kept tokens also need a positive weight (banned tokens never come back).
  const float thr = std::max(pivot, std::numeric_limits<float>::denorm_min());
  const float u = uniform01(args.seeds[r], args.offsets[r]);
  return draw(s.e.data(), n, thr, u, s.chunk_sums);
}

}  // namespace

Status sample_cpu(const LogitsView& logits, const SamplingArgs& args, int32_t* out_ids,
                  int num_threads) {
  if (!validate::valid_view(logits, /*in_place=*/false)) return Status::kInvalidArgument;
  if (logits.vocab_size > std::numeric_limits<int32_t>::max()) return Status::kInvalidArgument;
  if (logits.num_rows == 0) return Status::kOk;
  if (out_ids == nullptr || args.temperature == nullptr || args.top_k == nullptr ||
      args.top_p == nullptr || args.min_p == nullptr || args.seeds == nullptr ||
      args.offsets == nullptr) {
    return Status::kInvalidArgument;
  }
  const int threads = plan_threads(logits.num_rows, 8 * logits.vocab_size, num_threads);
  ThreadPool::global().parallel_for(logits.num_rows, threads,
                                    [&](int64_t r) { out_ids[r] = sample_row(logits, args, r); });
  return Status::kOk;
}

}  // namespace sglang::kernels
