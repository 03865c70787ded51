"""A/B decode throughput of one in-process Engine: the same concurrent requests with two sets of
sampling parameters, alternated round by round so both see the same machine state.

Used by ``bench_penalties.py`` and ``bench_grammar.py``. Decode throughput is measured between the
last request's first token and the last token (the short prompts' prefill is excluded), so it is
the per-step cost; the end-to-end output throughput is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from sglang.utils import append_jsonl

ParamsFn = Callable[[int, int], list[dict[str, Any]]]  # (num_prompts, output_len) -> params


def add_args(parser: argparse.ArgumentParser, num_prompts: int) -> None:
    parser.add_argument("--model-path", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-prompts", type=int, default=num_prompts)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-file", default=None)


async def one_round(engine: Any, prompts: list[list[int]], params: list[dict[str, Any]]
                    ) -> dict[str, float]:
    first: list[float] = []
    last: list[float] = []
    tokens = 0

    async def run(ids: list[int], p: dict[str, Any]) -> None:
        nonlocal tokens
        count = 0
        async for chunk in await engine.async_generate(input_ids=ids, sampling_params=p,
                                                       stream=True):
            if count == 0:
                first.append(time.perf_counter())
            count = chunk["meta_info"]["completion_tokens"]
        last.append(time.perf_counter())
        tokens += count

    start = time.perf_counter()
    await asyncio.gather(*(run(ids, p) for ids, p in zip(prompts, params)))
    end = time.perf_counter()
    return {"decode_throughput": (tokens - len(prompts)) / (max(last) - max(first)),
            "output_throughput": tokens / (end - start), "output_tokens": tokens}


def run_ab(args: argparse.Namespace, bench: str, variants: dict[str, ParamsFn],
           extra_engine_args: dict[str, Any] | None = None,
           after_round: Callable[[Any, str, dict[str, float]], None] | None = None
           ) -> dict[str, Any]:
    """Runs ``args.rounds`` rounds (after one warm-up) of each variant; prints and returns the
    medians; appends a JSON line to ``args.output_file``. The first variant is the baseline."""
    import numpy as np

    import sglang as sgl

    rng = np.random.default_rng(1)
    names = list(variants)
    engine = sgl.Engine(model_path=args.model_path, device=args.device, dtype=args.dtype,
                        max_running_requests=max(args.num_prompts, 1), log_level="warning",
                        **(extra_engine_args or {}))
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    loop = asyncio.new_event_loop()
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            for name in names if r % 2 else names[::-1]:
                prompts = [rng.integers(100, 40000, args.input_len).tolist()
                           for _ in range(args.num_prompts)]
                out = loop.run_until_complete(one_round(
                    engine, prompts, variants[name](args.num_prompts, args.output_len)))
                if after_round is not None:
                    after_round(engine, name, out)
                engine.flush_cache()
                if r:
                    results[name].append(out)
                    print(f"round {r} {name:>12}: decode {out['decode_throughput']:7.1f} tok/s, "
                          f"end-to-end {out['output_throughput']:7.1f} output tok/s", flush=True)
    finally:
        engine.shutdown()
        loop.close()
    med = {n: {m: statistics.median(x[m] for x in v) for m in v[0]} for n, v in results.items()}
    base = med[names[0]]["decode_throughput"]
    ratios = {n: med[n]["decode_throughput"] / base for n in names[1:]}
    print("median decode: " + ", ".join(f"{n} {med[n]['decode_throughput']:.1f} tok/s"
                                        for n in names)
          + "; " + ", ".join(f"{n}/{names[0]} {v:.3f}" for n, v in ratios.items()))
    record = {"bench": bench, "date": time.strftime("%F %T"), "loadavg_1m": os.getloadavg()[0],
              **vars(args), "median": med, "ratios": ratios}
    append_jsonl(args.output_file, record)
    return record
