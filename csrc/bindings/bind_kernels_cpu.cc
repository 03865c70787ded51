// Python bindings of the CPU logit-processing and sampling kernels (part of sglang._core).
//
// Every function takes raw addresses as ints (0 = null), sizes and a DType int, releases the GIL
// while the kernel runs and raises sglang._core.CoreError on a non-ok status. The torch adapter
// (sglang.srt.sampling.kernels) checks the tensors and passes their data_ptr().
#include "bindings.h"
#include "kernel_args.h"
#include "sglang/kernels/cpu_isa.h"
#include "sglang/kernels/sampling.h"

namespace sglang::bindings {

namespace k = sglang::kernels;

void bind_kernels_cpu(py::module_& m) {
  m.attr("DTYPE_FLOAT32") = static_cast<int>(k::DType::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(k::DType::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(k::DType::kBFloat16);

  m.def(
      "cpu_features",
      [] {
        const k::CpuFeatures& f = k::cpu_features();
        py::dict d;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512dq"] = f.avx512dq;
        d["avx512_vnni"] = f.avx512_vnni;
        d["avx512_bf16"] = f.avx512_bf16;
        d["amx_tile"] = f.amx_tile;
        d["amx_bf16"] = f.amx_bf16;
        d["amx_int8"] = f.amx_int8;
        return d;
      },
      "The CPU features detected at run time (cpuid + OS support), as a dict of bools.");
  m.def(
      "cpu_isa", [] { return std::string(k::isa_name(k::active_isa())); },
      "The kernel path in use: 'scalar', 'avx2' or 'avx512' (capped by SGLANG_CPU_ISA).");
  m.def(
      "best_cpu_isa", [] { return std::string(k::isa_name(k::best_isa())); },
      "The best kernel path this CPU supports, ignoring any cap.");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        if (!k::set_cpu_isa(name)) {
          throw py::value_error("unknown CPU ISA '" + name + "'; expected auto, scalar, avx2 or avx512");
        }
      },
      py::arg("name"),
      "Caps the kernel path ('auto' for none); a cap above the CPU's best is clamped.");

  m.def("uniform01", &k::uniform01, py::arg("seed"), py::arg("offset"),
        "The uniform draw in [0, 1) that `sample` uses for (seed, offset).");

  m.def(
      "apply_penalties_cpu",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids, uintptr_t counts, uintptr_t frequency,
         uintptr_t presence, uintptr_t repetition, int num_threads) {
        const k::LogitsView view = logits_view(logits, dtype, num_rows, vocab, row_stride);
        const k::PenaltyArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                  ptr<const int32_t>(counts), ptr<const float>(frequency),
                                  ptr<const float>(presence), ptr<const float>(repetition)};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::apply_penalties_cpu(view, args, num_threads);
        }
        check_status(status, "apply_penalties_cpu");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"), py::arg("counts_ptr"),
      py::arg("frequency_ptr"), py::arg("presence_ptr"), py::arg("repetition_ptr"),
      py::arg("num_threads") = 0,
      "In place: frequency/presence then repetition penalties over a per-row CSR of seen tokens.");

  m.def(
      "apply_token_ban_cpu",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids) {
        const k::LogitsView view = logits_view(logits, dtype, num_rows, vocab, row_stride);
        const k::TokenListArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                    nullptr};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::apply_token_ban_cpu(view, args);
        }
        check_status(status, "apply_token_ban_cpu");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"),
      "In place: sets the listed tokens of each row to -inf.");

  m.def(
      "apply_logit_bias_cpu",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t indptr, uintptr_t token_ids, uintptr_t values) {
        const k::LogitsView view = logits_view(logits, dtype, num_rows, vocab, row_stride);
        const k::TokenListArgs args{ptr<const int32_t>(indptr), ptr<const int32_t>(token_ids),
                                    ptr<const float>(values)};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::apply_logit_bias_cpu(view, args);
        }
        check_status(status, "apply_logit_bias_cpu");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("indptr_ptr"), py::arg("token_ids_ptr"), py::arg("values_ptr"),
      "In place: adds a per-row CSR of (token, bias) to the logits.");

  m.def(
      "apply_token_bitmask_cpu",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t bitmask, int64_t words_per_row, uintptr_t row_indices, int num_threads) {
        const k::LogitsView view = logits_view(logits, dtype, num_rows, vocab, row_stride);
        const k::BitmaskArgs args{ptr<const int32_t>(bitmask), words_per_row,
                                  ptr<const int32_t>(row_indices)};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::apply_token_bitmask_cpu(view, args, num_threads);
        }
        check_status(status, "apply_token_bitmask_cpu");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("bitmask_ptr"), py::arg("words_per_row"),
      py::arg("row_indices_ptr"), py::arg("num_threads") = 0,
      "In place: sets tokens whose bit is 0 in xgrammar's int32 bitmask to -inf.");

  m.def(
      "sample_cpu",
      [](uintptr_t logits, int dtype, int64_t num_rows, int64_t vocab, int64_t row_stride,
         uintptr_t temperature, uintptr_t top_k, uintptr_t top_p, uintptr_t min_p, uintptr_t seeds,
         uintptr_t offsets, uintptr_t out_ids, int num_threads) {
        const k::LogitsView view = logits_view(logits, dtype, num_rows, vocab, row_stride);
        const k::SamplingArgs args{ptr<const float>(temperature), ptr<const int32_t>(top_k),
                                   ptr<const float>(top_p),       ptr<const float>(min_p),
                                   ptr<const uint64_t>(seeds),    ptr<const uint64_t>(offsets)};
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::sample_cpu(view, args, ptr<int32_t>(out_ids), num_threads);
        }
        check_status(status, "sample_cpu");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("num_rows"), py::arg("vocab"),
      py::arg("row_stride"), py::arg("temperature_ptr"), py::arg("top_k_ptr"), py::arg("top_p_ptr"),
      py::arg("min_p_ptr"), py::arg("seeds_ptr"), py::arg("offsets_ptr"), py::arg("out_ptr"),
      py::arg("num_threads") = 0,
      "Samples one token id per row (temperature, top-k, top-p, min-p, per-row seed) into out.");
}

}  // namespace sglang::bindings
