// A decode step's decoder layers in one call (see sglang/kernels/decoder_cpu.h).
#include "sglang/kernels/decoder_cpu.h"

#include <algorithm>

#include "sglang/kernels/cpu_ops.h"

namespace sglang::kernels {

namespace {

bool matrix_ok(const QuantMatrix& w, int64_t n, int64_t k) {
  return w.data != nullptr && w.n == n && w.k == k;
}

Status matmul(const QuantMatrix& w, const float* x, int64_t m, int64_t ldx, float* out,
              int64_t ldo) {
  return quant_matmul_cpu(w.fmt, w.data, w.n, w.k, x, m, ldx, w.bias, out, ldo, 0);
}

/// Adds the step's deltas of one LoRA target of layer `l` (nothing when it is not adapted).
Status add_lora(const DecoderLoraCpu* lora, int64_t l, LoraTarget target, const float* x,
                int64_t rows, int64_t in, int64_t ldx, float* y, int64_t out, int64_t ldy) {
  if (lora == nullptr) return Status::kOk;
  const void* const* w =
      lora->weights + (l * static_cast<int64_t>(LoraTarget::kCount) + static_cast<int>(target)) * 2;
  if (w[0] == nullptr && w[1] == nullptr) return Status::kOk;
  const LoraWeights weights{w[0], w[1], lora->max_rank, lora->ranks, lora->scaling,
                            lora->num_slots};
  return lora_apply(RowsView{const_cast<float*>(x), DType::kFloat32, rows, in, ldx},
                    RowsView{y, DType::kFloat32, rows, out, ldy}, weights, lora->segments);
}

#define SGL_TRY(expr)                          \
  do {                                         \
    const Status status_ = (expr);             \
    if (status_ != Status::kOk) return status_; \
  } while (0)

}  // namespace

Status decode_layers_cpu(const DecoderDims& d, const DecoderLayerCpu* layers, int64_t num_layers,
                         const DecodeStepCpu& step, float* hidden, float* residual,
                         bool has_residual, const DecoderScratch& s,
                         const DecoderLoraCpu* lora) {
  const int64_t b = step.batch, hd = d.hidden;
  const int64_t q_dim = d.num_heads * d.head_dim, kv_dim = d.num_kv_heads * d.head_dim;
  const int64_t qkv_dim = q_dim + 2 * kv_dim, inter = d.intermediate;
  if (num_layers < 0 || b < 0 || (num_layers > 0 && layers == nullptr)) {
    return Status::kInvalidArgument;
  }
  if (b == 0 || num_layers == 0) return Status::kOk;
  if (hidden == nullptr || residual == nullptr || s.qkv == nullptr || s.attn == nullptr ||
      s.gate_up == nullptr || s.act == nullptr) {
    return Status::kInvalidArgument;
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    const DecoderLayerCpu& L = layers[l];
    if (L.input_norm == nullptr || L.post_norm == nullptr || L.k_cache == nullptr ||
        L.v_cache == nullptr || !matrix_ok(L.qkv, qkv_dim, hd) || !matrix_ok(L.o, hd, q_dim) ||
        !matrix_ok(L.gate_up, 2 * inter, hd) || !matrix_ok(L.down, hd, inter)) {
      return Status::kInvalidArgument;
    }
  }
  const RowsView h{hidden, DType::kFloat32, b, hd, hd};
  const RowsView r{residual, DType::kFloat32, b, hd, hd};
  const AttnShape attn{s.qkv, qkv_dim, s.attn, q_dim, d.num_heads, d.num_kv_heads,
                       d.head_dim, d.scale, DType::kFloat32};
  for (int64_t l = 0; l < num_layers; ++l) {
    const DecoderLayerCpu& L = layers[l];
    if (l == 0 && !has_residual) {
      std::copy_n(hidden, b * hd, residual);
      SGL_TRY(rms_norm_cpu(r, L.input_norm, d.eps, h));
    } else {
      SGL_TRY(fused_add_rms_norm_cpu(h, r, L.input_norm, d.eps));
    }
    SGL_TRY(matmul(L.qkv, hidden, b, hd, s.qkv, qkv_dim));
    SGL_TRY(add_lora(lora, l, LoraTarget::kQ, hidden, b, hd, hd, s.qkv, q_dim, qkv_dim));
    SGL_TRY(add_lora(lora, l, LoraTarget::kK, hidden, b, hd, hd, s.qkv + q_dim, kv_dim, qkv_dim));
    SGL_TRY(add_lora(lora, l, LoraTarget::kV, hidden, b, hd, hd, s.qkv + q_dim + kv_dim, kv_dim,
                     qkv_dim));
    const RopeKvArgs rope{s.qkv,         s.qkv + q_dim,  s.qkv + q_dim + kv_dim,
                          qkv_dim,       qkv_dim,        qkv_dim,
                          b,             d.num_heads,    d.num_kv_heads,
                          d.head_dim,    step.positions, d.cos,
                          d.sin,         d.max_positions, L.k_cache,
                          L.v_cache,     d.num_slots,    kv_dim,
                          step.out_slots, DType::kFloat32};
    SGL_TRY(rope_kv_store_cpu(rope));
    const PagedKv kv{L.k_cache,        L.v_cache,          d.num_slots,
                     kv_dim,           step.req_to_token,  step.table_rows,
                     step.table_stride, step.req_pool_indices, step.seq_lens,
                     b};
    SGL_TRY(paged_decode_attention_cpu(attn, kv));
    SGL_TRY(matmul(L.o, s.attn, b, q_dim, hidden, hd));
    SGL_TRY(add_lora(lora, l, LoraTarget::kO, s.attn, b, q_dim, q_dim, hidden, hd, hd));
    SGL_TRY(fused_add_rms_norm_cpu(h, r, L.post_norm, d.eps));
    SGL_TRY(matmul(L.gate_up, hidden, b, hd, s.gate_up, 2 * inter));
    SGL_TRY(add_lora(lora, l, LoraTarget::kGate, hidden, b, hd, hd, s.gate_up, inter, 2 * inter));
    SGL_TRY(add_lora(lora, l, LoraTarget::kUp, hidden, b, hd, hd, s.gate_up + inter, inter,
                     2 * inter));
    SGL_TRY(silu_and_mul_cpu(RowsView{s.gate_up, DType::kFloat32, b, 2 * inter, 2 * inter},
                             RowsView{s.act, DType::kFloat32, b, inter, inter}));
    SGL_TRY(matmul(L.down, s.act, b, inter, hidden, hd));
    SGL_TRY(add_lora(lora, l, LoraTarget::kDown, s.act, b, inter, inter, hidden, hd, hd));
  }
  return Status::kOk;
}

}  // namespace sglang::kernels
