"""What penalties and seeded sampling cost: decode throughput of N concurrent requests with them
on against the same requests with them off, in one in-process Engine, alternating the two so both
see the same machine state.

    python benchmarks/bench_penalties.py [--model-path smollm2-135m-instruct] [--num-prompts 32]
        [--input-len 32] [--output-len 128] [--rounds 3] [--output-file results.jsonl]

"off": greedy, nothing else. "on": temperature 0.8, top_k 50, top_p 0.9, min_p 0.05,
frequency 0.5, presence 0.5, repetition 1.1, a sampling_seed per request, and min_new_tokens
(so the EOS ban runs too). Both ignore EOS, so every request generates --output-len tokens. The
decode throughput is measured between each request's first and last token (the prefill of the
short prompts is excluded, so the number is the per-step cost the issue asks about); the
end-to-end output throughput is reported too. Prints the medians and the on/off ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

ON = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.05, "frequency_penalty": 0.5,
      "presence_penalty": 0.5, "repetition_penalty": 1.1}
OFF = {"temperature": 0.0}


def make_params(kind: str, n: int, output_len: int) -> list[dict[str, Any]]:
    base = {"max_new_tokens": output_len, "ignore_eos": True}
    if kind == "off":
        return [{**base, **OFF} for _ in range(n)]
    return [{**base, **ON, "sampling_seed": 1000 + i, "min_new_tokens": output_len // 2}
            for i in range(n)]


async def one_round(engine: Any, prompts: list[list[int]], params: list[dict[str, Any]]
                    ) -> dict[str, float]:
    """Streams every request at once; decode throughput from first to last token overall."""
    import asyncio

    first: list[float] = []
    last: list[float] = []
    tokens = 0

    async def run(ids: list[int], p: dict[str, Any]) -> None:
        nonlocal tokens
        seen_first = False
        count = 0
        async for chunk in await engine.async_generate(input_ids=ids, sampling_params=p,
                                                       stream=True):
            now = time.perf_counter()
            if not seen_first:
                first.append(now)
                seen_first = True
            count = chunk["meta_info"]["completion_tokens"]
        last.append(time.perf_counter())
        tokens += count

    start = time.perf_counter()
    await asyncio.gather(*(run(ids, p) for ids, p in zip(prompts, params)))
    end = time.perf_counter()
    decode_tokens = tokens - len(prompts)  # the first token of each comes from its prefill
    decode_time = max(last) - max(first)  # all requests decode together after the last prefill
    return {"decode_throughput": decode_tokens / decode_time,
            "output_throughput": tokens / (end - start), "duration": end - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-file", default=None)
    args = parser.parse_args()

    import numpy as np

    import sglang as sgl

    rng = np.random.default_rng(1)
    engine = sgl.Engine(model_path=args.model_path, device=args.device, dtype=args.dtype,
                        max_running_requests=max(args.num_prompts, 1), log_level="warning")
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        import asyncio

        loop = asyncio.new_event_loop()
        for r in range(args.rounds + 1):  # round 0 warms up
            for kind in ("off", "on") if r % 2 else ("on", "off"):
                prompts = [rng.integers(100, 40000, args.input_len).tolist()
                           for _ in range(args.num_prompts)]
                out = loop.run_until_complete(one_round(
                    engine, prompts, make_params(kind, args.num_prompts, args.output_len)))
                engine.flush_cache()
                if r:
                    results[kind].append(out)
                    print(f"round {r} {kind:>3}: decode {out['decode_throughput']:7.1f} tok/s, "
                          f"end-to-end {out['output_throughput']:7.1f} output tok/s", flush=True)
    finally:
        engine.shutdown()
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    ratio = med["on"]["decode_throughput"] / med["off"]["decode_throughput"]
    print(f"median decode: off {med['off']['decode_throughput']:.1f} tok/s, "
          f"on {med['on']['decode_throughput']:.1f} tok/s, on/off {ratio:.3f}")
    if args.output_file:
        with open(args.output_file, "a") as f:
            f.write(json.dumps({"bench": "bench_penalties", "date": time.strftime("%F %T"),
                                "loadavg_1m": os.getloadavg()[0], **vars(args),
                                "median": med, "ratio": ratio}) + "\n")


if __name__ == "__main__":
    main()
