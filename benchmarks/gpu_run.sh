#!/usr/bin/env bash
# The GPU checks in one run on a CUDA machine; every result goes under $OUT (default ./gpu_out).
#
#   build         pip install . with the CUDA kernels for this GPU's architecture
#   gpu-tests     every `gpu`-marked test (CUDA sampling kernels vs the CPU ones, models on CUDA:
#                 triton vs torch_native, CUDA graphs on/off) and the Triton kernel tests
#   bench         benchmarks/bench_sampling.py: the sampling kernels on the CPU and CUDA, same run
#   server-tests  the server's sampling, model-feature and structured-output tests on CUDA (the
#                 server picks CUDA when there is one); needs the demo model in the sglang cache
#                 ($SGLANG_CACHE_DIR, default ~/.cache/sglang), skipped when it is not there
#   model-bench   bench_one_batch on the Llama-3-8B and Qwen2.5-0.5B shapes (benchmarks/model_shapes.py,
#                 --load-format dummy, bf16), once per backend in $BENCH_BACKENDS (default: triton
#                 torch_native); results appended to $OUT/bench_one_batch.jsonl
#   engine-bench  the Llama-3-8B shape through the engine: bench_offline_throughput (256 prompts,
#                 1024 in / 512 out) and bench_serving against launch_server (4 req/s, 1024 in /
#                 256 out); needs tokenizer files (any HF tokenizer folder, default
#                 .whl/tokenizer: the demo model's), results appended to $OUT/engine_bench.jsonl
#   hf-baseline   ../shared/gpu/hf_baseline.py (or .whl/hf_baseline.py): HF transformers on the
#                 same GPU, the baseline of model benchmarks
#
# Usage: bash benchmarks/gpu_run.sh [stage ...]     (no stage: all, in the order above)
# Each command of a stage is stopped after $STAGE_TIMEOUT seconds (default 1200).
# Wheels in .whl/ (an offline machine) are installed into /tmp/site first. Exit status 1 when any
# stage failed; $OUT/summary.txt has one line per stage.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build gpu-tests bench server-tests model-bench engine-bench hf-baseline)
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

failed=0
# run NAME CMD...: runs CMD with its output in $OUT/NAME.log and a line in $OUT/summary.txt
run() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "== $name: $*"
  timeout "${STAGE_TIMEOUT:-1200}" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -n 1
  git log -1 --format='git %h %s' 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

for stage in "${stages[@]}"; do
  case $stage in
    build)
      arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '.')
      run build env SGLANG_ENABLE_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${arch:-90}" \
        python3 -m pip install --no-build-isolation --no-deps . ;;
    gpu-tests)
      # gpu-marked tests, and the Triton kernel tests (on CPU they run interpreted; here compiled).
      # tests/py/server needs client packages the GPU image may lack: its GPU checks are the
      # server-tests stage.
      run gpu_tests python3 -m pytest tests/py/kernels tests/py/models tests/py/lora \
        tests/py/managers/test_overlap_steps.py -m gpu -q \
        -p no:cacheprovider -rfE
      run triton_tests python3 -m pytest tests/py/kernels/test_triton_attention.py \
        tests/py/kernels/test_triton_elementwise.py -q -p no:cacheprovider -rfE ;;
    bench)
      run bench_sampling python3 benchmarks/bench_sampling.py ;;
    server-tests)
      cache=${SGLANG_CACHE_DIR:-$HOME/.cache/sglang}
      if compgen -G "$cache/smollm2-135m-instruct/*.gguf" >/dev/null; then
        run server_tests python3 -m pytest -q -p no:cacheprovider -rfE \
          tests/py/server/test_sampling_params.py tests/py/server/test_model_features.py \
          tests/py/server/test_structured_output.py
      else
        echo "server_tests skipped: no demo model in $cache" | tee -a "$OUT/summary.txt"
      fi ;;
    model-bench)
      shapes=$(mktemp -d)
      python3 benchmarks/model_shapes.py "$shapes" >/dev/null
      for backend in ${BENCH_BACKENDS:-triton torch_native}; do
        common=(--load-format dummy --dtype bfloat16 --attention-backend "$backend"
                --cuda-graph-max-bs 64
                --input-len 128 --output-len 256 --output-file "$OUT/bench_one_batch.jsonl")
        run "one_batch_llama8b_$backend" python3 -m sglang.bench_one_batch \
          --model-path "$shapes/llama-3-8b" --batch-size 1 64 --run-name "llama-3-8b $backend" \
          "${common[@]}"
        run "one_batch_qwen05b_$backend" python3 -m sglang.bench_one_batch \
          --model-path "$shapes/qwen2.5-0.5b" --batch-size 1 --run-name "qwen2.5-0.5b $backend" \
          "${common[@]}"
      done ;;
    engine-bench)
      tok=${BENCH_TOKENIZER:-.whl/tokenizer}
      if [ ! -f "$tok/tokenizer.json" ]; then
        echo "engine_bench skipped: no tokenizer.json in $tok" | tee -a "$OUT/summary.txt"
        continue
      fi
      shapes=$(mktemp -d)
      python3 benchmarks/model_shapes.py "$shapes" "$tok" >/dev/null
      model=(--model-path "$shapes/llama-3-8b" --load-format dummy --dtype bfloat16)
      run offline_llama8b python3 -m sglang.bench_offline_throughput "${model[@]}" \
        --num-prompts 256 --random-input-len 1024 --random-output-len 512 \
        --random-range-ratio 1 --cuda-graph-max-bs 256 --output-file "$OUT/engine_bench.jsonl"
      # the same without overlapping output processing with the forward (what overlap brings)
      run offline_llama8b_no_overlap python3 -m sglang.bench_offline_throughput "${model[@]}" \
        --num-prompts 256 --random-input-len 1024 --random-output-len 512 \
        --random-range-ratio 1 --cuda-graph-max-bs 256 --disable-overlap-schedule \
        --output-file "$OUT/engine_bench.jsonl"
      python3 -m sglang.launch_server "${model[@]}" --port 30000 > "$OUT/server.log" 2>&1 &
      server=$!
      python3 - <<'PY' || echo "server did not come up: see server.log"
import time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen("http://localhost:30000/health", timeout=2)
        break
    except Exception:
        time.sleep(1)
PY
      run serving_llama8b python3 -m sglang.bench_serving --backend sglang --port 30000 \
        --dataset-name random --num-prompts 120 --random-input-len 1024 \
        --random-output-len 256 --random-range-ratio 1 --request-rate 4 \
        --output-file "$OUT/engine_bench.jsonl"
      kill "$server"
      wait "$server" 2>/dev/null ;;
    hf-baseline)
      script=../shared/gpu/hf_baseline.py
      [ -f "$script" ] || script=.whl/hf_baseline.py
      run hf_baseline python3 "$script" ;;
    *)
      echo "unknown stage: $stage" >&2
      exit 2 ;;
  esac
done
exit $failed
