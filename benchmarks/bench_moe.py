"""Decode-step MoE expert compute: the grouped computation of ``layers.moe.fused_moe`` against
the per-expert Python loop over all experts (transformers' eager MoE, the baseline).

Shape: Qwen3-30B-A3B scaled down (hidden 1024, 64 experts, top-8, moe_intermediate 256; the
real model has hidden 2048, 128 experts, moe_intermediate 768). Each timed call routes fresh
tokens (softmax top-k of random router logits, the same sequence for every method), so the
experts hit change from call to call as in decoding; the experts' weights (200 MB in float32)
do not fit the caches. Prints one row per batch size: median ms per MoE block call of the
baseline and of each method (``grouped``, ``loop``, ``gathered`` on the dense stacks,
``all_experts``: every expert on every token, weighted by the routing; ``packed``: the loop over
oneDNN-packed experts), and the speedup of what ``FusedMoE`` runs on this CPU (``packed`` where
``packing_wins``, else ``all_experts`` up to ``all_experts_max_tokens``, else ``grouped``).

    python benchmarks/bench_moe.py [--batch-sizes 1,8,32] [--dtype float32] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_encode import cpu_name
from sglang.srt.layers.moe.fused_moe import (
    PackedExperts,
    all_experts_max_tokens,
    fused_experts,
    fused_experts_packed,
    moe_forward_per_expert_loop,
    packing_wins,
)
from sglang.srt.layers.moe.topk import select_experts


def time_calls(fn: Callable[[int], torch.Tensor], calls: int) -> float:
    """Median seconds of ``fn(i)`` for i in 0..calls-1 (after one warm-up call)."""
    fn(calls)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


METHODS = ("grouped", "loop", "gathered", "all_experts", "packed")


def bench_size(t: int, w13: torch.Tensor, w2: torch.Tensor, k: int, calls: int,
               gen: torch.Generator) -> tuple[float, dict[str, float]]:  # fmt: skip
    """(baseline seconds, seconds per method) of one MoE block call with ``t`` tokens."""
    e, _, h = w13.shape
    xs = [torch.randn(t, h, generator=gen).to(w13.dtype) for _ in range(calls + 1)]
    routes = [select_experts(torch.randn(t, e, generator=gen), k, True) for _ in range(calls + 1)]

    def baseline(n: int) -> torch.Tensor:
        return moe_forward_per_expert_loop(xs[n], w13, w2, *routes[n])

    packed = PackedExperts(w13, w2)

    def run(method: str) -> Callable[[int], torch.Tensor]:
        if method == "packed":
            return lambda n: fused_experts_packed(xs[n], packed, *routes[n])
        return lambda n: fused_experts(xs[n], w13, w2, *routes[n], method=method)

    ref = baseline(0)
    tol = 1e-4 if w13.dtype == torch.float32 else 5e-2
    for m in METHODS:
        torch.testing.assert_close(run(m)(0), ref, atol=tol, rtol=tol)
    return time_calls(baseline, calls), {m: time_calls(run(m), calls) for m in METHODS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--calls", type=int, default=30, help="timed calls per method and size")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    e, h, i, k = args.experts, args.hidden, args.intermediate, args.top_k
    gen = torch.Generator().manual_seed(0)
    w13 = (torch.randn(e, 2 * i, h, generator=gen) * h**-0.5).to(dtype)
    w2 = (torch.randn(e, h, i, generator=gen) * i**-0.5).to(dtype)

    print(f"MoE block, decode step: hidden {h}, {e} experts, top-{k}, moe_intermediate {i}, "
          f"{args.dtype}, {torch.get_num_threads()} threads, {cpu_name()}")  # fmt: skip
    with torch.inference_mode():
        packs, small = packing_wins(w13, w2), all_experts_max_tokens(w13, w2, k)
    cols = " | ".join(f"{m} ms" for m in METHODS)
    print(f"| tokens | per-expert loop ms | {cols} | FusedMoE's choice | speedup |")
    print("|" + "---|" * (len(METHODS) + 4))
    with torch.inference_mode():
        for t in (int(s) for s in args.batch_sizes.split(",")):
            base, ms = bench_size(t, w13, w2, k, args.calls, gen)
            chosen = "packed" if packs else (
                "all_experts" if t <= small else "grouped")
            cells = " | ".join(f"{ms[m] * 1e3:.2f}" for m in METHODS)
            print(f"| {t} | {base * 1e3:.2f} | {cells} | {chosen} | {base / ms[chosen]:.2f}x |")


if __name__ == "__main__":
    main()
