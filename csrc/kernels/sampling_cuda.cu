// CUDA launchers of the logit processors and the sampler (semantics in sglang/kernels/sampling.h).
//
// One block per logits row. Penalties / ban / bias: the block's threads split the row's CSR
// entries (unique per row, so no two threads touch one logit). Bitmask: the block's threads split
// the row's tokens. Sampling, in fp32, without sorting:
//   1. block max of the row (NaN ignored); greedy rows take the lowest id holding it;
//   2. weights w[i] = exp((x[i] - max) / T) in (0, 1] (recomputed from the logits on every pass,
//      never stored) and their block sum S;
//   3. the kept set is {w >= pivot}: a k-ary search over the bit patterns of fp32 weights in
//      [min_p, 1] (they order like the weights) finds the smallest pivot t with
//      #{w > t} < top_k and mass{w > t} < top_p * S, evaluating kPivots candidates per pass;
//   4. inverse CDF at u * kept_mass over the kept weights in ascending id order: tiles of the row
//      are summed per warp, the block walks the warp sums, then the crossing warp walks its lanes
//      and the crossing lane its items, each level with a sequential running sum.
// Host-side checks cover pointers and sizes; CSR token ids outside [0, vocab) are skipped on the
// device (the CPU launcher rejects them instead). Nothing is allocated; no host synchronisation.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>

#include "sglang/kernels/dtype.h"
#include "sglang/kernels/sampling.h"
#include "validate.h"

namespace sglang::kernels {

namespace {

constexpr int kSampleThreads = 512;
constexpr int kWarps = kSampleThreads / 32;
constexpr int kItems = 8;    // contiguous tokens per thread in one draw tile
constexpr int kPivots = 15;  // candidate pivots per search pass (range shrinks 16x per pass)
constexpr int kListThreads = 128;
constexpr int kMaskThreads = 256;
constexpr float kExpMin = -87.0f;  // weights of smaller exponents are 0 (as on the CPU)

// ---- element access ----------------------------------------------------------------------------

template <DType D>
__device__ __forceinline__ float load(const void* row, int64_t i) {
  if constexpr (D == DType::kFloat32) {
    return static_cast<const float*>(row)[i];
  } else if constexpr (D == DType::kFloat16) {
    return __half2float(__ushort_as_half(static_cast<const uint16_t*>(row)[i]));
  } else {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(row)[i]) << 16);
  }
}

// ---- block reductions (deterministic: fixed order, no atomics) ---------------------------------

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  return v;
}

/// Reduces N values per thread over the block; every thread gets the N results.
/// `smem` holds kWarps * N elements. Contains __syncthreads: call from every thread.
template <int N, typename T, typename Op>
__device__ __forceinline__ void block_reduce(T (&v)[N], T* smem, Op op) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = warp_reduce(v[j], op);
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < N; ++j) smem[warp * N + j] = v[j];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    T acc = smem[j];
    for (int w = 1; w < kWarps; ++w) acc = op(acc, smem[w * N + j]);
    v[j] = acc;
  }
  __syncthreads();
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};
struct Min {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};

template <typename T, typename Op>
__device__ __forceinline__ T block_reduce1(T v, T* smem, Op op) {
  T a[1] = {v};
  block_reduce<1>(a, smem, op);
  return a[0];
}

// ---- sampling ----------------------------------------------------------------------------------

struct RowWeights {
  const void* row;
  float max;
  float inv_t;
};

template <DType D>
__device__ __forceinline__ float weight(const RowWeights& rw, int64_t i) {
  const float a = (load<D>(rw.row, i) - rw.max) * rw.inv_t;
  return a >= kExpMin ? expf(a) : 0.0f;  // -inf and NaN logits weigh 0
}

/// Smallest fp32 bit pattern t in [lo, hi] with #{w > t} < k and (use_p: mass{w > t} < target);
/// hi when there is none. Both conditions only get truer as t grows.
template <DType D>
__device__ uint32_t search_pivot(const RowWeights& rw, int64_t n, uint32_t lo, uint32_t hi, int k,
                                 bool use_p, float target, float* smem_f, int* smem_c) {
  while (lo < hi) {
    float pivot[kPivots];
#pragma unroll
    for (int j = 0; j < kPivots; ++j) {
      pivot[j] = __uint_as_float(
          lo + static_cast<uint32_t>(static_cast<uint64_t>(hi - lo) * (j + 1) / (kPivots + 1)));
    }
    int count[kPivots] = {};
    float mass[kPivots] = {};
    for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) {
      const float w = weight<D>(rw, i);
#pragma unroll
      for (int j = 0; j < kPivots; ++j) {
        const bool above = w > pivot[j];
        count[j] += above ? 1 : 0;
        mass[j] += above ? w : 0.0f;
      }
    }
    block_reduce<kPivots>(count, smem_c, Sum());
    block_reduce<kPivots>(mass, smem_f, Sum());
    uint32_t new_lo = lo;
    uint32_t new_hi = hi;
#pragma unroll
    for (int j = 0; j < kPivots; ++j) {
      const uint32_t bits = __float_as_uint(pivot[j]);
      const bool ok = count[j] < k && (!use_p || mass[j] < target);
      if (ok) {
        new_hi = new_hi < bits ? new_hi : bits;
      } else {
        new_lo = new_lo > bits + 1 ? new_lo : bits + 1;
      }
    }
    lo = new_lo;
    hi = new_hi > lo ? new_hi : lo;
  }
  return lo;
}

/// Inverse CDF over the weights >= thr in ascending id order at `target` (= u * kept mass);
/// `last_kept` is returned when rounding leaves the target past the end.
template <DType D>
__device__ long long draw(const RowWeights& rw, int64_t n, float thr, float target,
                          long long last_kept, float* smem_f, long long* smem_l) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  constexpr int64_t kTile = static_cast<int64_t>(kSampleThreads) * kItems;
  float running = 0.0f;
  for (int64_t base = 0; base < n; base += kTile) {
    const int64_t first = base + static_cast<int64_t>(threadIdx.x) * kItems;
    float w[kItems];
    float local = 0.0f;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const float v = first + j < n ? weight<D>(rw, first + j) : 0.0f;
      w[j] = v >= thr ? v : 0.0f;
      local += w[j];
    }
    const float warp_sum = warp_reduce(local, Sum());
    if (lane == 0) smem_f[warp] = warp_sum;
    __syncthreads();
    // Every thread walks the warp sums in the same order, so all agree on the crossing warp.
    int cross = -1;
    float before = running;
    for (int i = 0; i < kWarps; ++i) {
      const float s = smem_f[i];
      if (cross < 0 && s > 0.0f && running + s > target) {
        cross = i;
        before = running;
      }
      running += s;
    }
    __syncthreads();
    if (cross >= 0) {
      long long pick = -1;
      if (warp == cross) {
        // Every lane walks the lane sums in the same order (so all agree on the crossing lane)
        // and notes the running sum in front of its own items.
        float run = before;
        float prefix = before;
        int cross_lane = -1;
        int last_lane = -1;
        for (int l = 0; l < 32; ++l) {
          const float s = __shfl_sync(0xFFFFFFFFu, local, l);
          if (l == lane) prefix = run;
          if (s > 0.0f) last_lane = l;
          if (cross_lane < 0 && s > 0.0f && run + s > target) cross_lane = l;
          run += s;
        }
        if (cross_lane < 0) cross_lane = last_lane;  // rounding: the warp's last kept lane
        if (lane == cross_lane) {
          float acc = prefix;
          for (int j = 0; j < kItems; ++j) {
            if (w[j] <= 0.0f) continue;
            pick = first + j;
            acc += w[j];
            if (acc > target) break;
          }
        }
      }
      pick = block_reduce1(pick, smem_l, Max());
      return pick >= 0 ? pick : last_kept;
    }
  }
  return last_kept;
}

template <DType D>
__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(LogitsView logits, SamplingArgs args, int32_t* out_ids) {
  __shared__ float smem_f[kWarps * kPivots];
  __shared__ int smem_c[kWarps * kPivots];
  __shared__ long long smem_l[kWarps];
  const int64_t r = blockIdx.x;
  const int64_t n = logits.vocab_size;
  RowWeights rw{row_pointer(logits, r), 0.0f, 1.0f};

  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) m = fmaxf(m, load<D>(rw.row, i));
  m = block_reduce1(m, smem_f, Max());

  const float temperature = args.temperature[r];
  const int32_t top_k = args.top_k[r];
  const float inv_t = 1.0f / temperature;
  if (!(temperature > 0.0f) || top_k == 1 || isinf(m) || isinf(inv_t)) {
    // Greedy: the lowest id holding the max; 0 when nothing is above -inf.
    long long best = n;
    if (m > -INFINITY) {
      for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) {
        if (load<D>(rw.row, i) == m) {
          best = i;
          break;
        }
      }
    }
    best = block_reduce1(best, smem_l, Min());
    if (threadIdx.x == 0) out_ids[r] = static_cast<int32_t>(best < n ? best : 0);
    return;
  }
  rw.max = m;
  rw.inv_t = fmaxf(inv_t, FLT_MIN);  // T = +inf: keep -inf logits at weight 0

  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) sum += weight<D>(rw, i);
  sum = block_reduce1(sum, smem_f, Sum());

  const float min_p = args.min_p[r];
  const float top_p = args.top_p[r];
  const bool use_k = top_k > 1 && top_k < n;
  const bool use_p = top_p < 1.0f;  // false for NaN
  uint32_t lo = min_p > 0.0f ? __float_as_uint(fminf(min_p, 1.0f)) : 0u;
  const uint32_t hi = __float_as_uint(1.0f);  // the max weighs exactly 1
  if (use_k || use_p) {
    const float target = fmaxf(top_p, 0.0f) * sum;
    lo = search_pivot<D>(rw, n, lo, hi, use_k ? top_k : INT_MAX, use_p, target, smem_f, smem_c);
  }
  const float thr = fmaxf(__uint_as_float(lo), __uint_as_float(1u));  // kept weights are > 0

  float kept = 0.0f;
  long long last_kept = -1;
  for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) {
    const float w = weight<D>(rw, i);
    if (w >= thr) {
      kept += w;
      last_kept = i;
    }
  }
  kept = block_reduce1(kept, smem_f, Sum());
  last_kept = block_reduce1(last_kept, smem_l, Max());
  const float u = uniform01(args.seeds[r], args.offsets[r]);
  const long long pick = draw<D>(rw, n, thr, u * kept, last_kept, smem_f, smem_l);
  if (threadIdx.x == 0) out_ids[r] = static_cast<int32_t>(pick >= 0 ? pick : 0);
}

// ---- logit processors --------------------------------------------------------------------------

__global__ void penalties_kernel(LogitsView logits, PenaltyArgs args) {
  const int64_t r = blockIdx.x;
  void* row = row_pointer(logits, r);
  const float freq = args.frequency != nullptr ? args.frequency[r] : 0.0f;
  const float pres = args.presence != nullptr ? args.presence[r] : 0.0f;
  const float rep = args.repetition != nullptr ? args.repetition[r] : 1.0f;
  for (int64_t i = static_cast<int64_t>(args.indptr[r]) + threadIdx.x; i < args.indptr[r + 1];
       i += blockDim.x) {
    const int32_t token = args.token_ids[i];
    if (token < 0 || token >= logits.vocab_size) continue;
    const int32_t count = args.counts[i];
    float v = load_as_float(row, logits.dtype, token);
    // Explicitly rounded operations: no FMA contraction, so results match the CPU bit for bit.
    if (count > 0) v = __fsub_rn(v, __fadd_rn(__fmul_rn(freq, static_cast<float>(count)), pres));
    if (rep != 1.0f) v = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
    store_from_float(row, logits.dtype, token, v);
  }
}

__global__ void token_list_kernel(LogitsView logits, TokenListArgs args) {
  const int64_t r = blockIdx.x;
  void* row = row_pointer(logits, r);
  for (int64_t i = static_cast<int64_t>(args.indptr[r]) + threadIdx.x; i < args.indptr[r + 1];
       i += blockDim.x) {
    const int32_t token = args.token_ids[i];
    if (token < 0 || token >= logits.vocab_size) continue;
    const float v = args.values == nullptr
                        ? -INFINITY
                        : __fadd_rn(load_as_float(row, logits.dtype, token), args.values[i]);
    store_from_float(row, logits.dtype, token, v);
  }
}

__global__ void bitmask_kernel(LogitsView logits, BitmaskArgs args, int64_t covered) {
  const int64_t r = blockIdx.x;
  const int64_t mask_row = args.row_indices != nullptr ? args.row_indices[r] : r;
  if (mask_row < 0) return;
  const int32_t* mask = args.bitmask + mask_row * args.words_per_row;
  void* row = row_pointer(logits, r);
  for (int64_t t = threadIdx.x; t < covered; t += blockDim.x) {
    if (((static_cast<uint32_t>(mask[t >> 5]) >> (t & 31)) & 1u) == 0) {
      store_from_float(row, logits.dtype, t, -INFINITY);
    }
  }
}

/// One block per row: the row count must fit gridDim.x.
bool rows_fit_grid(const LogitsView& logits) { return logits.num_rows <= INT32_MAX; }

Status launch_status() {
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kCudaError;
}

Status launch_token_list(const LogitsView& logits, const TokenListArgs& args, void* stream,
                         bool ban) {
  if (!validate::valid_view(logits, /*in_place=*/true) || !rows_fit_grid(logits)) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0) return Status::kOk;
  if (args.indptr == nullptr || args.token_ids == nullptr) return Status::kInvalidArgument;
  if (!ban && args.values == nullptr) return Status::kInvalidArgument;
  TokenListArgs device_args = args;
  if (ban) device_args.values = nullptr;
  token_list_kernel<<<static_cast<unsigned>(logits.num_rows), kListThreads, 0,
                      static_cast<cudaStream_t>(stream)>>>(logits, device_args);
  return launch_status();
}

}  // namespace

Status apply_penalties_cuda(const LogitsView& logits, const PenaltyArgs& args, void* stream) {
  if (!validate::valid_view(logits, /*in_place=*/true) || !rows_fit_grid(logits)) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0) return Status::kOk;
  if (args.indptr == nullptr || args.token_ids == nullptr || args.counts == nullptr) {
    return Status::kInvalidArgument;
  }
  penalties_kernel<<<static_cast<unsigned>(logits.num_rows), kListThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(logits, args);
  return launch_status();
}

Status apply_token_ban_cuda(const LogitsView& logits, const TokenListArgs& args, void* stream) {
  return launch_token_list(logits, args, stream, /*ban=*/true);
}

Status apply_logit_bias_cuda(const LogitsView& logits, const TokenListArgs& args, void* stream) {
  return launch_token_list(logits, args, stream, /*ban=*/false);
}

Status apply_token_bitmask_cuda(const LogitsView& logits, const BitmaskArgs& args, void* stream) {
  if (!validate::valid_view(logits, /*in_place=*/true) || !rows_fit_grid(logits) ||
      args.words_per_row < 0) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0 || args.words_per_row == 0) return Status::kOk;
  if (args.bitmask == nullptr) return Status::kInvalidArgument;
  const int64_t covered =
      logits.vocab_size < args.words_per_row * 32 ? logits.vocab_size : args.words_per_row * 32;
  bitmask_kernel<<<static_cast<unsigned>(logits.num_rows), kMaskThreads, 0,
                   static_cast<cudaStream_t>(stream)>>>(logits, args, covered);
  return launch_status();
}

Status sample_cuda(const LogitsView& logits, const SamplingArgs& args, int32_t* out_ids,
                   void* stream) {
  if (!validate::valid_view(logits, /*in_place=*/false) || !rows_fit_grid(logits) ||
      logits.vocab_size > INT32_MAX) {
    return Status::kInvalidArgument;
  }
  if (logits.num_rows == 0) return Status::kOk;
  if (out_ids == nullptr || args.temperature == nullptr || args.top_k == nullptr ||
      args.top_p == nullptr || args.min_p == nullptr || args.seeds == nullptr ||
      args.offsets == nullptr) {
    return Status::kInvalidArgument;
  }
  const dim3 grid(static_cast<unsigned>(logits.num_rows));
  auto s = static_cast<cudaStream_t>(stream);
  switch (logits.dtype) {
    case DType::kFloat32:
      sample_kernel<DType::kFloat32><<<grid, kSampleThreads, 0, s>>>(logits, args, out_ids);
      break;
    case DType::kFloat16:
      sample_kernel<DType::kFloat16><<<grid, kSampleThreads, 0, s>>>(logits, args, out_ids);
      break;
    case DType::kBFloat16:
      sample_kernel<DType::kBFloat16><<<grid, kSampleThreads, 0, s>>>(logits, args, out_ids);
      break;
  }
  return launch_status();
}

}  // namespace sglang::kernels
