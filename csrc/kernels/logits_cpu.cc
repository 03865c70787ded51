// CPU launchers of the in-place logit processors: penalties, token ban, logit bias, grammar
// bitmask (semantics in sglang/kernels/sampling.h).
//
// Each element is converted to fp32, updated, and rounded back to the logits dtype, so fp16/bf16
// results equal "compute in fp32, then round" exactly. Penalties and the bitmask split rows over
// the worker pool when the work is large enough; ban and bias touch a few entries per row and run
// on the calling thread.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "sglang/kernels/dtype.h"
#include "sglang/kernels/sampling.h"
#include "sglang/kernels/thread_pool.h"
#include "validate.h"

namespace sglang::kernels {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr uint16_t kHalfNegInf = 0xFC00;
constexpr uint16_t kBf16NegInf = 0xFF80;

/// a * b, rounded once, never fused into a following add (so results match torch bit for bit).
inline float mul_unfused(float a, float b) {
  float r = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(r));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(r));
#endif
  return r;
}

void penalize_row(const LogitsView& logits, const PenaltyArgs& args, int64_t r) {
  void* row = row_pointer(logits, r);
  const float freq = args.frequency != nullptr ? args.frequency[r] : 0.0f;
  const float pres = args.presence != nullptr ? args.presence[r] : 0.0f;
  const float rep = args.repetition != nullptr ? args.repetition[r] : 1.0f;
  for (int64_t i = args.indptr[r]; i < args.indptr[r + 1]; ++i) {
    const int32_t token = args.token_ids[i];
    const int32_t count = args.counts[i];
    float v = load_as_float(row, logits.dtype, token);
    if (count > 0) v -= mul_unfused(freq, static_cast<float>(count)) + pres;
    if (rep != 1.0f) v = v > 0.0f ? v / rep : mul_unfused(v, rep);
    store_from_float(row, logits.dtype, token, v);
  }
}

/// Sets the tokens of one row whose bit is 0 to `neg_inf`; only the first `covered` tokens.
template <typename T>
void mask_row(T* row, const int32_t* mask, int64_t covered, T neg_inf) {
  const int64_t full_words = covered / 32;
  for (int64_t w = 0; w < full_words; ++w) {
    const uint32_t bits = static_cast<uint32_t>(mask[w]);
    if (bits == 0xFFFFFFFFu) continue;
    T* p = row + w * 32;
    for (int j = 0; j < 32; ++j) p[j] = ((bits >> j) & 1u) != 0 ? p[j] : neg_inf;
  }
  for (int64_t t = full_words * 32; t < covered; ++t) {
    if (((static_cast<uint32_t>(mask[t / 32]) >> (t % 32)) & 1u) == 0) row[t] = neg_inf;
  }
}

Status apply_token_list(const LogitsView& logits, const TokenListArgs& args, bool ban) {
  if (!validate::valid_view(logits, /*in_place=*/true)) return Status::kInvalidArgument;
  if (!validate::valid_csr(args.indptr, args.token_ids, logits.num_rows, logits.vocab_size)) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0) return Status::kOk;
  const bool has_entries = args.indptr[logits.num_rows] > args.indptr[0];
  if (!ban && has_entries && args.values == nullptr) return Status::kInvalidArgument;
  for (int64_t r = 0; r < logits.num_rows; ++r) {
    void* row = row_pointer(logits, r);
    for (int64_t i = args.indptr[r]; i < args.indptr[r + 1]; ++i) {
      const int32_t token = args.token_ids[i];
      const float v = ban ? kNegInf : load_as_float(row, logits.dtype, token) + args.values[i];
      store_from_float(row, logits.dtype, token, v);
    }
  }
  return Status::kOk;
}

}  // namespace

Status apply_penalties_cpu(const LogitsView& logits, const PenaltyArgs& args, int num_threads) {
  if (!validate::valid_view(logits, /*in_place=*/true)) return Status::kInvalidArgument;
  if (!validate::valid_csr(args.indptr, args.token_ids, logits.num_rows, logits.vocab_size)) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0) return Status::kOk;
  const int64_t nnz = args.indptr[logits.num_rows] - args.indptr[0];
  if (nnz > 0 && args.counts == nullptr) return Status::kInvalidArgument;
  const int threads = plan_threads(logits.num_rows, 8 * nnz / logits.num_rows, num_threads);
  ThreadPool::global().parallel_for(logits.num_rows, threads,
                                    [&](int64_t r) { penalize_row(logits, args, r); });
  return Status::kOk;
}

Status apply_token_ban_cpu(const LogitsView& logits, const TokenListArgs& args) {
  return apply_token_list(logits, args, /*ban=*/true);
}

Status apply_logit_bias_cpu(const LogitsView& logits, const TokenListArgs& args) {
  return apply_token_list(logits, args, /*ban=*/false);
}

Status apply_token_bitmask_cpu(const LogitsView& logits, const BitmaskArgs& args, int num_threads) {
  if (!validate::valid_view(logits, /*in_place=*/true) || args.words_per_row < 0) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0 || args.words_per_row == 0) return Status::kOk;
  if (args.bitmask == nullptr) return Status::kInvalidArgument;
  const int64_t covered = std::min(logits.vocab_size, args.words_per_row * 32);
  auto mask_one = [&](int64_t r) {
    const int64_t mask_row_index = args.row_indices != nullptr ? args.row_indices[r] : r;
    if (mask_row_index < 0) return;
    const int32_t* mask = args.bitmask + mask_row_index * args.words_per_row;
    void* row = row_pointer(logits, r);
    switch (logits.dtype) {
      case DType::kFloat32:
        mask_row(static_cast<float*>(row), mask, covered, kNegInf);
        break;
      case DType::kFloat16:
        mask_row(static_cast<uint16_t*>(row), mask, covered, kHalfNegInf);
        break;
      case DType::kBFloat16:
        mask_row(static_cast<uint16_t*>(row), mask, covered, kBf16NegInf);
        break;
    }
  };
  const int threads = plan_threads(logits.num_rows, covered, num_threads);
  ThreadPool::global().parallel_for(logits.num_rows, threads, mask_one);
  return Status::kOk;
}

}  // namespace sglang::kernels
