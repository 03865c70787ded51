#!/usr/bin/env bash
# All CPU benchmarks in one go, with the HF transformers baseline measured in the same run.
#
#   benchmarks/run_cpu_benchmarks.sh [results.jsonl]
#
# Demo model (smollm2-135m-instruct, fp32), in this order:
#   1. bench_one_batch        bs 1, 8, 32; 128 in / 32 out (model runner only)
#   2. hf_baseline            bs 1 and 16 identical prompts; 128 in / 64 out; and bs 16 and 32,
#                             16 in / 128 out (the decode-bound shape)
#   3. bench_offline_throughput  32 prompts, 128 in / 64 out (in-process Engine)
#   4. bench_serving against a server started here (radix cache on):
#        random 32 prompts, max concurrency 32, 128 in / 64 out
#        random 32 prompts, max concurrency 32, 16 in / 128 out (decode-bound)
#        generated-shared-prefix 4 groups x 8 prompts, system prompt 1024, question 32, output 16
#   5. the same two against a second server with --disable-radix-cache
# Every step appends JSON lines to one results file (default build/benchmarks/cpu-<date>.jsonl,
# git-ignored); a failed step is reported and the rest still run.
# The sizes are reduced from SGLang's defaults so the whole run stays under ~20 minutes on the
# 2-core dev machine; override with the environment variables below.
#
# Environment: MODEL, PORT (server port, default 30123), PYTHON, SERVER_TIMEOUT (s, default 600),
# NUM_PROMPTS (32), GSP_GROUPS (4), GSP_PER_GROUP (8), GSP_SYSTEM_LEN (1024).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
MODEL="${MODEL:-smollm2-135m-instruct}"
PORT="${PORT:-30123}"
SERVER_TIMEOUT="${SERVER_TIMEOUT:-600}"
NUM_PROMPTS="${NUM_PROMPTS:-32}"
GSP_GROUPS="${GSP_GROUPS:-4}"
GSP_PER_GROUP="${GSP_PER_GROUP:-8}"
GSP_SYSTEM_LEN="${GSP_SYSTEM_LEN:-1024}"
RESULTS="${1:-build/benchmarks/cpu-$(date +%Y%m%d-%H%M%S).jsonl}"
LOG_DIR="$(dirname "$RESULTS")/logs"
mkdir -p "$(dirname "$RESULTS")" "$LOG_DIR"
: >> "$RESULTS"

COMMON=(--model-path "$MODEL" --dtype float32 --device cpu)
FAILED=()
SERVER_PID=""
START=$SECONDS

step() {  # step NAME CMD...: run, time and record a benchmark step; never aborts the run
  local name="$1"
  shift
  echo
  echo "=== [$((SECONDS - START))s] $name (load average: $(cut -d' ' -f1-3 /proc/loadavg)) ==="
  if ! "$@"; then
    echo "!!! step failed: $name"
    FAILED+=("$name")
  fi
}

stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 30); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 1
    done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}
trap stop_server EXIT INT TERM

start_server() {  # start_server LOGNAME [extra server flags...]; waits for /v1/models
  local log="$LOG_DIR/$1.log"
  shift
  "$PYTHON" -m sglang.launch_server "${COMMON[@]}" --port "$PORT" --log-level warning "$@" \
    > "$log" 2>&1 &
  SERVER_PID=$!
  local waited=0
  until curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null 2>&1; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server exited; last lines of $log:"
      tail -20 "$log"
      SERVER_PID=""
      return 1
    fi
    if (( waited >= SERVER_TIMEOUT )); then
      echo "server not ready after ${SERVER_TIMEOUT}s; see $log"
      stop_server
      return 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "server ready after ${waited}s (pid $SERVER_PID, log $log)"
}

serving() {  # serving TAG [bench_serving flags...]
  local tag="$1"
  shift
  "$PYTHON" -m sglang.bench_serving --backend sglang --port "$PORT" --tokenizer "$MODEL" \
    --seed 1 --flush-cache --output-file "$RESULTS" --tag "$tag" "$@"
}

serving_suite() {  # serving_suite SUFFIX: the random and shared-prefix runs on the live server
  local suffix="$1"
  step "bench_serving random ($suffix)" serving "random-$suffix" --dataset-name random \
    --num-prompts "$NUM_PROMPTS" --max-concurrency 32 --random-input-len 128 \
    --random-output-len 64 --random-range-ratio 1.0
  step "bench_serving random decode-bound ($suffix)" serving "random-decode-$suffix" \
    --dataset-name random --num-prompts "$NUM_PROMPTS" --max-concurrency 32 \
    --random-input-len 16 --random-output-len 128 --random-range-ratio 1.0
  step "bench_serving generated-shared-prefix ($suffix)" serving "gsp-$suffix" \
    --dataset-name generated-shared-prefix --gsp-num-groups "$GSP_GROUPS" \
    --gsp-prompts-per-group "$GSP_PER_GROUP" --gsp-system-prompt-len "$GSP_SYSTEM_LEN" \
    --gsp-question-len 32 --gsp-output-len 16
}

echo "CPU benchmarks: $(nproc) cores, model $MODEL fp32, results -> $RESULTS"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), git: $(git rev-parse --short HEAD 2>/dev/null)"

step "bench_one_batch" "$PYTHON" -m sglang.bench_one_batch "${COMMON[@]}" --log-level warning \
  --batch-size 1 8 32 --input-len 128 --output-len 32 --output-file "$RESULTS"

step "hf_baseline" "$PYTHON" benchmarks/hf_baseline.py --model-path "$MODEL" \
  --batch-sizes 1 16 --input-len 128 --output-len 64 --output-file "$RESULTS"
step "hf_baseline (decode-bound)" "$PYTHON" benchmarks/hf_baseline.py --model-path "$MODEL" \
  --batch-sizes 16 32 --input-len 16 --output-len 128 --output-file "$RESULTS"

step "bench_offline_throughput" "$PYTHON" -m sglang.bench_offline_throughput "${COMMON[@]}" \
  --num-prompts "$NUM_PROMPTS" --random-input-len 128 --random-output-len 64 \
  --random-range-ratio 1.0 --seed 1 --output-file "$RESULTS"

if step "start server (radix cache)" start_server server-radix && [[ -n "$SERVER_PID" ]]; then
  serving_suite radix
fi
stop_server

if step "start server (--disable-radix-cache)" start_server server-noradix \
    --disable-radix-cache && [[ -n "$SERVER_PID" ]]; then
  serving_suite noradix
fi
stop_server

echo
echo "=== summary ($((SECONDS - START))s in all; results in $RESULTS) ==="
"$PYTHON" - "$RESULTS" <<'PY'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in rows:
    bench = r.get("bench")
    if bench == "bench_one_batch":
        print(f"one_batch   bs={r['batch_size']:<3} prefill {r['prefill_latency'] * 1e3:8.1f} ms"
              f"  decode {r['median_decode_latency'] * 1e3:7.1f} ms/step"
              f"  {r['decode_throughput']:7.1f} tok/s")
    elif bench == "hf_baseline":
        print(f"hf_baseline bs={r['batch_size']:<3} {r['input_len']:>3}/{r['output_len']:<3} prefill {r['prefill_latency'] * 1e3:8.1f} ms"
              f"  decode {r['decode_step_latency'] * 1e3:7.1f} ms/step"
              f"  {r['decode_throughput']:7.1f} tok/s  (end-to-end {r['output_throughput']:.1f})")
    elif bench == "bench_offline_throughput":
        print(f"offline     {r['completed']} prompts in {r['duration']:.1f} s: "
              f"{r['output_throughput']:.1f} output tok/s, {r['total_throughput']:.1f} total tok/s")
    elif bench == "bench_serving":
        print(f"serving     {r.get('tag') or r['dataset_name']:<14} {r['completed']}/"
              f"{r['completed'] + r['failed']} ok in {r['duration']:.1f} s: "
              f"{r['output_throughput']:.1f} out tok/s, {r['total_throughput']:.1f} total tok/s, "
              f"TTFT median {r['median_ttft_ms']:.0f} ms, ITL median {r['median_itl_ms']:.0f} ms")
PY
if (( ${#FAILED[@]} )); then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
