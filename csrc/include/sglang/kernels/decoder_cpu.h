// A decode step's decoder layers in one call: the fused CPU kernels of cpu_ops.h and quant.h
// composed in C++ for a Llama-style layer (pre-norm, fused q/k/v, RoPE, GQA paged attention, o
// projection, SwiGLU MLP) with its weights kept quantized and float32 activations.
//
// The Python model runs the very same kernels, one call per operation; for a small model's decode
// step the Python between those ~300 calls costs about as much as the kernels themselves, so the
// runner hands a whole decode step's layers to this function instead (same kernels, same order:
// the results are bit-identical). Prefill steps stay in Python (their matmuls go to the BLAS).
//
// Per layer, with hidden / residual [batch, hidden] float32 (updated in place):
//   hidden, residual = add_rms_norm(hidden, residual) (layer 0 without a residual: residual =
//   hidden, hidden = rms_norm(hidden)); qkv = hidden @ Wqkv^T (+b); rope_kv_store; attn =
//   paged_decode_attention; hidden = attn @ Wo^T (+b); hidden, residual = add_rms_norm(...);
//   hidden = down(silu_and_mul(hidden @ Wgate_up^T)).
// With LoRA adapters (DecoderLoraCpu), each projection's output also gets the step's adapter
// deltas (lora_apply of lora.h, per target: q, k and v into their columns of qkv, o, gate and up
// into theirs of gate_up, down), exactly as the Python model's Linear hooks add them.
#pragma once

#include <cstdint>

#include "sglang/kernels/lora.h"
#include "sglang/kernels/quant.h"
#include "sglang/kernels/sampling.h"  // Status

namespace sglang::kernels {

/// A weight kept in ggml blocks: n rows of k values (see quant.h), optional float32 bias [n].
struct QuantMatrix {
  QuantFormat fmt;
  const void* data;
  int64_t n;
  int64_t k;
  const float* bias;  // may be null
};

/// One decoder layer's weights and its KV cache (float32 [num_slots, num_kv_heads, head_dim]).
struct DecoderLayerCpu {
  const float* input_norm;  // [hidden]
  const float* post_norm;   // [hidden]
  QuantMatrix qkv;          // [(H + 2 KVH) * D, hidden]
  QuantMatrix o;            // [hidden, H * D]
  QuantMatrix gate_up;      // [2 * intermediate, hidden]
  QuantMatrix down;         // [hidden, intermediate]
  float* k_cache;
  float* v_cache;
};

/// The model's shapes and constants.
struct DecoderDims {
  int64_t hidden;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t intermediate;
  int64_t num_slots;  // KV cache rows
  float eps;          // RMSNorm epsilon
  float scale;        // attention scale
  const float* cos;   // [max_positions, head_dim / 2]
  const float* sin;
  int64_t max_positions;
};

/// The step: one new token per request (see cpu_ops.h PagedKv for the table layout).
struct DecodeStepCpu {
  int64_t batch;
  const int64_t* positions;  // [batch]
  const int64_t* out_slots;  // [batch], distinct
  const int32_t* req_to_token;
  int64_t table_rows;
  int64_t table_stride;
  const int64_t* req_pool_indices;  // [batch]
  const int32_t* seq_lens;          // [batch], including the new token
};

/// Caller-owned float32 scratch: qkv [batch, (H + 2 KVH) * D], attn [batch, H * D],
/// gate_up [batch, 2 * intermediate], act [batch, intermediate].
struct DecoderScratch {
  float* qkv;
  float* attn;
  float* gate_up;
  float* act;
};

/// LoRA targets of a decoder layer, in the order of DecoderLoraCpu::weights.
enum class LoraTarget : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kCount };

/// The step's LoRA adapters (float32 slot pool, see lora.h): per layer and target the pool's
/// stacked A [num_slots, max_rank, in] and B [num_slots, out, max_rank] (both null: the target
/// is not adapted), the pool's ranks and scalings, and the step's segments (one row per
/// request).
struct DecoderLoraCpu {
  const void* const* weights;  // [num_layers][LoraTarget::kCount][2]: A, B
  int64_t max_rank;
  const int32_t* ranks;        // [num_slots]
  const float* scaling;        // [num_slots]
  int64_t num_slots;
  LoraSegments segments;
};

/// Runs layers [0, num_layers) on hidden / residual (float32 [batch, hidden], in place).
/// `has_residual` false: layer 0 starts the residual stream from hidden. `lora` null: no
/// adapters. Returns the first failing kernel's status (kInvalidArgument for inconsistent
/// shapes) and stops there.
Status decode_layers_cpu(const DecoderDims& dims, const DecoderLayerCpu* layers,
                         int64_t num_layers, const DecodeStepCpu& step, float* hidden,
                         float* residual, bool has_residual, const DecoderScratch& scratch,
                         const DecoderLoraCpu* lora = nullptr);

}  // namespace sglang::kernels
