// The sglang._cuda extension: the CUDA logit-processing and sampling kernels.
//
// Same calling convention as the CPU functions in sglang._core (raw device addresses as ints,
// 0 = null, sizes, a DType int) with a trailing `stream` (a cudaStream_t as an int, e.g.
// torch.cuda.current_stream().cuda_stream) in place of num_threads. Launches are asynchronous on
// that stream; the GIL is released while launching. Each function returns its kernels::Status as
// an int (0 = ok; `status_string(code)` names it) and throws nothing: the torch adapter
// (sglang.srt.sampling.kernels) raises sglang._core.CoreError. No C++ exception leaves this
// module: on the GPU image one thrown here killed the process instead of reaching Python.
// Importing this module makes no CUDA call, so it imports on machines without a GPU.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "kernel_args.h"
#include "sglang/kernels/sampling.h"

namespace py = pybind11;
namespace k = sglang::kernels;
using sglang::bindings::ptr;

namespace {

void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

constexpr int kInvalid = static_cast<int>(k::Status::kInvalidArgument);

bool known_dtype(int dtype) {
  return dtype >= 0 && dtype <= static_cast<int>(k::DType::kBFloat16);
}

k::LogitsView view_of(uintptr_t data, int dtype, int64_t num_rows, int64_t vocab,
                      int64_t row_stride) {
  return {ptr<void>(data), static_cast<k::DType>(dtype), num_rows, vocab, row_stride};
}

/// Runs `launch` without the GIL; returns its Status as an int.
template <typename F>
int run(F&& launch) {
  py::gil_scoped_release release;
  return static_cast<int>(launch());
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sglang CUDA kernels: penalties, token ban, logit bias, grammar bitmask, sampling";
  m.def(
      "status_string",
      [](int status) { return std::string(k::status_string(static_cast<k::Status>(status))); },
      py::arg("status"), "The text of a Status code returned by the functions below.");
  m.attr("DTYPE_FLOAT32") = static_cast<int>(k::DType::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(k::DType::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(k::DType::kBFloat16);

  m.def(
      "apply_penalties_cuda",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids, uintptr_t counts, uintptr_t frequency,
         uintptr_t presence, uintptr_t repetition, uintptr_t stream) -> int {
        if (!known_dtype(dtype)) return kInvalid;
        const k::LogitsView view = view_of(logits, dtype, num_rows, vocab, row_stride);
        const k::PenaltyArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                  ptr<const int32_t>(counts), ptr<const float>(frequency),
                                  ptr<const float>(presence), ptr<const float>(repetition)};
        return run([&] { return k::apply_penalties_cuda(view, args, stream_ptr(stream)); });
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"), py::arg("counts_ptr"),
      py::arg("frequency_ptr"), py::arg("presence_ptr"), py::arg("repetition_ptr"),
      py::arg("stream"));

  m.def(
      "apply_token_ban_cuda",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids, uintptr_t stream) -> int {
        if (!known_dtype(dtype)) return kInvalid;
        const k::LogitsView view = view_of(logits, dtype, num_rows, vocab, row_stride);
        const k::TokenListArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                    nullptr};
        return run([&] { return k::apply_token_ban_cuda(view, args, stream_ptr(stream)); });
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"), py::arg("stream"));

  m.def(
      "apply_logit_bias_cuda",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids, uintptr_t values, uintptr_t stream) -> int {
        if (!known_dtype(dtype)) return kInvalid;
        const k::LogitsView view = view_of(logits, dtype, num_rows, vocab, row_stride);
        const k::TokenListArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                    ptr<const float>(values)};
        return run([&] { return k::apply_logit_bias_cuda(view, args, stream_ptr(stream)); });
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"), py::arg("values_ptr"),
      py::arg("stream"));

  m.def(
      "apply_token_bitmask_cuda",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t bitmask, int64_t words_per_row, uintptr_t row_indices,
         uintptr_t stream) -> int {
        if (!known_dtype(dtype)) return kInvalid;
        const k::LogitsView view = view_of(logits, dtype, num_rows, vocab, row_stride);
        const k::BitmaskArgs args{ptr<const int32_t>(bitmask), words_per_row,
                                  ptr<const int32_t>(row_indices)};
        return run(
            [&] { return k::apply_token_bitmask_cuda(view, args, stream_ptr(stream)); });
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("bitmask_ptr"), py::arg("words_per_row"),
      py::arg("row_indices_ptr"), py::arg("stream"));

  m.def(
      "sample_cuda",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t temperature, uintptr_t top_k, uintptr_t top_p, uintptr_t min_p, uintptr_t seeds,
         uintptr_t offsets, uintptr_t out_ids, uintptr_t stream) -> int {
        if (!known_dtype(dtype)) return kInvalid;
        const k::LogitsView view = view_of(logits, dtype, num_rows, vocab, row_stride);
        const k::SamplingArgs args{ptr<const float>(temperature), ptr<const int32_t>(top_k),
                                   ptr<const float>(top_p),       ptr<const float>(min_p),
                                   ptr<const uint64_t>(seeds),    ptr<const uint64_t>(offsets)};
        return run([&] {
          return k::sample_cuda(view, args, ptr<int32_t>(out_ids), stream_ptr(stream));
        });
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("temperature_ptr"), py::arg("top_k_ptr"), py::arg("top_p_ptr"),
      py::arg("min_p_ptr"), py::arg("seeds_ptr"), py::arg("offsets_ptr"), py::arg("out_ptr"),
      py::arg("stream"));
}
