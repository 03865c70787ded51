#!/usr/bin/env bash
# Developer rebuild of the extensions in place (python/sglang/_core*.so) after a C++ change,
# for an editable checkout (python/ on sys.path): reuses the wheel build folder when one exists.
#   scripts/dev-build.sh            # CPU only
#   SGLANG_ENABLE_CUDA=AUTO scripts/dev-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SGLANG_DEV_BUILD_DIR:-build/dev}
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DSGLANG_ENABLE_CUDA="${SGLANG_ENABLE_CUDA:-OFF}" -DSGLANG_BUILD_PYTHON=ON \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)"
fi
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target _core
cp "$build"/_core*.so python/sglang/
