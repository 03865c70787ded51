"""Data-parallel routing (issue 16): round_robin against cache_aware on shared-prefix traffic.

For each policy, starts one ``--dp-size 2`` server of the demo model (SmolLM2-135M-Instruct),
sends a warm-up request, flushes the radix caches, then runs ``python -m sglang.bench_serving
--backend sglang --dataset-name generated-shared-prefix`` against it (groups of prompts sharing a
long system prompt, shuffled). Reports per policy the prefix-cache hit rate over the run (the
replicas' ``cache_hit_tokens / (cache_hit_tokens + cache_miss_tokens)`` from /get_server_info,
summed over replicas), each replica's share of the prompt tokens, and bench_serving's throughput
and latency. cache_aware should keep each group on one replica (higher hit rate, each system
prompt prefilled once) where round_robin prefills every system prompt on every replica.

    python benchmarks/bench_dp_router.py [--dp-size 2] [--policies round_robin cache_aware]
        [--gsp-num-groups 8] [--gsp-prompts-per-group 8] [--gsp-system-prompt-len 512]
        [--gsp-question-len 32] [--gsp-output-len 32] [--max-concurrency 16]
        [--server-args "--max-total-tokens 16384"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py" / "server"))

from bench_encode import cpu_name, git_commit
from server_utils import DEMO_MODEL, start_server, stop_server

POLICIES = ("round_robin", "cache_aware")


def replica_states(url: str) -> list[dict]:
    return requests.get(f"{url}/get_server_info", timeout=60).json()["internal_states"]


def prompt_tokens(before: list[dict], after: list[dict]) -> tuple[list[int], list[int]]:
    """Each replica's (hit, miss) prompt tokens between two snapshots."""
    hits = [a["cache_hit_tokens"] - b["cache_hit_tokens"] for a, b in zip(after, before)]
    misses = [a["cache_miss_tokens"] - b["cache_miss_tokens"] for a, b in zip(after, before)]
    return hits, misses


def bench_serving_cmd(args: argparse.Namespace, url: str, output: Path) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
           "--base-url", url, "--dataset-name", "generated-shared-prefix",
           "--gsp-num-groups", str(args.gsp_num_groups),
           "--gsp-prompts-per-group", str(args.gsp_prompts_per_group),
           "--gsp-system-prompt-len", str(args.gsp_system_prompt_len),
           "--gsp-question-len", str(args.gsp_question_len),
           "--gsp-output-len", str(args.gsp_output_len),
           "--request-rate", str(args.request_rate), "--seed", str(args.seed),
           "--warmup-requests", "0", "--output-file", str(output)]
    if args.max_concurrency is not None:
        cmd += ["--max-concurrency", str(args.max_concurrency)]
    return cmd


def run_policy(args: argparse.Namespace, policy: str, workdir: Path) -> dict:
    server_args = ["--dp-size", str(args.dp_size), "--load-balance-method", policy,
                   "--random-seed", "1", "--skip-server-warmup", "--log-level", "warning",
                   *shlex.split(args.server_args)]
    proc, url = start_server(args.model, server_args)
    try:
        warm = {"text": "The capital city of France is",
                "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        requests.post(f"{url}/generate", json=warm, timeout=600).raise_for_status()
        requests.post(f"{url}/flush_cache", timeout=60).raise_for_status()
        before = replica_states(url)
        output = workdir / f"{policy}.jsonl"
        subprocess.run(bench_serving_cmd(args, url, output), check=True)
        hits, misses = prompt_tokens(before, replica_states(url))
    finally:
        stop_server(proc)
    result = json.loads(output.read_text().splitlines()[-1])
    total = sum(hits) + sum(misses)
    result.update(policy=policy, replica_hit_tokens=hits, replica_miss_tokens=misses,
                  cache_hit_rate=sum(hits) / total if total else 0.0,
                  replica_prompt_share=[(h + m) / total if total else 0.0
                                        for h, m in zip(hits, misses)])
    return result


def report(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"\nCPU: {cpu_name()}; commit {git_commit()}; {time.strftime('%Y-%m-%d')}; model "
          f"{args.model}; --dp-size {args.dp_size}; generated-shared-prefix: "
          f"{args.gsp_num_groups} groups x {args.gsp_prompts_per_group} prompts, system "
          f"{args.gsp_system_prompt_len} + question {args.gsp_question_len} tokens, "
          f"{args.gsp_output_len} output tokens; max concurrency {args.max_concurrency}; "
          f"request rate {args.request_rate}; server args {args.server_args!r}")
    print("| policy | cache hit rate | prompt tokens per replica | req/s | output tok/s | "
          "total tok/s | mean TTFT (ms) | mean E2E (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        share = " / ".join(f"{s:.0%}" for s in r["replica_prompt_share"])
        print(f"| {r['policy']} | {r['cache_hit_rate']:.1%} | {share} | "
              f"{r['request_throughput']:.2f} | {r['output_throughput']:.1f} | "
              f"{r['total_throughput']:.1f} | {r['mean_ttft_ms']:.0f} | "
              f"{r['mean_e2e_latency_ms']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = parser.add_argument
    a("--model", default=DEMO_MODEL)
    a("--dp-size", type=int, default=2)
    a("--policies", nargs="+", default=list(POLICIES),
      choices=("round_robin", "shortest_queue", "cache_aware"))
    a("--gsp-num-groups", type=int, default=8)
    a("--gsp-prompts-per-group", type=int, default=8)
    a("--gsp-system-prompt-len", type=int, default=512)
    a("--gsp-question-len", type=int, default=32)
    a("--gsp-output-len", type=int, default=32)
    a("--max-concurrency", type=int, default=16)
    a("--request-rate", type=float, default=float("inf"))
    a("--seed", type=int, default=1)
    a("--server-args", default="--max-total-tokens 16384",
      help="More launch_server flags for every server (one string).")
    a("--output-file", default=None, help="Append each policy's result as a JSON line.")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dp-router-"))
    results = []
    for policy in args.policies:
        results.append(run_policy(args, policy, workdir))
        if args.output_file:
            with open(args.output_file, "a") as f:
                f.write(json.dumps({**results[-1], "cpu": cpu_name()}) + "\n")
    report(args, results)


if __name__ == "__main__":
    main()
