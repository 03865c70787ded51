"""Benchmark of the fused sampling / logit-processing kernels through the torch adapter.

Times ``sample`` (greedy; temperature + top-k + top-p; top-p alone) and the penalty path
(``apply_penalties`` over 512 seen tokens per row) for rows in {1, 32, 256} at vocab 49152, on the
CPU (sglang._core, all hardware threads) and, when a GPU is present, on CUDA (sglang._cuda,
synchronised). Logits are N(0, sigma^2) (sigma 1 is flat, the slow case for top-p) or Zipf-like
(p ~ rank^-1.2 over shuffled ids, closer to an LLM's). Prints the median of --repeats runs.
Not a test.

Usage: python benchmarks/bench_sampling.py [--vocab 49152] [--repeats 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sglang.srt.sampling import kernels

ROWS = (1, 32, 256)
# name -> (temperature, top_k, top_p, min_p, logits: "zipf" or N(0, sigma^2) with sigma)
SAMPLE_CASES: dict[str, tuple[float, int, float, float, str | float]] = {
    "greedy": (0.0, 0, 1.0, 0.0, 3.0),
    "T1 (no filter)": (1.0, 0, 1.0, 0.0, 3.0),
    "T0.8 k50 p0.9": (0.8, 50, 0.9, 0.0, 3.0),
    "p0.95 zipf": (1.0, 0, 0.95, 0.0, "zipf"),
    "p0.95 sigma3": (1.0, 0, 0.95, 0.0, 3.0),
    "p0.95 sigma1": (1.0, 0, 0.95, 0.0, 1.0),
}
SEEN_PER_ROW = 512


def median_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm up (thread pool, scratch buffers, CUDA context)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_sample(device: str, rows: int, vocab: int, case: str, args: argparse.Namespace) -> float:
    t, k, p, mp, dist = SAMPLE_CASES[case]
    g = torch.Generator().manual_seed(rows)
    if dist == "zipf":
        ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)])
        logits = (-1.2 * torch.log1p(ranks.float())).to(device)
    else:
        logits = (torch.randn(rows, vocab, generator=g) * float(dist)).to(device)
    params = {
        "temperature": torch.full((rows,), t, device=device),
        "top_k": torch.full((rows,), k, dtype=torch.int32, device=device),
        "top_p": torch.full((rows,), p, device=device),
        "min_p": torch.full((rows,), mp, device=device),
        "seeds": torch.arange(rows, dtype=torch.int64, device=device),
        "offsets": torch.zeros(rows, dtype=torch.int64, device=device),
    }
    out = torch.empty(rows, dtype=torch.int32, device=device)
    threads = {"num_threads": args.threads}

    def run() -> None:
        kernels.sample(logits, **params, out=out, **threads)

    return median_ms(run, device, args.repeats)


def bench_penalties(device: str, rows: int, vocab: int, args: argparse.Namespace) -> float:
    g = torch.Generator().manual_seed(rows)
    logits = torch.randn(rows, vocab, generator=g).to(device)
    ids = torch.cat([torch.randperm(vocab, generator=g)[:SEEN_PER_ROW] for _ in range(rows)])
    indptr = torch.arange(0, rows + 1, dtype=torch.int32) * SEEN_PER_ROW
    counts = torch.randint(0, 5, (ids.numel(),), generator=g, dtype=torch.int32)
    per_row = [torch.full((rows,), v) for v in (0.1, 0.2, 1.1)]
    tensors = [t.to(device) for t in (indptr, ids.to(torch.int32), counts, *per_row)]

    def run() -> None:
        kernels.apply_penalties(logits, *tensors, num_threads=args.threads)

    return median_ms(run, device, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"vocab {args.vocab}, median of {args.repeats}, CPU threads {args.threads or 'all'}")
    print(f"{'device':<6} {'op':<24} {'rows':>5} {'ms':>9} {'us/row':>9}")
    for device in devices:
        for rows in ROWS:
            results = [
                (f"sample {case}", bench_sample(device, rows, args.vocab, case, args))
                for case in SAMPLE_CASES
            ]
            penalty_ms = bench_penalties(device, rows, args.vocab, args)
            results.append((f"penalties {SEEN_PER_ROW}/row", penalty_ms))
            for name, ms in results:
                print(f"{device:<6} {name:<24} {rows:>5} {ms:>9.3f} {ms * 1e3 / rows:>9.1f}")


if __name__ == "__main__":
    main()
