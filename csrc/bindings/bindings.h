// Shared declarations of the pybind11 bindings. Only files under csrc/bindings include pybind11.
//
// Conversions are plain helpers here so the binding library could be swapped without touching
// the core: token ids cross as numpy int32 arrays (no copy in), results go out as numpy arrays
// that own or view core memory.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <span>
#include <vector>

namespace sglang::bindings {

namespace py = pybind11;

/// Registers the scheduler, radix cache and allocator classes.
void bind_scheduler(py::module_& m);
/// Registers the CPU sampling / logit-processing kernels.
void bind_kernels_cpu(py::module_& m);
/// Registers the quantized (GGUF block) matmul and dequantization kernels.
void bind_quant_cpu(py::module_& m);
/// Registers the fused CPU model kernels (norm, RoPE + KV store, activation, paged attention).
void bind_ops_cpu(py::module_& m);
/// Registers the segmented multi-LoRA kernel (lora_apply).
void bind_lora_cpu(py::module_& m);

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

/// A read-only span over a 1-D int32 numpy array (no copy when already contiguous int32).
inline std::span<const int32_t> as_span(const Int32Array& a) {
  if (a.ndim() != 1) throw py::value_error("expected a 1-D array of token ids");
  return {a.data(), static_cast<size_t>(a.shape(0))};
}

/// A numpy array that views `vec`'s storage and keeps `owner` alive while it exists.
template <typename T>
py::array_t<T> view_of(const std::vector<T>& vec, py::handle owner) {
  return py::array_t<T>({static_cast<py::ssize_t>(vec.size())}, {sizeof(T)}, vec.data(), owner);
}

/// A numpy array that takes ownership of `vec` (moved, no copy of the elements).
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& vec) {
  auto* heap = new std::vector<T>(std::move(vec));
  py::capsule free_when_done(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(),
                        free_when_done);
}

}  // namespace sglang::bindings
