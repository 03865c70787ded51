// Fused logit-processing and sampling kernels: one semantics, a CPU (C++) and a CUDA variant.
//
// Data flow: the model runner produces logits [num_rows, vocab] (row stride `row_stride` elements,
// fp32/fp16/bf16). The engine then calls, in this order and all in place on the logits:
//   1. apply_penalties   (frequency, presence, then repetition; per-row CSR of seen tokens)
//   2. apply_token_ban   (min_new_tokens: EOS / stop ids set to -inf; per-row CSR)
//   3. apply_token_bitmask (grammar: xgrammar's int32 bitmask, bit = 1 means allowed)
//   4. apply_logit_bias  (per-row CSR of (token, bias))
//   5. sample            (temperature, top-k, top-p, min-p, per-row seed) -> int32 token ids
// The scheduler core (sglang::Scheduler) produces the CSR arrays; Python passes raw pointers.
//
// Launchers take raw pointers, sizes, a dtype and (CUDA) a stream, and return a Status; they never
// throw and never allocate on the caller's behalf beyond internal scratch. CPU launchers run on
// the calling thread plus the core's worker pool (`num_threads` <= 0 means "all hardware threads").
// CUDA launchers expect every pointer to be device memory and `stream` to be a cudaStream_t.
#pragma once

#include <cstdint>

namespace sglang::kernels {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

enum class Status : int32_t { kOk = 0, kInvalidArgument = 1, kCudaError = 2, kNotBuilt = 3 };

/// Human-readable text of a status (static storage).
const char* status_string(Status s);

/// Shape of a logits matrix. Elements of row r start at `data + r * row_stride` (elements, not
/// bytes). The in-place launchers need `row_stride >= vocab_size` when num_rows > 1; `sample` only
/// reads, so it also accepts 0 (every row is the same row).
struct LogitsView {
  void* data;
  DType dtype;
  int64_t num_rows;
  int64_t vocab_size;
  int64_t row_stride;
};

/// Per-row penalties. Row r's seen tokens are token_ids[indptr[r] .. indptr[r+1]) with
/// counts[i] = occurrences of that token in the row's *output* so far (0 for a token seen only in
/// the prompt). Unique tokens per row. For each entry (t, c) of row r:
///   if c > 0: logit[t] -= frequency[r] * c + presence[r]
///   then, if repetition[r] != 1: logit[t] = logit[t] > 0 ? logit[t] / repetition[r]
///                                                       : logit[t] * repetition[r]
/// Any of frequency / presence / repetition may be null (meaning 0, 0, 1).
struct PenaltyArgs {
  const int32_t* indptr;     // [num_rows + 1]
  const int32_t* token_ids;  // [nnz]
  const int32_t* counts;     // [nnz]
  const float* frequency;    // [num_rows] or null
  const float* presence;     // [num_rows] or null
  const float* repetition;   // [num_rows] or null
};

/// Per-row token list: row r covers token_ids[indptr[r] .. indptr[r+1]); `values` parallel to it
/// (logit bias) or null (ban: set to -inf).
struct TokenListArgs {
  const int32_t* indptr;     // [num_rows + 1]
  const int32_t* token_ids;  // [nnz]
  const float* values;       // [nnz] or null
};

/// xgrammar's bitmask: int32 words, row r of the mask at `bitmask + mask_row * words_per_row`,
/// token t allowed iff bit (t % 32) of word (t / 32) is set. `row_indices` (may be null = identity)
/// maps logits row r -> mask row; a negative entry leaves that row unmasked. Disallowed tokens are
/// set to -inf. Tokens at or beyond `words_per_row * 32` are left unchanged (as xgrammar does).
struct BitmaskArgs {
  const int32_t* bitmask;
  int64_t words_per_row;
  const int32_t* row_indices;  // [num_rows] or null
};

/// Per-row sampling parameters (all arrays [num_rows]).
///   temperature: <= 0 or top_k == 1 means greedy (argmax; ties -> lowest token id; NaN logits are
///          ignored; a row with no logit above -inf gives token 0).
///   top_k: keep the k most likely tokens (every token tied with the k-th most likely one is kept
///          too); <= 0 or >= vocab means all.
///   top_p: keep the smallest set of most likely tokens whose probability sum reaches top_p
///          (a token is kept when the mass of strictly more likely tokens is < top_p); >= 1 = all.
///   min_p: keep tokens with prob >= min_p * max_prob; 0 = all.
///   seeds, offsets: the row's random draw is a pure function of (seed, offset), so the same seed,
///          offset and logits give the same token, whatever else is in the batch. The engine uses
///          the request's seed and its number of generated tokens as offset.
/// Filters are applied to the temperature-scaled softmax in the order top-k, top-p, min-p, then
/// the kept probabilities are renormalized and one token is drawn by inverse CDF with
/// u = uniform01(seed, offset) over the kept tokens in ascending token-id order. The filters are
/// not renormalized between steps, so the kept set is the intersection of the three filters (the
/// most likely token is always kept); it is {p >= pivot} for some pivot. Probabilities are
/// computed in fp32 (CPU and CUDA may round differently, so they agree in distribution, not
/// bit for bit). A row whose largest logit is not finite (all -inf, or +inf) is sampled greedily.
struct SamplingArgs {
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* min_p;
  const uint64_t* seeds;
  const uint64_t* offsets;
};

/// The uniform draw in [0, 1) used by `sample` (same on CPU and CUDA): splitmix64 of the seed
/// mixed with the offset, top 24 bits scaled by 2^-24. (constexpr so CUDA code may call it too.)
constexpr float uniform01(uint64_t seed, uint64_t offset) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (offset + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

// ---- CPU launchers -----------------------------------------------------------------------------
Status apply_penalties_cpu(const LogitsView& logits, const PenaltyArgs& args, int num_threads);
Status apply_token_ban_cpu(const LogitsView& logits, const TokenListArgs& args);
Status apply_logit_bias_cpu(const LogitsView& logits, const TokenListArgs& args);
Status apply_token_bitmask_cpu(const LogitsView& logits, const BitmaskArgs& args, int num_threads);
/// Writes one token id per row into out_ids [num_rows]. Does not modify the logits.
Status sample_cpu(const LogitsView& logits, const SamplingArgs& args, int32_t* out_ids,
                  int num_threads);

// ---- CUDA launchers (defined only when built with CUDA; `stream` is a cudaStream_t) ------------
// They check what the host can see (pointers, sizes) and launch asynchronously; device arrays are
// not read on the host, so CSR token ids outside [0, vocab) are skipped on the device instead of
// rejected, and indptr / row_indices must stay within their arrays (the caller's promise).
Status apply_penalties_cuda(const LogitsView& logits, const PenaltyArgs& args, void* stream);
Status apply_token_ban_cuda(const LogitsView& logits, const TokenListArgs& args, void* stream);
Status apply_logit_bias_cuda(const LogitsView& logits, const TokenListArgs& args, void* stream);
Status apply_token_bitmask_cuda(const LogitsView& logits, const BitmaskArgs& args, void* stream);
Status sample_cuda(const LogitsView& logits, const SamplingArgs& args, int32_t* out_ids,
                   void* stream);

}  // namespace sglang::kernels
