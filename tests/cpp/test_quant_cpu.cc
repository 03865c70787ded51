// Unit tests of the GGUF block-quant CPU kernels (csrc/kernels/quant_cpu.cc) without Python:
// sizes, argument checks, Q8_0 quantize -> dequantize, hand-built Q4_1 blocks, and every ISA
// path agreeing with x @ dequantize(W)^T. (Bit-exactness against ggml's reference for every
// format is tested in tests/py/kernels/test_quant_cpu.py with the gguf package.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/quant.h"

namespace sglang::kernels {
namespace {

constexpr QuantFormat kAll[] = {QuantFormat::kQ4_0, QuantFormat::kQ4_1, QuantFormat::kQ8_0,
                                QuantFormat::kQ4_K, QuantFormat::kQ5_K, QuantFormat::kQ6_K};

/// Random blocks with fp16 fields that are small finite numbers (every fp16 field of every
/// format is overwritten where it can sit; for the K-quants d / dmin / Q6_K's d).
std::vector<uint8_t> random_blocks(QuantFormat fmt, int64_t n, int64_t k, uint32_t seed) {
  const int64_t bs = quant_block_size(fmt);
  const int64_t bb = quant_block_bytes(fmt);
  std::vector<uint8_t> w(static_cast<size_t>(n * k / bs * bb));
  std::mt19937 rng(seed);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  for (size_t off = 0; off < w.size(); off += static_cast<size_t>(bb)) {
    auto put = [&](size_t at) {  // fp16 in [2^-8, 2^-4): biased exponent 7..10, any mantissa
      const auto h = static_cast<uint16_t>(((7 + rng() % 4) << 10) | (rng() & 0x3FF));
      std::memcpy(&w[off + at], &h, 2);
    };
    if (fmt == QuantFormat::kQ6_K) {
      put(208);
    } else {
      put(0);
      if (fmt != QuantFormat::kQ4_0 && fmt != QuantFormat::kQ8_0) put(2);
    }
  }
  return w;
}

class IsaGuard {
 public:
  ~IsaGuard() { set_cpu_isa("auto"); }
};

TEST(QuantCpu, BlockSizes) {
  EXPECT_EQ(quant_block_size(QuantFormat::kQ4_0), 32);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ4_0), 18);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ4_1), 20);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ8_0), 34);
  EXPECT_EQ(quant_block_size(QuantFormat::kQ4_K), 256);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ4_K), 144);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ5_K), 176);
  EXPECT_EQ(quant_block_bytes(QuantFormat::kQ6_K), 210);
  EXPECT_FALSE(quant_format_valid(7));
  EXPECT_EQ(quant_block_size(static_cast<QuantFormat>(7)), 0);
}

TEST(QuantCpu, InvalidArguments) {
  std::vector<uint8_t> w(18 * 4);
  std::vector<float> x(64), out(4);
  const auto bad = Status::kInvalidArgument;
  EXPECT_EQ(quant_matmul_cpu(static_cast<QuantFormat>(5), w.data(), 2, 64, x.data(), 1, 64,
                             nullptr, out.data(), 2, 1),
            bad);
  EXPECT_EQ(quant_matmul_cpu(QuantFormat::kQ4_0, w.data(), 2, 48, x.data(), 1, 48, nullptr,
                             out.data(), 2, 1),
            bad);
  EXPECT_EQ(quant_matmul_cpu(QuantFormat::kQ4_0, nullptr, 2, 64, x.data(), 1, 64, nullptr,
                             out.data(), 2, 1),
            bad);
  EXPECT_EQ(quant_matmul_cpu(QuantFormat::kQ4_0, w.data(), 2, 64, nullptr, 1, 64, nullptr,
                             out.data(), 2, 1),
            bad);
  EXPECT_EQ(quant_matmul_cpu(QuantFormat::kQ4_0, w.data(), 2, 64, x.data(), 1, 64, nullptr,
                             nullptr, 2, 1),
            bad);
  EXPECT_EQ(dequantize_cpu(QuantFormat::kQ4_0, w.data(), 2, 64, nullptr, 64, 1), bad);
  EXPECT_EQ(quantize_q8_0_cpu(x.data(), 1, 40, w.data(), 1), bad);
  // Nothing to do is fine, even with null pointers.
  EXPECT_EQ(quant_matmul_cpu(QuantFormat::kQ4_0, nullptr, 0, 64, nullptr, 0, 64, nullptr,
                             nullptr, 0, 1),
            Status::kOk);
}

TEST(QuantCpu, HandBuiltQ4_1Block) {
  // d = 0.5, m = -1, q[j] = j % 16 for j < 16 (low nibbles), q[j + 16] = 15 - j (high).
  std::vector<uint8_t> b(20);
  const uint16_t d = 0x3800, m = 0xBC00;  // fp16 0.5 and -1.0
  std::memcpy(&b[0], &d, 2);
  std::memcpy(&b[2], &m, 2);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  std::vector<float> w(32);
  ASSERT_EQ(dequantize_cpu(QuantFormat::kQ4_1, b.data(), 1, 32, w.data(), 32, 1), Status::kOk);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(w[j], 0.5f * j - 1.0f);
    EXPECT_EQ(w[j + 16], 0.5f * (15 - j) - 1.0f);
  }
}

TEST(QuantCpu, Q8_0RoundTrip) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  const int64_t n = 5, k = 96;
  std::vector<float> w(n * k);
  for (auto& v : w) v = dist(rng);
  std::vector<uint8_t> q(n * k / 32 * 34);
  ASSERT_EQ(quantize_q8_0_cpu(w.data(), n, k, q.data(), 0), Status::kOk);
  std::vector<float> back(n * k);
  ASSERT_EQ(dequantize_cpu(QuantFormat::kQ8_0, q.data(), n, k, back.data(), k, 0), Status::kOk);
  for (int64_t b = 0; b < n * k / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(w[b * 32 + i]));
    for (int i = 0; i < 32; ++i) EXPECT_LE(std::fabs(back[b * 32 + i] - w[b * 32 + i]), amax / 127);
  }
}

TEST(QuantCpu, EveryPathMatchesDequantizedProduct) {
  IsaGuard guard;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  // m = 6: the decode-sized paths; m = 40: the batched integer GEMM (rows in the SIMD lanes,
  // from 16 rows with VNNI / 32 with AVX2) with a partial lane tile and a partial weight panel.
  for (QuantFormat fmt : kAll) for (const int64_t m : {int64_t{6}, int64_t{40}}) {
    const int64_t n = 13, k = 2 * quant_block_size(fmt), ldx = k + 3, ldo = n + 2;
    const auto w = random_blocks(fmt, n, k, static_cast<uint32_t>(fmt));
    std::vector<float> wf(n * k);
    ASSERT_EQ(dequantize_cpu(fmt, w.data(), n, k, wf.data(), k, 0), Status::kOk);
    std::vector<float> x(m * ldx), bias(n);
    for (auto& v : x) v = dist(rng);
    for (auto& v : bias) v = dist(rng);
    for (const char* isa : {"scalar", "avx2", "avx512"}) {
      ASSERT_TRUE(set_cpu_isa(isa));
      std::vector<float> out(m * ldo, -7.0f);
      ASSERT_EQ(quant_matmul_cpu(fmt, w.data(), n, k, x.data(), m, ldx, bias.data(), out.data(),
                                 ldo, 0),
                Status::kOk);
      double max_ref = 0, max_err = 0;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double ref = bias[j];
          for (int64_t c = 0; c < k; ++c) ref += double(x[i * ldx + c]) * wf[j * k + c];
          max_ref = std::max(max_ref, std::fabs(ref));
          max_err = std::max(max_err, std::fabs(ref - out[i * ldo + j]));
        }
        for (int64_t j = n; j < ldo; ++j) EXPECT_EQ(out[i * ldo + j], -7.0f);
      }
      // The contract (quant.h): 1e-4 of the largest output. The fp32 paths are ~1e-6; the
      // integer path (16-bit activations, Q4_0/Q4_1/Q8_0 on AVX2/AVX-512) ~3e-5.
      EXPECT_LE(max_err, 1e-4 * max_ref) << "format " << int(fmt) << " isa " << isa << " m " << m;
    }
  }
}

}  // namespace
}  // namespace sglang::kernels
