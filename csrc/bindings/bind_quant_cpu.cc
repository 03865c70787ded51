// Python bindings of the GGUF block-quant CPU kernels (part of sglang._core).
//
// Every launcher takes raw addresses as ints (0 = null), sizes and a ggml type id, releases the
// GIL while the kernel runs and raises sglang._core.CoreError on a bad argument (naming the
// format or size that is wrong). The torch adapter (sglang.srt.layers.quantization.kernels)
// checks the tensors and passes their data_ptr().
#include <string>

#include "bindings.h"
#include "kernel_args.h"
#include "sglang/kernels/quant.h"

namespace sglang::bindings {

namespace k = sglang::kernels;

namespace {

/// The format for a ggml type id; throws a CoreError naming an unsupported id.
k::QuantFormat quant_format(int fmt) {
  if (!k::quant_format_valid(fmt)) {
    SGL_FAIL() << "unsupported quant format (ggml type id) " << fmt
               << "; expected one of 2 (Q4_0), 3 (Q4_1), 8 (Q8_0), 12 (Q4_K), 13 (Q5_K), 14 (Q6_K)";
  }
  return static_cast<k::QuantFormat>(fmt);
}

/// Throws a CoreError unless k is a positive multiple of the format's block size.
void check_k(k::QuantFormat fmt, int64_t k) {
  const int64_t bs = k::quant_block_size(fmt);
  if (k <= 0 || k % bs != 0) {
    SGL_FAIL() << "k = " << k << " is not a positive multiple of the block size " << bs
               << " of ggml type " << static_cast<int>(fmt);
  }
}

}  // namespace

void bind_quant_cpu(py::module_& m) {
  m.def(
      "quant_block_size", [](int fmt) { return k::quant_block_size(quant_format(fmt)); },
      py::arg("fmt"), "Values per block of a ggml type id (32 or 256).");
  m.def(
      "quant_block_bytes", [](int fmt) { return k::quant_block_bytes(quant_format(fmt)); },
      py::arg("fmt"), "Bytes per block of a ggml type id.");
  m.def("quant_matmul_rows_per_pass", &k::quant_matmul_rows_per_pass,
        "x rows quant_matmul_cpu serves per pass over the weights on the active ISA path.");
  m.def(
      "quant_matmul_cpu",
      [](int fmt, uintptr_t weight, int64_t n, int64_t kk, uintptr_t x, int64_t rows, int64_t ldx,
         uintptr_t bias, uintptr_t out, int64_t ldo, int num_threads) {
        const k::QuantFormat f = quant_format(fmt);
        check_k(f, kk);
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::quant_matmul_cpu(f, ptr<const void>(weight), n, kk, ptr<const float>(x),
                                       rows, ldx, ptr<const float>(bias), ptr<float>(out), ldo,
                                       num_threads);
        }
        check_status(status, "quant_matmul_cpu");
      },
      py::arg("fmt"), py::arg("weight_ptr"), py::arg("n"), py::arg("k"), py::arg("x_ptr"),
      py::arg("m"), py::arg("ldx"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("ldo"),
      py::arg("num_threads") = 0,
      "out[m, n] = x[m, k] @ dequant(W[n, k])^T (+ bias), fp32, weights decoded on the fly.");
  m.def(
      "dequantize_cpu",
      [](int fmt, uintptr_t weight, int64_t n, int64_t kk, uintptr_t out, int64_t ldo,
         int num_threads) {
        const k::QuantFormat f = quant_format(fmt);
        check_k(f, kk);
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::dequantize_cpu(f, ptr<const void>(weight), n, kk, ptr<float>(out), ldo,
                                     num_threads);
        }
        check_status(status, "dequantize_cpu");
      },
      py::arg("fmt"), py::arg("weight_ptr"), py::arg("n"), py::arg("k"), py::arg("out_ptr"),
      py::arg("ldo"), py::arg("num_threads") = 0,
      "out[n, k] (row stride ldo) = the fp32 values of n rows of blocks (bit-exact with ggml).");
  m.def(
      "quantize_q8_0_cpu",
      [](uintptr_t w, int64_t n, int64_t kk, uintptr_t out, int num_threads) {
        check_k(k::QuantFormat::kQ8_0, kk);
        k::Status status;
        {
          py::gil_scoped_release release;
          status = k::quantize_q8_0_cpu(ptr<const float>(w), n, kk, ptr<void>(out), num_threads);
        }
        check_status(status, "quantize_q8_0_cpu");
      },
      py::arg("w_ptr"), py::arg("n"), py::arg("k"), py::arg("out_ptr"), py::arg("num_threads") = 0,
      "Quantizes contiguous fp32 w[n, k] into n rows of Q8_0 blocks (ggml's reference rounding).");
}

}  // namespace sglang::bindings
