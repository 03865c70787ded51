// Unit tests of the CPU logit-processing and sampling kernels (csrc/kernels/*_cpu.cc), the
// dtype conversions they share with CUDA, and the worker pool.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SGL_TEST_F16C 1
#endif

#include "sglang/kernels/dtype.h"
#include "sglang/kernels/sampling.h"
#include "sglang/kernels/thread_pool.h"

namespace sglang::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

LogitsView view_of(std::vector<float>& x, int64_t rows, int64_t vocab) {
  return {x.data(), DType::kFloat32, rows, vocab, vocab};
}

/// Per-row sampling parameters, all rows alike unless changed.
struct Params {
  explicit Params(int64_t rows, float t = 1.0f, int32_t k = 0, float p = 1.0f, float mp = 0.0f)
      : temperature(rows, t),
        top_k(rows, k),
        top_p(rows, p),
        min_p(rows, mp),
        seeds(rows),
        offsets(rows, 0) {
    std::iota(seeds.begin(), seeds.end(), 0);
  }
  SamplingArgs args() const {
    return {temperature.data(), top_k.data(), top_p.data(),
            min_p.data(),       seeds.data(), offsets.data()};
  }
  std::vector<float> temperature;
  std::vector<int32_t> top_k;
  std::vector<float> top_p;
  std::vector<float> min_p;
  std::vector<uint64_t> seeds;
  std::vector<uint64_t> offsets;
};

std::vector<int32_t> sample(const LogitsView& v, const Params& p, int threads = 0) {
  std::vector<int32_t> out(v.num_rows, -1);
  EXPECT_EQ(sample_cpu(v, p.args(), out.data(), threads), Status::kOk);
  return out;
}

/// One row repeated `rows` times through row_stride 0, each with its own seed.
std::vector<int32_t> sample_many(std::vector<float>& row, int64_t rows, float t, int32_t k, float p,
                                 float mp) {
  LogitsView v{row.data(), DType::kFloat32, rows, static_cast<int64_t>(row.size()), 0};
  Params params(rows, t, k, p, mp);
  for (int64_t r = 0; r < rows; ++r) params.seeds[r] = 1000 + r * 7919;
  return sample(v, params);
}

std::set<int32_t> support(const std::vector<int32_t>& ids) { return {ids.begin(), ids.end()}; }

std::vector<float> log_probs(std::initializer_list<double> probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

#ifdef SGL_TEST_F16C
// The hardware conversions (F16C), compiled for it whatever the test binary's flags.
__attribute__((target("f16c"))) float hw_half_to_float(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_float_to_half(float f) {
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
bool have_f16c() { return __builtin_cpu_supports("f16c"); }
#endif

// ---- status, uniform01, conversions -------------------------------------------------------------

TEST(SamplingCpu, StatusString) {
  EXPECT_STREQ(status_string(Status::kOk), "ok");
  EXPECT_STRNE(status_string(Status::kInvalidArgument), status_string(Status::kCudaError));
  EXPECT_NE(std::string(status_string(Status::kNotBuilt)).find("CUDA"), std::string::npos);
}

TEST(SamplingCpu, Uniform01) {
  static_assert(uniform01(1, 2) == uniform01(1, 2));  // constexpr, so CUDA can share it
  double sum = 0.0;
  std::set<float> distinct;
  for (uint64_t i = 0; i < 10000; ++i) {
    const float u = uniform01(42, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    distinct.insert(u);
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.01);
  EXPECT_GT(distinct.size(), 9990u);
  EXPECT_NE(uniform01(1, 0), uniform01(2, 0));
}

TEST(DTypeConvert, HalfToFloatMatchesHardwareForAllHalves) {
#ifdef SGL_TEST_F16C
  if (!have_f16c()) GTEST_SKIP() << "no F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = hw_half_to_float(static_cast<uint16_t>(h));
    const float got = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(float_to_bits(got), float_to_bits(want)) << h;
    }
  }
#else
  GTEST_SKIP() << "no F16C";
#endif
}

TEST(DTypeConvert, FloatToHalfMatchesHardwareRoundNearestEven) {
#ifdef SGL_TEST_F16C
  if (!have_f16c()) GTEST_SKIP() << "no F16C";
  std::mt19937 rng(7);
  std::vector<uint32_t> bits = {0u,          0x80000000u, 0x7F800000u, 0xFF800000u,
                                0x477FF000u, 0x477FEFFFu, 0x33000000u, 0x33000001u,
                                0x387FE000u, 0x38800000u, 0x3F802000u, 0x3F806000u};
  for (int i = 0; i < 2000000; ++i) bits.push_back(rng());
  // Dense around the half range, where rounding matters.
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 0x1F3) bits.push_back(u);
  for (uint32_t u : bits) {
    const float f = bits_to_float(u);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    ASSERT_EQ(float_to_half(f), hw_float_to_half(f)) << std::hex << u;
  }
#else
  GTEST_SKIP() << "no F16C";
#endif
}

TEST(DTypeConvert, BFloat16RoundTripAndRounding) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f))));
    } else {
      ASSERT_EQ(float_to_bf16(f), b);
    }
  }
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256 + 1e-6f), 0x3F81);
  EXPECT_EQ(float_to_bf16(-kInf), 0xFF80);
  EXPECT_EQ(float_to_half(-kInf), 0xFC00);
}

// ---- greedy -------------------------------------------------------------------------------------

TEST(SamplingCpu, GreedyIsArgmaxWithLowestIdOnTies) {
  std::vector<float> x = {0.1f,  3.0f,  -1.0f, 3.0f,    // tie between 1 and 3
                          5.0f,  5.0f,  5.0f,  5.0f,    // all equal -> 0
                          -kInf, -kInf, -kInf, -kInf,   // all banned -> 0
                          NAN,   -2.0f, NAN,   -1.0f};  // NaN ignored -> 3
  LogitsView v = view_of(x, 4, 4);
  Params greedy_t(4, 0.0f);
  EXPECT_EQ(sample(v, greedy_t), (std::vector<int32_t>{1, 0, 0, 3}));
  Params greedy_k(4, 0.7f, 1);
  EXPECT_EQ(sample(v, greedy_k), (std::vector<int32_t>{1, 0, 0, 3}));
  // A row with nothing above -inf is greedy at any temperature.
  Params hot(4, 1.0f);
  EXPECT_EQ(sample(v, hot)[2], 0);
}

TEST(SamplingCpu, GreedyLargeVocabAllDtypes) {
  const int64_t rows = 5, vocab = 151936 + 3;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * vocab);
  for (auto& f : x) f = normal(rng);
  std::vector<int32_t> want(rows);
  for (int64_t r = 0; r < rows; ++r) {
    want[r] = static_cast<int32_t>(r * 30011 + 5);
    x[r * vocab + want[r]] = 10.0f;
    x[r * vocab + want[r] + 7] = 10.0f;  // a later tie loses
  }
  Params greedy(rows, 0.0f);
  EXPECT_EQ(sample(view_of(x, rows, vocab), greedy), want);
  std::vector<uint16_t> h(x.size()), b(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    h[i] = float_to_half(x[i]);
    b[i] = float_to_bf16(x[i]);
  }
  EXPECT_EQ(sample({h.data(), DType::kFloat16, rows, vocab, vocab}, greedy), want);
  EXPECT_EQ(sample({b.data(), DType::kBFloat16, rows, vocab, vocab}, greedy), want);
}

// ---- penalties, ban, bias -----------------------------------------------------------------------

TEST(PenaltiesCpu, HandComputed) {
  // Row 0: freq 0.5, pres 0.25, rep 2. Row 1: nulls per row are not possible, so rep 1, freq 1.
  std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f,  //
                          1.0f, 1.0f,  1.0f, 1.0f};
  std::vector<int32_t> indptr = {0, 3, 4};
  std::vector<int32_t> ids = {0, 1, 2, 3};
  std::vector<int32_t> counts = {2, 0, 1, 3};
  std::vector<float> freq = {0.5f, 1.0f}, pres = {0.25f, 0.0f}, rep = {2.0f, 1.0f};
  PenaltyArgs args{indptr.data(), ids.data(), counts.data(), freq.data(), pres.data(), rep.data()};
  ASSERT_EQ(apply_penalties_cpu(view_of(x, 2, 4), args, 0), Status::kOk);
  // t0: 1 - (0.5*2 + 0.25) = -0.25 -> * 2 = -0.5; t1: count 0, -2 * 2 = -4;
  // t2: 3 - 0.75 = 2.25 -> / 2 = 1.125; t3 untouched. Row 1: t3: 1 - 3 = -2.
  EXPECT_EQ(x, (std::vector<float>{-0.5f, -4.0f, 1.125f, 0.5f, 1.0f, 1.0f, 1.0f, -2.0f}));
}

TEST(PenaltiesCpu, NullArraysAreNeutralAndRepetitionAlone) {
  std::vector<float> x = {4.0f, -4.0f, 0.0f};
  std::vector<int32_t> indptr = {0, 3}, ids = {0, 1, 2}, counts = {1, 1, 1};
  PenaltyArgs none{indptr.data(), ids.data(), counts.data(), nullptr, nullptr, nullptr};
  ASSERT_EQ(apply_penalties_cpu(view_of(x, 1, 3), none, 1), Status::kOk);
  EXPECT_EQ(x, (std::vector<float>{4.0f, -4.0f, 0.0f}));
  std::vector<float> rep = {4.0f};
  PenaltyArgs rep_only{indptr.data(), ids.data(), counts.data(), nullptr, nullptr, rep.data()};
  ASSERT_EQ(apply_penalties_cpu(view_of(x, 1, 3), rep_only, 1), Status::kOk);
  EXPECT_EQ(x, (std::vector<float>{1.0f, -16.0f, 0.0f}));
}

TEST(PenaltiesCpu, HalfAndBFloat16RoundOnce) {
  // 0.1 is not representable: the result must be round(f32 computation), not computed in 16 bit.
  const std::vector<float> base = {0.1f, 2.5f, -0.3f, 7.0f};
  std::vector<int32_t> indptr = {0, 4}, ids = {3, 2, 1, 0}, counts = {1, 2, 0, 5};
  std::vector<float> freq = {0.1f}, pres = {0.3f}, rep = {1.3f};
  PenaltyArgs args{indptr.data(), ids.data(), counts.data(), freq.data(), pres.data(), rep.data()};
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const bool half = dt == DType::kFloat16;
    std::vector<uint16_t> x;
    std::vector<float> want;
    for (float f : base) {
      x.push_back(half ? float_to_half(f) : float_to_bf16(f));
      want.push_back(half ? half_to_float(x.back()) : bf16_to_float(x.back()));
    }
    for (int i = 0; i < 4; ++i) {
      float& v = want[ids[i]];
      if (counts[i] > 0) {
        const float fc = freq[0] * static_cast<float>(counts[i]);
        v = v - (fc + pres[0]);
      }
      v = v > 0 ? v / rep[0] : v * rep[0];
      v = half ? half_to_float(float_to_half(v)) : bf16_to_float(float_to_bf16(v));
    }
    ASSERT_EQ(apply_penalties_cpu({x.data(), dt, 1, 4, 4}, args, 0), Status::kOk);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(half ? half_to_float(x[t]) : bf16_to_float(x[t]), want[t]) << t;
    }
  }
}

TEST(TokenListCpu, BanAndBias) {
  std::vector<float> x(3 * 5, 1.0f);
  std::vector<int32_t> indptr = {0, 2, 2, 3}, ids = {4, 0, 2};
  std::vector<float> bias = {0.5f, -2.0f, 10.0f};
  ASSERT_EQ(apply_logit_bias_cpu(view_of(x, 3, 5), {indptr.data(), ids.data(), bias.data()}),
            Status::kOk);
  EXPECT_EQ(x[4], 1.5f);
  EXPECT_EQ(x[0], -1.0f);
  EXPECT_EQ(x[10 + 2], 11.0f);
  EXPECT_EQ(std::count(x.begin(), x.end(), 1.0f), 12);
  ASSERT_EQ(apply_token_ban_cpu(view_of(x, 3, 5), {indptr.data(), ids.data(), nullptr}),
            Status::kOk);
  EXPECT_EQ(x[4], -kInf);
  EXPECT_EQ(x[0], -kInf);
  EXPECT_EQ(x[12], -kInf);
  EXPECT_EQ(std::count(x.begin(), x.end(), -kInf), 3);
  // 16-bit: -inf bit patterns, bias rounded once.
  std::vector<uint16_t> h(5, float_to_half(1.0f)), b(5, float_to_bf16(1.0f));
  std::vector<int32_t> one_ptr = {0, 1}, one_id = {3};
  std::vector<float> small = {0.001f};
  ASSERT_EQ(apply_token_ban_cpu({h.data(), DType::kFloat16, 1, 5, 5},
                                {one_ptr.data(), one_id.data(), nullptr}),
            Status::kOk);
  EXPECT_EQ(h[3], 0xFC00);
  ASSERT_EQ(apply_logit_bias_cpu({b.data(), DType::kBFloat16, 1, 5, 5},
                                 {one_ptr.data(), one_id.data(), small.data()}),
            Status::kOk);
  EXPECT_EQ(b[3], float_to_bf16(1.001f));
}

// ---- bitmask ------------------------------------------------------------------------------------

TEST(BitmaskCpu, RowIndicesNegativeAndPartialWords) {
  const int64_t rows = 3, vocab = 70, words = 3;  // 70 tokens: two full words and 6 bits
  std::vector<float> x(rows * vocab, 0.0f);
  std::vector<int32_t> mask(2 * words, 0);
  // Mask row 0 allows tokens 1, 33, 65; mask row 1 allows every token.
  mask[0] = 1 << 1;
  mask[1] = 1 << 1;
  mask[2] = 1 << 1;
  mask[3] = mask[4] = mask[5] = -1;
  std::vector<int32_t> row_indices = {1, 0, -1};
  ASSERT_EQ(
      apply_token_bitmask_cpu(view_of(x, rows, vocab), {mask.data(), words, row_indices.data()}, 0),
      Status::kOk);
  for (int64_t t = 0; t < vocab; ++t) {
    EXPECT_EQ(x[t], 0.0f);              // row 0 -> mask row 1: all allowed
    EXPECT_EQ(x[2 * vocab + t], 0.0f);  // row 2 -> -1: unmasked
    const bool allowed = t == 1 || t == 33 || t == 65;
    EXPECT_EQ(x[vocab + t], allowed ? 0.0f : -kInf) << t;
  }
}

TEST(BitmaskCpu, IdentityShortMaskAndSixteenBit) {
  // words * 32 < vocab: tokens past the mask are left unchanged.
  const int64_t vocab = 40;
  std::vector<int32_t> mask = {0x0000000F};  // tokens 0..3 allowed
  std::vector<uint16_t> h(vocab, float_to_half(2.0f)), b(vocab, float_to_bf16(2.0f));
  ASSERT_EQ(apply_token_bitmask_cpu({h.data(), DType::kFloat16, 1, vocab, vocab},
                                    {mask.data(), 1, nullptr}, 1),
            Status::kOk);
  ASSERT_EQ(apply_token_bitmask_cpu({b.data(), DType::kBFloat16, 1, vocab, vocab},
                                    {mask.data(), 1, nullptr}, 1),
            Status::kOk);
  for (int64_t t = 0; t < vocab; ++t) {
    const bool masked = t >= 4 && t < 32;
    EXPECT_EQ(h[t], masked ? 0xFC00 : float_to_half(2.0f)) << t;
    EXPECT_EQ(b[t], masked ? 0xFF80 : float_to_bf16(2.0f)) << t;
  }
}

TEST(BitmaskCpu, ThreadedMatchesSingleThread) {
  const int64_t rows = 64, vocab = 4099, words = (vocab + 31) / 32;
  std::mt19937 rng(11);
  std::vector<int32_t> mask(rows * words);
  for (auto& w : mask) w = static_cast<int32_t>(rng());
  std::vector<float> a(rows * vocab, 1.0f), b = a;
  ASSERT_EQ(apply_token_bitmask_cpu(view_of(a, rows, vocab), {mask.data(), words, nullptr}, 1),
            Status::kOk);
  ASSERT_EQ(apply_token_bitmask_cpu(view_of(b, rows, vocab), {mask.data(), words, nullptr}, 0),
            Status::kOk);
  EXPECT_EQ(a, b);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < vocab; ++t) {
      const bool allowed = (static_cast<uint32_t>(mask[r * words + t / 32]) >> (t % 32)) & 1;
      ASSERT_EQ(a[r * vocab + t], allowed ? 1.0f : -kInf);
    }
  }
}

// ---- sampling support sets ----------------------------------------------------------------------

TEST(SamplingCpu, TopKSupport) {
  std::vector<float> row(100);
  for (int i = 0; i < 100; ++i) row[i] = -0.01f * static_cast<float>((i * 37) % 100);
  // The 5 most likely tokens have (i * 37) % 100 in {0..4}.
  std::set<int32_t> top5;
  for (int i = 0; i < 100; ++i) {
    if ((i * 37) % 100 < 5) top5.insert(i);
  }
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 5, 1.0f, 0.0f)), top5);
}

TEST(SamplingCpu, TopKKeepsTiesWithTheKthToken) {
  std::vector<float> row = {3.0f, 2.0f, 2.0f, 2.0f, 1.0f, 0.0f};
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 2, 1.0f, 0.0f)), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(SamplingCpu, TopPSupport) {
  std::vector<float> row = log_probs({0.05, 0.5, 0.15, 0.3});
  // Sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05). Mass strictly above: 0, 0.5, 0.8, 0.95.
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 0.7f, 0.0f)), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 0.85f, 0.0f)), (std::set<int32_t>{1, 2, 3}));
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 0.0f, 0.0f)), (std::set<int32_t>{1}));
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 1.0f, 0.0f)), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(SamplingCpu, MinPSupportAndCombined) {
  std::vector<float> row = log_probs({0.05, 0.5, 0.15, 0.3});
  // min_p 0.35: p >= 0.175 -> {1, 3}; min_p 0.25: p >= 0.125 -> {1, 2, 3}.
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 1.0f, 0.35f)), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 0, 1.0f, 0.25f)), (std::set<int32_t>{1, 2, 3}));
  // top-k 3 and top-p 0.85 keep {1, 3, 2}; min-p 0.35 then leaves {1, 3}.
  EXPECT_EQ(support(sample_many(row, 4000, 1.0f, 3, 0.85f, 0.35f)), (std::set<int32_t>{1, 3}));
  // min_p > 1 still keeps the most likely token.
  EXPECT_EQ(support(sample_many(row, 500, 1.0f, 0, 1.0f, 5.0f)), (std::set<int32_t>{1}));
}

TEST(SamplingCpu, Frequencies) {
  std::vector<float> row = log_probs({0.2, 0.0001, 0.8 - 0.0001});
  const auto ids = sample_many(row, 20000, 1.0f, 0, 1.0f, 0.0f);
  const double f0 = std::count(ids.begin(), ids.end(), 0) / 20000.0;
  EXPECT_NEAR(f0, 0.2, 0.015);
  // Temperature 0.5 squares the odds: 0.04 / (0.04 + 0.64) ~ 0.0588.
  const auto hot = sample_many(row, 20000, 0.5f, 0, 1.0f, 0.0f);
  EXPECT_NEAR(std::count(hot.begin(), hot.end(), 0) / 20000.0, 0.04 / 0.68, 0.01);
}

/// Kept set by brute force: sort, then apply the header's definitions in double precision.
std::set<int32_t> reference_kept(const std::vector<float>& x, float t, int32_t k, float p,
                                 float mp) {
  const int64_t n = static_cast<int64_t>(x.size());
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> e(n);
  for (int64_t i = 0; i < n; ++i) e[i] = std::exp((x[i] - m) / t);
  const double sum = std::accumulate(e.begin(), e.end(), 0.0);
  std::vector<double> sorted = e;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  const double kth = k > 0 && k < n ? sorted[k - 1] : 0.0;
  std::set<int32_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    double above = 0.0;
    for (double v : sorted) {
      if (v <= e[i]) break;
      above += v;
    }
    if (e[i] >= kth && above < p * sum && e[i] >= mp) kept.insert(static_cast<int32_t>(i));
  }
  return kept;
}

TEST(SamplingCpu, LargeVocabTopPMatchesBruteForce) {
  // A flat-ish distribution over 6000 tokens forces the radix (histogram) path of top-p.
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> row(6000);
  for (auto& f : row) f = normal(rng) * 0.5f;
  const auto kept = reference_kept(row, 1.0f, 0, 0.3f, 0.0f);
  const auto ids = sample_many(row, 3000, 1.0f, 0, 0.3f, 0.0f);
  const auto got = support(ids);
  EXPECT_TRUE(std::includes(kept.begin(), kept.end(), got.begin(), got.end()));
  EXPECT_GT(got.size(), kept.size() / 2);
  // The boundary: the least likely kept token and the most likely dropped one.
  const auto kept_k = reference_kept(row, 0.8f, 300, 0.9f, 0.01f);
  const auto got_k = support(sample_many(row, 3000, 0.8f, 300, 0.9f, 0.01f));
  EXPECT_TRUE(std::includes(kept_k.begin(), kept_k.end(), got_k.begin(), got_k.end()));
}

TEST(SamplingCpu, SixteenBitMatchesFloatOfSameValues) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  const int64_t rows = 64, vocab = 1000;
  std::vector<uint16_t> h(rows * vocab), b(rows * vocab);
  std::vector<float> fh(rows * vocab), fb(rows * vocab);
  for (int64_t i = 0; i < rows * vocab; ++i) {
    const float f = normal(rng) * 2.0f;
    h[i] = float_to_half(f);
    b[i] = float_to_bf16(f);
    fh[i] = half_to_float(h[i]);
    fb[i] = bf16_to_float(b[i]);
  }
  Params p(rows, 0.9f, 50, 0.9f, 0.02f);
  EXPECT_EQ(sample({h.data(), DType::kFloat16, rows, vocab, vocab}, p),
            sample(view_of(fh, rows, vocab), p));
  EXPECT_EQ(sample({b.data(), DType::kBFloat16, rows, vocab, vocab}, p),
            sample(view_of(fb, rows, vocab), p));
}

// ---- reproducibility ----------------------------------------------------------------------------

TEST(SamplingCpu, SameSeedAndOffsetSameTokenWhateverTheBatch) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  const int64_t rows = 32, vocab = 3000;
  std::vector<float> x(rows * vocab);
  for (auto& f : x) f = normal(rng);
  Params p(rows, 1.0f, 0, 0.95f, 0.0f);
  for (int64_t r = 0; r < rows; ++r) p.offsets[r] = 17 + r;
  const auto all = sample(view_of(x, rows, vocab), p, 0);
  EXPECT_EQ(all, sample(view_of(x, rows, vocab), p, 1));  // threads do not matter
  for (int64_t r : {0, 13, 31}) {
    std::vector<float> one(x.begin() + r * vocab, x.begin() + (r + 1) * vocab);
    Params q(1, 1.0f, 0, 0.95f, 0.0f);
    q.seeds[0] = p.seeds[r];
    q.offsets[0] = p.offsets[r];
    EXPECT_EQ(sample(view_of(one, 1, vocab), q)[0], all[r]);
  }
  // A different offset gives a different draw for most rows.
  for (auto& o : p.offsets) o += 1000;
  const auto moved = sample(view_of(x, rows, vocab), p);
  int same = 0;
  for (int64_t r = 0; r < rows; ++r) same += moved[r] == all[r];
  EXPECT_LT(same, rows / 2);
}

// ---- invalid arguments --------------------------------------------------------------------------

TEST(SamplingCpu, InvalidArguments) {
  std::vector<float> x(8, 1.0f);
  std::vector<int32_t> out(2);
  Params p(2);
  const auto bad = Status::kInvalidArgument;
  EXPECT_EQ(sample_cpu({nullptr, DType::kFloat32, 2, 4, 4}, p.args(), out.data(), 0), bad);
  EXPECT_EQ(sample_cpu({x.data(), DType::kFloat32, 2, 0, 4}, p.args(), out.data(), 0), bad);
  EXPECT_EQ(sample_cpu({x.data(), DType::kFloat32, -1, 4, 4}, p.args(), out.data(), 0), bad);
  EXPECT_EQ(sample_cpu({x.data(), static_cast<DType>(7), 2, 4, 4}, p.args(), out.data(), 0), bad);
  EXPECT_EQ(sample_cpu(view_of(x, 2, 4), p.args(), nullptr, 0), bad);
  SamplingArgs no_seeds = p.args();
  no_seeds.seeds = nullptr;
  EXPECT_EQ(sample_cpu(view_of(x, 2, 4), no_seeds, out.data(), 0), bad);
  EXPECT_EQ(sample_cpu({x.data(), DType::kFloat32, 0, 4, 4}, {}, nullptr, 0), Status::kOk);

  std::vector<int32_t> indptr = {0, 1, 2}, ids = {0, 4}, counts = {1, 1};  // 4 is out of range
  const std::vector<float> before = x;
  PenaltyArgs pen{indptr.data(), ids.data(), counts.data(), nullptr, nullptr, nullptr};
  EXPECT_EQ(apply_penalties_cpu(view_of(x, 2, 4), pen, 0), bad);
  EXPECT_EQ(apply_token_ban_cpu(view_of(x, 2, 4), {indptr.data(), ids.data(), nullptr}), bad);
  EXPECT_EQ(x, before);  // nothing touched
  ids[1] = -1;
  EXPECT_EQ(apply_token_ban_cpu(view_of(x, 2, 4), {indptr.data(), ids.data(), nullptr}), bad);
  ids[1] = 3;
  std::vector<int32_t> decreasing = {0, 2, 1};
  EXPECT_EQ(apply_token_ban_cpu(view_of(x, 2, 4), {decreasing.data(), ids.data(), nullptr}), bad);
  EXPECT_EQ(apply_token_ban_cpu(view_of(x, 2, 4), {nullptr, ids.data(), nullptr}), bad);
  EXPECT_EQ(apply_logit_bias_cpu(view_of(x, 2, 4), {indptr.data(), ids.data(), nullptr}), bad);
  PenaltyArgs no_counts{indptr.data(), ids.data(), nullptr, nullptr, nullptr, nullptr};
  EXPECT_EQ(apply_penalties_cpu(view_of(x, 2, 4), no_counts, 0), bad);
  // Overlapping rows cannot be updated in place.
  EXPECT_EQ(apply_token_ban_cpu({x.data(), DType::kFloat32, 2, 4, 2},
                                {indptr.data(), ids.data(), nullptr}),
            bad);
  EXPECT_EQ(x, before);

  std::vector<int32_t> mask = {0};
  EXPECT_EQ(apply_token_bitmask_cpu(view_of(x, 2, 4), {nullptr, 1, nullptr}, 0), bad);
  EXPECT_EQ(apply_token_bitmask_cpu(view_of(x, 2, 4), {mask.data(), -1, nullptr}, 0), bad);
  EXPECT_EQ(
      apply_token_bitmask_cpu({x.data(), DType::kFloat32, 2, 0, 4}, {mask.data(), 1, nullptr}, 0),
      bad);
  EXPECT_EQ(x, before);
}

// ---- worker pool --------------------------------------------------------------------------------

TEST(ThreadPool, CoversEveryIndexOnceAndNestsSerially) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1000);
  pool.parallel_for(1000, 0, [&](int64_t i) {
    hits[i].fetch_add(1);
    // A nested call finds the pool busy and runs on this thread.
    pool.parallel_for(3, 0, [&](int64_t) {});
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  int64_t sum = 0;
  pool.parallel_for(10, 1, [&](int64_t i) { sum += i; });  // one thread: no race on sum
  EXPECT_EQ(sum, 45);
  EXPECT_EQ(plan_threads(1, 1 << 20, 0), 1);
  EXPECT_EQ(plan_threads(100, 1 << 20, 2), 2);
}

}  // namespace
}  // namespace sglang::kernels
