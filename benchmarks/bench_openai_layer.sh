#!/usr/bin/env bash
# What the OpenAI layer costs (issue #10, acceptance 8): the same workload through /generate
# (--backend sglang), /v1/completions (sglang-oai, the same token-id prompts) and
# /v1/chat/completions (sglang-oai-chat, the prompt wrapped by the chat template), on one server,
# in the same run, each backend ROUNDS times interleaved (sglang, oai, chat, sglang, ...).
#
#   benchmarks/bench_openai_layer.sh [results.jsonl]
#
# Workload: random, NUM_PROMPTS (32) prompts at max concurrency 32, 16 in / 128 out, ignore_eos
# (the decode-bound shape, where per-token overhead shows most). The chat template makes the chat
# prompts longer (the demo template adds 31 tokens), so each round also runs the native backend on
# prompts of that length (CHAT_INPUT_LEN, 47): chat is compared with that run.
# Environment: MODEL, PORT (30124), PYTHON, ROUNDS (2), NUM_PROMPTS, CHAT_INPUT_LEN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
MODEL="${MODEL:-smollm2-135m-instruct}"
PORT="${PORT:-30124}"
ROUNDS="${ROUNDS:-2}"
NUM_PROMPTS="${NUM_PROMPTS:-32}"
CHAT_INPUT_LEN="${CHAT_INPUT_LEN:-47}"
RESULTS="${1:-build/benchmarks/openai-layer-$(date +%Y%m%d-%H%M%S).jsonl}"
mkdir -p "$(dirname "$RESULTS")"

"$PYTHON" -m sglang.launch_server --model-path "$MODEL" --dtype float32 --device cpu \
  --port "$PORT" --log-level warning > "$(dirname "$RESULTS")/openai-layer-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null 2>&1; do
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited"; exit 1; }
  sleep 2
done

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), date: $(date -u +%FT%TZ)," \
  "git: $(git rev-parse --short HEAD)"
run() {  # run BACKEND INPUT_LEN TAG
  echo "=== round $round, $1, $2 in (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  "$PYTHON" -m sglang.bench_serving --backend "$1" --port "$PORT" --tokenizer "$MODEL" \
    --dataset-name random --num-prompts "$NUM_PROMPTS" --max-concurrency 32 \
    --random-input-len "$2" --random-output-len 128 --random-range-ratio 1.0 --seed 1 \
    --flush-cache --output-file "$RESULTS" --tag "$3-r$round"
}
for round in $(seq 1 "$ROUNDS"); do
  run sglang 16 openai-layer-sglang
  run sglang-oai 16 openai-layer-sglang-oai
  run sglang "$CHAT_INPUT_LEN" openai-layer-sglang-chat-shaped
  run sglang-oai-chat 16 openai-layer-sglang-oai-chat
done
echo "results: $RESULTS"
