// Run-time CPU feature detection (see sglang/kernels/cpu_isa.h).
#include "sglang/kernels/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SGL_X86 1
#endif

namespace sglang::kernels {

namespace {

#ifdef SGL_X86
uint64_t xgetbv0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef SGL_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;             // XMM + YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask + ZMM state
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;     // XTILECFG + XTILEDATA
  f.fma = os_avx && ((c >> 12) & 1);
  f.f16c = os_avx && ((c >> 29) & 1);
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_avx && ((b >> 5) & 1);
  f.avx512f = os_avx512 && ((b >> 16) & 1);
  f.avx512dq = os_avx512 && ((b >> 17) & 1);
  f.avx512bw = os_avx512 && ((b >> 30) & 1);
  f.avx512vl = os_avx512 && ((b >> 31) & 1);
  f.avx512_vnni = os_avx512 && ((c >> 11) & 1);
  f.amx_bf16 = os_amx && ((d >> 22) & 1);
  f.amx_tile = os_amx && ((d >> 24) & 1);
  f.amx_int8 = os_amx && ((d >> 25) & 1);
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx512_bf16 = os_avx512 && ((a1 >> 5) & 1);
#endif
  return f;
}

int parse(const char* name) {
  if (name == nullptr || *name == '\0' || std::strcmp(name, "auto") == 0) return -1;
  if (std::strcmp(name, "scalar") == 0) return static_cast<int>(CpuIsa::kScalar);
  if (std::strcmp(name, "avx2") == 0) return static_cast<int>(CpuIsa::kAvx2);
  if (std::strcmp(name, "avx512") == 0) return static_cast<int>(CpuIsa::kAvx512);
  return -2;
}

std::atomic<int>& cap() {
  // -1: no cap. Initialised from the environment on first use (an unknown value is ignored).
  static std::atomic<int> value{[] {
    const int v = parse(std::getenv("SGLANG_CPU_ISA"));
    return v < -1 ? -1 : v;
  }()};
  return value;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

CpuIsa best_isa() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma) return CpuIsa::kAvx512;
  if (f.avx2 && f.fma && f.f16c) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa active_isa() {
  const int best = static_cast<int>(best_isa());
  const int c = cap().load(std::memory_order_relaxed);
  return static_cast<CpuIsa>(c < 0 || c > best ? best : c);
}

bool set_cpu_isa(const std::string& name) {
  const int v = parse(name.c_str());
  if (v < -1) return false;
  cap().store(v, std::memory_order_relaxed);
  return true;
}

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

}  // namespace sglang::kernels
