// Launchers of the paged attention kernels (decode and extend); semantics in
// sglang/kernels/cpu_ops.h, per-item kernels in ops_kernels.inc.
//
// Decode splits into (request, range of up to 8 KV heads) items, so each key row is read once for
// all its heads; when those are fewer than about twice the threads, each request's keys are also
// cut into chunks (flash-decoding): every chunk writes its
// unnormalized accumulator, max and sum, and a merge pass combines them by log-sum-exp.
// Extend splits into (query tile, kv head) items, the tiles with the most keys first.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ops_cpu_impl.h"
#include "sglang/kernels/dtype.h"

namespace sglang::kernels {

namespace {

constexpr int64_t kMinDecodeChunk = 128;  // keys per flash-decoding chunk, at least
constexpr int64_t kExtendTile = 32;       // query tokens per extend item

bool valid_shape(const AttnShape& s, int64_t rows) {
  if (!ops::ops_dtype(s.dtype) || s.num_heads <= 0 || s.num_kv_heads <= 0 ||
      s.num_heads % s.num_kv_heads != 0 || s.head_dim <= 0 || s.head_dim % 16 != 0 ||
      s.head_dim > ops::kMaxHeadDim || !std::isfinite(s.scale)) {
    return false;
  }
  if (rows == 0) return true;
  if (s.q == nullptr || s.out == nullptr) return false;
  const int64_t width = s.num_heads * s.head_dim;
  return rows == 1 || (s.q_stride >= width && s.out_stride >= width);
}

/// Table rows in range, seq_lens in [min_len, table_stride], every used slot in [0, num_slots).
bool valid_kv(const PagedKv& kv, const AttnShape& s, int32_t min_len) {
  if (kv.batch < 0) return false;
  if (kv.batch == 0) return true;
  if (kv.k_cache == nullptr || kv.v_cache == nullptr || kv.req_to_token == nullptr ||
      kv.req_pool_indices == nullptr || kv.seq_lens == nullptr) {
    return false;
  }
  if (kv.num_slots <= 0 || kv.cache_stride < s.num_kv_heads * s.head_dim || kv.table_rows <= 0 ||
      kv.table_stride <= 0) {
    return false;
  }
  for (int64_t b = 0; b < kv.batch; ++b) {
    const int64_t row = kv.req_pool_indices[b];
    const int32_t len = kv.seq_lens[b];
    if (row < 0 || row >= kv.table_rows || len < min_len || len > kv.table_stride) return false;
    const int32_t* slots = kv.req_to_token + row * kv.table_stride;
    int32_t lo = 0, hi = 0;
    for (int32_t j = 0; j < len; ++j) {
      lo = std::min(lo, slots[j]);
      hi = std::max(hi, slots[j]);
    }
    if (lo < 0 || hi >= kv.num_slots) return false;
  }
  return true;
}

int pool_threads() { return ThreadPool::global().num_workers() + 1; }

/// Scratch of the calling thread for decode partials and extend tiles (grows, never shrinks).
struct LaunchScratch {
  std::vector<float> partials;
  std::vector<int64_t> tiles;  // (b, r0, r1) triples
  std::vector<int64_t> order;  // tile indices, longest first
};
LaunchScratch& launch_scratch() {
  thread_local LaunchScratch s;
  return s;
}

/// Combines the chunk partials of one KV head of one request into the output rows of its query
/// group: part c of that head is at parts + c * item_stride.
void merge_partials(const AttnShape& sh, const float* parts, int64_t splits, int64_t item_stride,
                    int64_t b, int64_t h) {
  const int64_t group = sh.num_heads / sh.num_kv_heads, d = sh.head_dim;
  char* out = static_cast<char*>(sh.out) +
              (b * sh.out_stride + h * group * d) * dtype_size(sh.dtype);
  float acc[ops::kMaxHeadDim];
  for (int64_t g = 0; g < group; ++g) {
    float m = -INFINITY;
    for (int64_t c = 0; c < splits; ++c) m = std::max(m, parts[c * item_stride + group * d + g]);
    float l = 0.0f;
    std::fill(acc, acc + d, 0.0f);
    for (int64_t c = 0; c < splits; ++c) {
      const float* p = parts + c * item_stride;
      const float lc = p[group * d + group + g];
      if (lc == 0.0f) continue;  // an empty chunk
      const float w = std::exp(p[group * d + g] - m);
      l += lc * w;
      for (int64_t i = 0; i < d; ++i) acc[i] += w * p[g * d + i];
    }
    const float inv = 1.0f / l;
    void* row = out + g * d * dtype_size(sh.dtype);
    for (int64_t i = 0; i < d; ++i) store_from_float(row, sh.dtype, i, acc[i] * inv);
  }
}

}  // namespace

Status paged_decode_attention_cpu(const AttnShape& sh, const PagedKv& kv) {
  if (!valid_shape(sh, kv.batch) || !valid_kv(kv, sh, 1)) return Status::kInvalidArgument;
  if (kv.batch == 0) return Status::kOk;
  const ops::OpsIsaTable& t = ops::ops_table();
  const int64_t kvh = sh.num_kv_heads, group = sh.num_heads / kvh, d = sh.head_dim;
  // Items: (request, range of KV heads, chunk of keys).
  const int64_t ranges = (kvh + ops::kMaxDecodeHeads - 1) / ops::kMaxDecodeHeads;
  const int64_t per_range = (kvh + ranges - 1) / ranges;
  const int64_t units = kv.batch * ranges;
  int64_t max_len = 0, total_len = 0;
  for (int64_t b = 0; b < kv.batch; ++b) {
    max_len = std::max<int64_t>(max_len, kv.seq_lens[b]);
    total_len += kv.seq_lens[b];
  }
  const int64_t cost_per_key = 4 * sh.num_heads * d;
  const int threads = plan_threads(units * 64, total_len * cost_per_key / (units * 64), 0);
  int64_t splits = 1;
  if (threads > 1 && units < 2 * threads) {
    splits = std::min((2 * threads + units - 1) / units,
                      (max_len + kMinDecodeChunk - 1) / kMinDecodeChunk);
    splits = std::max<int64_t>(splits, 1);
  }
  auto heads_of = [&](int64_t unit) {
    const int64_t h0 = (unit % ranges) * per_range;
    return std::pair<int64_t, int64_t>{h0, std::min(kvh, h0 + per_range)};
  };
  if (splits == 1) {
    ThreadPool::global().parallel_for(units, threads, [&](int64_t unit) {
      const auto [h0, h1] = heads_of(unit);
      const int64_t b = unit / ranges;
      t.decode_item(sh, kv, b, h0, h1, 0, kv.seq_lens[b], nullptr);
    });
    return Status::kOk;
  }
  const int64_t chunk = (max_len + splits - 1) / splits;
  const int64_t head_stride = group * (d + 2);
  const int64_t item_stride = per_range * head_stride;
  std::vector<float>& parts = launch_scratch().partials;
  if (parts.size() < static_cast<size_t>(units * splits * item_stride)) {
    parts.resize(units * splits * item_stride);
  }
  float* base = parts.data();
  ThreadPool::global().parallel_for(units * splits, threads, [&](int64_t i) {
    const int64_t unit = i / splits, c = i % splits, b = unit / ranges;
    const auto [h0, h1] = heads_of(unit);
    float* p = base + i * item_stride;
    const int64_t k0 = c * chunk, k1 = std::min<int64_t>(k0 + chunk, kv.seq_lens[b]);
    if (k0 >= k1) {  // past this request's end: an empty chunk (m = -inf, l = 0)
      for (int64_t hh = 0; hh < h1 - h0; ++hh) {
        float* ph = p + hh * head_stride + group * d;
        std::fill(ph, ph + group, -INFINITY);
        std::fill(ph + group, ph + 2 * group, 0.0f);
      }
      return;
    }
    t.decode_item(sh, kv, b, h0, h1, k0, k1, p);
  });
  for (int64_t unit = 0; unit < units; ++unit) {
    const auto [h0, h1] = heads_of(unit);
    for (int64_t h = h0; h < h1; ++h) {
      merge_partials(sh, base + unit * splits * item_stride + (h - h0) * head_stride, splits,
                     item_stride, unit / ranges, h);
    }
  }
  return Status::kOk;
}

Status extend_attention_cpu(const AttnShape& sh, const PagedKv& kv, const int32_t* prefix_lens,
                            const int32_t* extend_start) {
  if (kv.batch < 0 || (kv.batch > 0 && (prefix_lens == nullptr || extend_start == nullptr))) {
    return Status::kInvalidArgument;
  }
  if (kv.batch == 0) return valid_shape(sh, 0) ? Status::kOk : Status::kInvalidArgument;
  if (extend_start[0] != 0) return Status::kInvalidArgument;
  for (int64_t b = 0; b < kv.batch; ++b) {
    const int32_t ext = extend_start[b + 1] - extend_start[b];
    if (ext < 0 || prefix_lens[b] < 0 || kv.seq_lens[b] != prefix_lens[b] + ext) {
      return Status::kInvalidArgument;
    }
  }
  const int64_t rows = extend_start[kv.batch];
  if (!valid_shape(sh, rows) || !valid_kv(kv, sh, 0)) return Status::kInvalidArgument;
  if (rows == 0) return Status::kOk;

  // Tiles (b, r0, r1) with the most keys first, so the longest items start early.
  std::vector<int64_t>& tiles = launch_scratch().tiles;
  tiles.clear();
  for (int64_t b = 0; b < kv.batch; ++b) {
    for (int64_t r0 = extend_start[b]; r0 < extend_start[b + 1]; r0 += kExtendTile) {
      tiles.insert(tiles.end(), {b, r0, std::min<int64_t>(r0 + kExtendTile, extend_start[b + 1])});
    }
  }
  const int64_t num_tiles = static_cast<int64_t>(tiles.size()) / 3;
  std::vector<int64_t>& order = launch_scratch().order;
  order.resize(num_tiles);
  for (int64_t i = 0; i < num_tiles; ++i) order[i] = i;
  auto keys_of = [&](int64_t i) {
    const int64_t b = tiles[3 * i];
    return prefix_lens[b] + tiles[3 * i + 2] - extend_start[b];
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t c) { return keys_of(a) > keys_of(c); });

  const ops::OpsIsaTable& t = ops::ops_table();
  const int64_t kvh = sh.num_kv_heads;
  int64_t total_keys = 0;
  for (int64_t i = 0; i < num_tiles; ++i) total_keys += keys_of(i);
  const int64_t per_item = total_keys * kExtendTile * (sh.num_heads / kvh) * sh.head_dim * 4 /
                           std::max<int64_t>(1, num_tiles);
  const int threads = std::min(pool_threads(), plan_threads(num_tiles * kvh, per_item, 0));
  ThreadPool::global().parallel_for(num_tiles * kvh, threads, [&](int64_t i) {
    const int64_t tile = order[i / kvh];
    const int64_t b = tiles[3 * tile], r0 = tiles[3 * tile + 1], r1 = tiles[3 * tile + 2];
    t.extend_item(sh, kv, b, i % kvh, r0, r1, prefix_lens[b] + r0 - extend_start[b]);
  });
  return Status::kOk;
}

}  // namespace sglang::kernels
