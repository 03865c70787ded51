// Unit tests of the segmented multi-LoRA CPU kernel (csrc/kernels/lora_cpu.cc) without Python:
// every ISA path against a float64 reference per row, fp32 and bf16, strided x and y (y a column
// slice of a wider output), base-model (-1) and empty segments, ranks below max_rank (and a
// max_rank that is not a multiple of the 8-rank tile), sizes off the vector width, batches large
// enough for the thread pool and the 64-row blocks, and every argument error leaving y untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/dtype.h"
#include "sglang/kernels/lora.h"

namespace sglang::kernels {
namespace {

class IsaGuard {
 public:
  ~IsaGuard() { set_cpu_isa("auto"); }
};

/// A batch and its adapters; float data as fp32 values (bf16-representable for bf16 cases).
struct Case {
  DType dtype = DType::kFloat32;
  int64_t rows = 0, in = 0, out = 0, x_stride = 0, y_stride = 0;
  int64_t max_rank = 0, num_slots = 0;
  std::vector<int32_t> ranks, indptr, slots;
  std::vector<float> scaling, x, y, a, b;

  /// Random values (bf16-rounded for bf16); y's padding columns hold a sentinel.
  Case(DType dt, int64_t rows_, int64_t in_, int64_t out_, int64_t max_rank_,
       std::vector<int32_t> ranks_, std::vector<int32_t> indptr_, std::vector<int32_t> slots_,
       uint32_t seed)
      : dtype(dt), rows(rows_), in(in_), out(out_), x_stride(in_ + 3), y_stride(out_ + 5),
        max_rank(max_rank_), num_slots(static_cast<int64_t>(ranks_.size())), ranks(ranks_),
        indptr(indptr_), slots(slots_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    auto fill = [&](std::vector<float>& v, size_t n, float scale) {
      v.resize(n);
      for (auto& e : v) e = round(dist(rng) * scale);
    };
    fill(x, rows * x_stride, 1.0f);
    fill(y, rows * y_stride, 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = out; c < y_stride; ++c) y[r * y_stride + c] = -7.0f;
    }
    fill(a, num_slots * max_rank * in, 0.1f);
    fill(b, num_slots * out * max_rank, 0.1f);
    for (int64_t s = 0; s < num_slots; ++s) scaling.push_back(0.5f + static_cast<float>(s));
  }

  float round(float v) const {
    return dtype == DType::kBFloat16 ? bf16_to_float(float_to_bf16(v)) : v;
  }

  /// y after the update in float64 (fp32 values of the inputs).
  std::vector<double> reference() const {
    std::vector<double> ref(y.begin(), y.end());
    for (size_t g = 0; g + 1 < indptr.size(); ++g) {
      const int32_t s = slots[g];
      if (s < 0) continue;
      for (int64_t r = indptr[g]; r < indptr[g + 1]; ++r) {
        std::vector<double> t(ranks[s]);
        for (int32_t j = 0; j < ranks[s]; ++j) {
          for (int64_t i = 0; i < in; ++i) {
            t[j] += double(a[(s * max_rank + j) * in + i]) * x[r * x_stride + i];
          }
        }
        for (int64_t o = 0; o < out; ++o) {
          double d = 0;
          for (int32_t j = 0; j < ranks[s]; ++j) {
            d += double(b[(s * out + o) * max_rank + j]) * t[j];
          }
          ref[r * y_stride + o] += scaling[s] * d;
        }
      }
    }
    return ref;
  }
};

/// The case's float arrays in its dtype (fp32 as is, bf16 as bits).
struct Buffers {
  std::vector<float> f32[4];
  std::vector<uint16_t> b16[4];
  DType dtype;

  explicit Buffers(const Case& c) : dtype(c.dtype) {
    const std::vector<float>* src[4] = {&c.x, &c.y, &c.a, &c.b};
    for (int i = 0; i < 4; ++i) {
      if (dtype == DType::kFloat32) {
        f32[i] = *src[i];
      } else {
        for (float v : *src[i]) b16[i].push_back(float_to_bf16(v));
      }
    }
  }
  void* data(int i) {
    return dtype == DType::kFloat32 ? static_cast<void*>(f32[i].data()) : b16[i].data();
  }
  float y(size_t i) const {
    return dtype == DType::kFloat32 ? f32[1][i] : bf16_to_float(b16[1][i]);
  }
};

Status run(const Case& c, Buffers& buf, DType dtype_arg) {
  const RowsView x{buf.data(0), dtype_arg, c.rows, c.in, c.x_stride};
  const RowsView y{buf.data(1), dtype_arg, c.rows, c.out, c.y_stride};
  const LoraWeights w{buf.data(2), buf.data(3),       c.max_rank,
                      c.ranks.data(), c.scaling.data(), c.num_slots};
  const LoraSegments s{c.indptr.data(), c.slots.data(),
                       static_cast<int64_t>(c.indptr.size()) - 1};
  return lora_apply(x, y, w, s);
}

/// Runs the case on every ISA path and compares with the float64 reference.
void check(const Case& c) {
  IsaGuard guard;
  const std::vector<double> ref = c.reference();
  for (const char* isa : {"avx2", "avx512"}) {
    ASSERT_TRUE(set_cpu_isa(isa));
    Buffers buf(c);
    ASSERT_EQ(run(c, buf, c.dtype), Status::kOk) << isa;
    std::vector<bool> adapted(c.rows, false);
    for (size_t g = 0; g + 1 < c.indptr.size(); ++g) {
      for (int32_t r = c.indptr[g]; r < c.indptr[g + 1]; ++r) adapted[r] = c.slots[g] >= 0;
    }
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t o = 0; o < c.y_stride; ++o) {
        const size_t i = r * c.y_stride + o;
        if (o >= c.out || !adapted[r]) {  // padding and base-model rows: untouched, bit for bit
          ASSERT_EQ(buf.y(i), c.y[i]) << isa << " row " << r << " col " << o;
          continue;
        }
        if (c.dtype == DType::kFloat32) {
          ASSERT_NEAR(buf.y(i), ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << isa << " " << r;
        } else {  // rounded once from an fp32 sum: within one bf16 ulp of the exact result
          ASSERT_NEAR(buf.y(i), ref[i], std::fabs(ref[i]) / 128 + 1e-6) << isa << " " << r;
        }
      }
    }
  }
}

TEST(LoraCpu, MatchesReferenceFp32AndBf16) {
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    // 4 slots of max_rank 16: full rank, rank 8, rank 3, rank 0; segments with slot -1, empty
    // segments, a repeated slot, row counts around the 4-row tiles.
    Case c(dt, 23, 96, 80, 16, {16, 8, 3, 0}, {0, 5, 5, 6, 13, 13, 17, 20, 23},
           {1, 2, -1, 0, 3, 2, 0, 1}, 1);
    check(c);
  }
}

TEST(LoraCpu, SizesOffTheVectorWidth) {
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    // in 37, out 45 (scalar tails), max_rank 12 (the second 8-rank tile is element by element).
    Case c(dt, 11, 37, 45, 12, {12, 5, 9}, {0, 3, 7, 11}, {0, 1, 2}, 2);
    check(c);
    Case one(dt, 1, 5, 3, 1, {1}, {0, 1}, {0}, 3);
    check(one);
  }
}

TEST(LoraCpu, LargeBatchUsesBlocksAndThreads) {
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    // 300 rows: segments longer than the 64-row block, enough work for the thread pool.
    Case c(dt, 300, 128, 256, 32, {32, 16}, {0, 150, 170, 300}, {0, -1, 1}, 4);
    check(c);
  }
}

TEST(LoraCpu, DecodeShape) {
  // The decode shape of the brief: 32 rows, in 576, out 1536, rank 8, 4 segments.
  Case c(DType::kFloat32, 32, 576, 1536, 8, {8, 8, 8, 8}, {0, 8, 16, 24, 32}, {3, 0, 2, 1}, 5);
  check(c);
}

TEST(LoraCpu, NothingToDo) {
  // No rows; only base-model / empty segments; rank 0 everywhere.
  Case empty(DType::kFloat32, 0, 8, 8, 4, {4}, {0}, {}, 6);
  check(empty);
  Case empty_segments(DType::kFloat32, 0, 8, 8, 4, {4}, {0, 0, 0}, {0, -1}, 6);
  check(empty_segments);
  Case base(DType::kBFloat16, 6, 16, 16, 4, {4}, {0, 6}, {-1}, 7);
  check(base);
  Case rank0(DType::kFloat32, 6, 16, 16, 4, {0, 0}, {0, 2, 6}, {0, 1}, 8);
  check(rank0);
}

TEST(LoraCpu, InvalidArgumentsLeaveYUntouched) {
  const Case good(DType::kFloat32, 6, 16, 24, 4, {4, 2}, {0, 2, 6}, {0, 1}, 9);
  auto expect_bad = [](const Case& c, DType dt, const char* what) {
    Buffers buf(c);
    EXPECT_EQ(run(c, buf, dt), Status::kInvalidArgument) << what;
    for (size_t i = 0; i < c.y.size(); ++i) ASSERT_EQ(buf.y(i), c.y[i]) << what;
  };
  expect_bad(good, DType::kFloat16, "float16");
  expect_bad(good, static_cast<DType>(7), "unknown dtype");
  Case c = good;
  c.slots[1] = 2;
  expect_bad(c, c.dtype, "slot >= num_slots");
  c = good;
  c.slots[0] = -2;
  expect_bad(c, c.dtype, "slot < -1");
  c = good;
  c.ranks[1] = 5;
  expect_bad(c, c.dtype, "rank > max_rank");
  c = good;
  c.ranks[0] = -1;
  expect_bad(c, c.dtype, "rank < 0");
  c = good;
  c.indptr = {0, 4, 3, 6};
  c.slots = {0, 1, 0};
  expect_bad(c, c.dtype, "decreasing indptr");
  c = good;
  c.indptr = {0, 2, 5};
  expect_bad(c, c.dtype, "last indptr != rows");
  c = good;
  c.indptr = {1, 2, 6};
  expect_bad(c, c.dtype, "indptr[0] != 0");

  Buffers buf(good);
  const RowsView x{buf.data(0), good.dtype, good.rows, good.in, good.x_stride};
  const RowsView y{buf.data(1), good.dtype, good.rows, good.out, good.y_stride};
  const LoraWeights w{buf.data(2),          buf.data(3),          good.max_rank,
                      good.ranks.data(),    good.scaling.data(),  good.num_slots};
  const LoraSegments s{good.indptr.data(), good.slots.data(), 2};
  EXPECT_EQ(lora_apply(x, y, w, s), Status::kOk);
  const RowsView y_short{buf.data(1), good.dtype, good.rows - 1, good.out, good.y_stride};
  EXPECT_EQ(lora_apply(x, y_short, w, s), Status::kInvalidArgument);
  const RowsView y_overlapping_rows{buf.data(1), good.dtype, good.rows, good.out, good.out - 1};
  EXPECT_EQ(lora_apply(x, y_overlapping_rows, w, s), Status::kInvalidArgument);
  LoraWeights no_a = w;
  no_a.a = nullptr;
  EXPECT_EQ(lora_apply(x, y, no_a, s), Status::kInvalidArgument);
  LoraWeights no_ranks = w;
  no_ranks.ranks = nullptr;
  EXPECT_EQ(lora_apply(x, y, no_ranks, s), Status::kInvalidArgument);
  const LoraSegments no_indptr{nullptr, good.slots.data(), 2};
  EXPECT_EQ(lora_apply(x, y, w, no_indptr), Status::kInvalidArgument);
  const LoraSegments no_slots{good.indptr.data(), nullptr, 2};
  EXPECT_EQ(lora_apply(x, y, w, no_slots), Status::kInvalidArgument);
}

}  // namespace
}  // namespace sglang::kernels
