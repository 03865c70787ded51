// Python bindings of the fused CPU model kernels (part of sglang._core).
//
// As the sampling bindings: raw addresses as ints (0 = null), sizes, strides in elements and a
// DType int; the GIL is released while a kernel runs and a non-ok Status raises
// sglang._core.CoreError. The torch adapter (sglang.srt.layers.cpu_ops) checks the tensors and
// passes their data_ptr(). Semantics in sglang/kernels/cpu_ops.h.
#include <optional>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.h"
#include "kernel_args.h"
#include "sglang/kernels/cpu_ops.h"
#include "sglang/kernels/decoder_cpu.h"

namespace sglang::bindings {

namespace k = sglang::kernels;

namespace {

k::DType ops_dtype(int dtype) {
  if (dtype != static_cast<int>(k::DType::kFloat32) &&
      dtype != static_cast<int>(k::DType::kBFloat16)) {
    SGL_FAIL() << "the fused CPU ops take float32 or bfloat16, got dtype code " << dtype;
  }
  return static_cast<k::DType>(dtype);
}

k::RowsView rows(uintptr_t data, k::DType dtype, int64_t n, int64_t cols, int64_t stride) {
  return {ptr<void>(data), dtype, n, cols, stride};
}

template <typename F>
void run(const char* what, F&& launch) {
  k::Status status;
  {
    py::gil_scoped_release release;
    status = launch();
  }
  check_status(status, what);
}

}  // namespace

void bind_ops_cpu(py::module_& m) {
  m.def(
      "rms_norm_cpu",
      [](uintptr_t x, int dtype, int64_t n, int64_t cols, int64_t x_stride, uintptr_t weight,
         float eps, uintptr_t out, int64_t out_stride) {
        const k::DType dt = ops_dtype(dtype);
        run("rms_norm_cpu", [&] {
          return k::rms_norm_cpu(rows(x, dt, n, cols, x_stride), ptr<const void>(weight), eps,
                                 rows(out, dt, n, cols, out_stride));
        });
      },
      py::arg("x_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("x_stride"),
      py::arg("weight_ptr"), py::arg("eps"), py::arg("out_ptr"), py::arg("out_stride"),
      "out = rms_norm(x) * weight over rows of `cols` elements.");
  m.def(
      "fused_add_rms_norm_cpu",
      [](uintptr_t x, int dtype, int64_t n, int64_t cols, int64_t x_stride, uintptr_t residual,
         int64_t residual_stride, uintptr_t weight, float eps) {
        const k::DType dt = ops_dtype(dtype);
        run("fused_add_rms_norm_cpu", [&] {
          return k::fused_add_rms_norm_cpu(rows(x, dt, n, cols, x_stride),
                                           rows(residual, dt, n, cols, residual_stride),
                                           ptr<const void>(weight), eps);
        });
      },
      py::arg("x_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("x_stride"),
      py::arg("residual_ptr"), py::arg("residual_stride"), py::arg("weight_ptr"), py::arg("eps"),
      "In place: residual += x; x = rms_norm(residual) * weight.");
  m.def(
      "silu_and_mul_cpu",
      [](uintptr_t x, int dtype, int64_t n, int64_t d, int64_t x_stride, uintptr_t out,
         int64_t out_stride) {
        const k::DType dt = ops_dtype(dtype);
        run("silu_and_mul_cpu", [&] {
          return k::silu_and_mul_cpu(rows(x, dt, n, 2 * d, x_stride),
                                     rows(out, dt, n, d, out_stride));
        });
      },
      py::arg("x_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("d"), py::arg("x_stride"),
      py::arg("out_ptr"), py::arg("out_stride"), "out = silu(x[:, :d]) * x[:, d:].");
  m.def(
      "rope_kv_store_cpu",
      [](uintptr_t q, int64_t q_stride, uintptr_t key, int64_t k_stride, uintptr_t value,
         int64_t v_stride, int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
         int64_t head_dim, uintptr_t positions, uintptr_t cos, uintptr_t sin,
         int64_t max_positions, uintptr_t k_cache, uintptr_t v_cache, int64_t num_slots,
         int64_t cache_stride, uintptr_t out_slots, int dtype) {
        const k::RopeKvArgs args{ptr<void>(q),          ptr<const void>(key),
                                 ptr<const void>(value), q_stride,
                                 k_stride,               v_stride,
                                 num_tokens,             num_heads,
                                 num_kv_heads,           head_dim,
                                 ptr<const int64_t>(positions), ptr<const void>(cos),
                                 ptr<const void>(sin),   max_positions,
                                 ptr<void>(k_cache),     ptr<void>(v_cache),
                                 num_slots,              cache_stride,
                                 ptr<const int64_t>(out_slots), ops_dtype(dtype)};
        run("rope_kv_store_cpu", [&] { return k::rope_kv_store_cpu(args); });
      },
      py::arg("q_ptr"), py::arg("q_stride"), py::arg("k_ptr"), py::arg("k_stride"),
      py::arg("v_ptr"), py::arg("v_stride"), py::arg("num_tokens"), py::arg("num_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("positions_ptr"), py::arg("cos_ptr"),
      py::arg("sin_ptr"), py::arg("max_positions"), py::arg("k_cache_ptr"),
      py::arg("v_cache_ptr"), py::arg("num_slots"), py::arg("cache_stride"),
      py::arg("out_slots_ptr"), py::arg("dtype"),
      "Rotates q in place; writes rotated k and v into the caches at out_slots.");

  // Attention: (q, q_stride, out, out_stride, heads, kv_heads, head_dim, scale, dtype) then the
  // paged KV (k_cache, v_cache, num_slots, cache_stride, req_to_token, table_rows, table_stride,
  // req_pool_indices, seq_lens, batch).
  m.def(
      "paged_decode_attention_cpu",
      [](uintptr_t q, int64_t q_stride, uintptr_t out, int64_t out_stride, int64_t num_heads,
         int64_t num_kv_heads, int64_t head_dim, float scale, int dtype, uintptr_t k_cache,
         uintptr_t v_cache, int64_t num_slots, int64_t cache_stride, uintptr_t req_to_token,
         int64_t table_rows, int64_t table_stride, uintptr_t req_pool_indices, uintptr_t seq_lens,
         int64_t batch) {
        const k::AttnShape shape{ptr<const void>(q), q_stride, ptr<void>(out), out_stride,
                                 num_heads, num_kv_heads, head_dim, scale, ops_dtype(dtype)};
        const k::PagedKv kv{ptr<const void>(k_cache), ptr<const void>(v_cache), num_slots,
                            cache_stride, ptr<const int32_t>(req_to_token), table_rows,
                            table_stride, ptr<const int64_t>(req_pool_indices),
                            ptr<const int32_t>(seq_lens), batch};
        run("paged_decode_attention_cpu", [&] { return k::paged_decode_attention_cpu(shape, kv); });
      },
      "Decode attention of one query token per request over its paged keys.");
  m.def(
      "extend_attention_cpu",
      [](uintptr_t q, int64_t q_stride, uintptr_t out, int64_t out_stride, int64_t num_heads,
         int64_t num_kv_heads, int64_t head_dim, float scale, int dtype, uintptr_t k_cache,
         uintptr_t v_cache, int64_t num_slots, int64_t cache_stride, uintptr_t req_to_token,
         int64_t table_rows, int64_t table_stride, uintptr_t req_pool_indices, uintptr_t seq_lens,
         int64_t batch, uintptr_t prefix_lens, uintptr_t extend_start) {
        const k::AttnShape shape{ptr<const void>(q), q_stride, ptr<void>(out), out_stride,
                                 num_heads, num_kv_heads, head_dim, scale, ops_dtype(dtype)};
        const k::PagedKv kv{ptr<const void>(k_cache), ptr<const void>(v_cache), num_slots,
                            cache_stride, ptr<const int32_t>(req_to_token), table_rows,
                            table_stride, ptr<const int64_t>(req_pool_indices),
                            ptr<const int32_t>(seq_lens), batch};
        run("extend_attention_cpu", [&] {
          return k::extend_attention_cpu(shape, kv, ptr<const int32_t>(prefix_lens),
                                         ptr<const int32_t>(extend_start));
        });
      },
      "Causal extend (prefill) attention of new tokens over cached prefix + themselves.");
  m.def(
      "decode_layers_cpu",
      [](py::array_t<int64_t, py::array::c_style> dims, py::array_t<double> consts,
         py::array_t<int64_t, py::array::c_style> layers, py::array_t<int64_t> step,
         uintptr_t hidden, uintptr_t residual, bool has_residual,
         py::array_t<int64_t> scratch, std::optional<py::array_t<int64_t, py::array::c_style>>
         lora_weights, std::optional<py::array_t<int64_t>> lora_meta) {
        // dims: hidden, heads, kv_heads, head_dim, intermediate, num_slots, cos, sin, max_pos;
        // consts: eps, scale; layers: [L, kLayerColumns]; step: batch, positions, out_slots,
        // req_to_token, table_rows, table_stride, req_pool_indices, seq_lens; scratch: 4 ptrs.
        constexpr py::ssize_t kLayerColumns = 24;
        if (dims.size() != 9 || consts.size() != 2 || step.size() != 8 || scratch.size() != 4 ||
            layers.ndim() != 2 || layers.shape(1) != kLayerColumns) {
          throw py::value_error("decode_layers_cpu: malformed argument arrays");
        }
        const int64_t* D = dims.data();
        const k::DecoderDims dm{D[0], D[1], D[2], D[3], D[4], D[5],
                                static_cast<float>(consts.data()[0]),
                                static_cast<float>(consts.data()[1]),
                                ptr<const float>(D[6]), ptr<const float>(D[7]), D[8]};
        std::vector<k::DecoderLayerCpu> ls(static_cast<size_t>(layers.shape(0)));
        for (size_t i = 0; i < ls.size(); ++i) {
          const int64_t* c = layers.data(static_cast<py::ssize_t>(i), 0);
          auto mat = [&](int j) {
            return k::QuantMatrix{static_cast<k::QuantFormat>(c[j]), ptr<const void>(c[j + 1]),
                                  c[j + 2], c[j + 3], ptr<const float>(c[j + 4])};
          };
          ls[i] = k::DecoderLayerCpu{ptr<const float>(c[0]), ptr<const float>(c[1]), mat(2),
                                     mat(7), mat(12), mat(17), ptr<float>(c[22]),
                                     ptr<float>(c[23])};
        }
        const int64_t* S = step.data();
        const k::DecodeStepCpu st{S[0], ptr<const int64_t>(S[1]), ptr<const int64_t>(S[2]),
                                  ptr<const int32_t>(S[3]), S[4], S[5],
                                  ptr<const int64_t>(S[6]), ptr<const int32_t>(S[7])};
        const int64_t* X = scratch.data();
        const k::DecoderScratch sc{ptr<float>(X[0]), ptr<float>(X[1]), ptr<float>(X[2]),
                                   ptr<float>(X[3])};
        // LoRA: weights [L, 7, 2] (A, B pointers per target, 0: not adapted); meta: max_rank,
        // ranks, scaling, num_slots, seg_indptr, seg_slots, num_segments.
        std::optional<k::DecoderLoraCpu> lora;
        if (lora_weights.has_value() != lora_meta.has_value()) {
          throw py::value_error("decode_layers_cpu: lora_weights and lora_meta go together");
        }
        if (lora_weights.has_value()) {
          const auto& w = *lora_weights;
          const auto& m = *lora_meta;
          const auto per_layer = static_cast<py::ssize_t>(k::LoraTarget::kCount) * 2;
          if (w.size() != layers.shape(0) * per_layer || m.size() != 7) {
            throw py::value_error("decode_layers_cpu: malformed LoRA arrays");
          }
          static_assert(sizeof(int64_t) == sizeof(const void*));
          const int64_t* M = m.data();
          lora = k::DecoderLoraCpu{reinterpret_cast<const void* const*>(w.data()), M[0],
                                   ptr<const int32_t>(M[1]), ptr<const float>(M[2]), M[3],
                                   k::LoraSegments{ptr<const int32_t>(M[4]),
                                                   ptr<const int32_t>(M[5]), M[6]}};
        }
        run("decode_layers_cpu", [&] {
          return k::decode_layers_cpu(dm, ls.data(), static_cast<int64_t>(ls.size()), st,
                                      ptr<float>(hidden), ptr<float>(residual), has_residual, sc,
                                      lora ? &*lora : nullptr);
        });
      },
      py::arg("dims"), py::arg("consts"), py::arg("layers"), py::arg("step"), py::arg("hidden"),
      py::arg("residual"), py::arg("has_residual"), py::arg("scratch"),
      py::arg("lora_weights") = py::none(), py::arg("lora_meta") = py::none(),
      "A decode step's decoder layers (quantized weights, float32) in one call; see decoder_cpu.h.");
}

}  // namespace sglang::bindings
