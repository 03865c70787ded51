"""Multi-LoRA throughput (issue 15): 32 concurrent ``/generate`` requests spread over 4 adapters
against the same 32 requests on the base model alone, on one server of the demo model
(SmolLM2-135M-Instruct, the GGUF) started with ``--lora-paths`` (4 random rank-16 PEFT adapters
on all seven projections, written here with the model's shapes). Each round flushes the radix
cache and sends distinct 64-token prompts, 64 new tokens each (ignore_eos); the base and LoRA
rounds alternate. Reports output tokens per second of each (median over rounds) and their ratio
(issue goal: at least 0.7). ``--adapters 0`` is a dry run of the base model only.

    python benchmarks/bench_lora.py [--requests 32] [--adapters 4] [--rank 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py" / "server"))

from bench_encode import cpu_name
from server_utils import DEMO_MODEL, start_server, stop_server

PROMPT_TOKENS = 64
NEW_TOKENS = 64
# SmolLM2-135M: hidden 576, 9 query / 3 KV heads of 64, MLP 1536, 30 layers.
HIDDEN, KV, INTER, LAYERS = 576, 192, 1536, 30
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV),
          "o_proj": (HIDDEN, HIDDEN), "gate_proj": (HIDDEN, INTER), "up_proj": (HIDDEN, INTER),
          "down_proj": (INTER, HIDDEN)}  # fmt: skip


def write_adapter(folder: Path, seed: int, rank: int) -> Path:
    """A PEFT adapter folder of random weights for the demo model (every projection)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module, (fan_in, fan_out) in SHAPES.items():
            block = "self_attn" if module[0] in "qkvo" else "mlp"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) / rank
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
        "target_modules": list(SHAPES), "base_model_name_or_path": DEMO_MODEL}))
    return folder


def prompts(count: int, round_index: int) -> list[list[int]]:
    """Distinct prompts (no radix-cache hits between requests or rounds)."""
    return [[(97 * i + 31 * j + 7919 * round_index) % 40000 + 500 for j in range(PROMPT_TOKENS)]
            for i in range(count)]  # fmt: skip


def run_round(url: str, batch: list[list[int]], names: list[str | None]) -> float:
    """Output tokens per second of the batch sent as concurrent requests."""
    sampling = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    requests.post(f"{url}/flush_cache", timeout=60)

    def one(i: int) -> int:
        body = {"input_ids": batch[i], "sampling_params": sampling, "lora_path": names[i]}
        r = requests.post(f"{url}/generate", json=body, timeout=900)
        r.raise_for_status()
        return len(r.json()["output_ids"])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
        tokens = sum(pool.map(one, range(len(batch))))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    names = [f"adapter{i}" for i in range(args.adapters)]
    paths = [f"{n}={write_adapter(root / n, i, args.rank)}" for i, n in enumerate(names)]
    extra = ["--max-running-requests", str(args.requests), "--max-total-tokens", "16384",
             "--skip-server-warmup", "--log-level", "warning", "--random-seed", "1"]
    if paths:
        extra += ["--lora-paths", *paths, "--max-loras-per-batch", str(max(args.adapters, 1))]
    proc, url = start_server(DEMO_MODEL, extra)
    base_tps, lora_tps = [], []
    try:
        spread = [names[i % len(names)] if names else None for i in range(args.requests)]
        run_round(url, prompts(args.requests, 99), spread)  # warm-up
        for r in range(args.rounds):
            batch = prompts(args.requests, r)
            base_tps.append(run_round(url, batch, [None] * args.requests))
            lora_tps.append(run_round(url, batch, spread))
    finally:
        stop_server(proc)
    base, lora = statistics.median(base_tps), statistics.median(lora_tps)
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}; {args.requests} "
          f"concurrent requests, {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens; "
          f"{args.adapters} adapters of rank {args.rank} on q/k/v/o/gate/up/down; "
          f"{args.rounds} rounds")
    print(f"base model alone: {base:.1f} tok/s (rounds {', '.join(f'{t:.1f}' for t in base_tps)})")
    print(f"spread over {args.adapters} adapters: {lora:.1f} tok/s (rounds "
          f"{', '.join(f'{t:.1f}' for t in lora_tps)})")
    print(f"ratio LoRA / base: {lora / base:.2f} (goal >= 0.7)")


if __name__ == "__main__":
    main()
