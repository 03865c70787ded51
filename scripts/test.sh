#!/usr/bin/env bash
# The project's test command: builds and runs the C++ suite (ctest) and the C++ example, then runs
# the Python suite (pytest) against the installed package (`pip install .` first; .ci/run does it).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SGLANG_TEST_BUILD_DIR:-build/tests}
jobs=$(nproc 2>/dev/null || echo 2)
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSGLANG_ENABLE_CUDA=OFF -DSGLANG_BUILD_PYTHON=OFF -DSGLANG_BUILD_TESTS=ON \
  -DSGLANG_BUILD_EXAMPLES=ON
cmake --build "$build" -j"$jobs"
ctest --test-dir "$build" --output-on-failure -j"$jobs"
"$build"/examples/cpp/serve_fake_model
python3 -m pytest tests/py -q "$@"
