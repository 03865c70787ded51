// Run-time CPU feature detection and the kernel path chosen from it.
//
// The CPU kernels are compiled for every x86-64 path we ship (AVX2 is the floor; AVX-512 code is
// compiled with per-function target attributes), and each launcher picks its path from
// `active_isa()` on every call. Detection runs once (cpuid + xgetbv, so a feature the OS does not
// enable counts as absent). `SGLANG_CPU_ISA=avx2|avx512` caps the path (read once, at the first
// call); `set_cpu_isa` changes the cap at run time (tests compare the paths in one process).
#pragma once

#include <string>

namespace sglang::kernels {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool amx_tile = false;  // cpuid bits only; Linux also needs the arch_prctl permission request
  bool amx_bf16 = false;
  bool amx_int8 = false;
};

/// What this CPU (and OS) supports; detected on the first call.
const CpuFeatures& cpu_features();

/// Kernel paths, in increasing order. kAvx512 needs avx512f/bw/vl/dq.
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

/// The best path the CPU supports, capped by SGLANG_CPU_ISA / set_cpu_isa.
CpuIsa active_isa();
/// The best path the CPU supports, ignoring any cap.
CpuIsa best_isa();
/// Caps the path ("scalar", "avx2", "avx512", or "" / "auto" for no cap). Returns false (and
/// changes nothing) for an unknown name. A cap above what the CPU has is clamped to best_isa().
bool set_cpu_isa(const std::string& name);
/// "scalar", "avx2" or "avx512".
const char* isa_name(CpuIsa isa);

}  // namespace sglang::kernels
