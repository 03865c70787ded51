"""What penalties and seeded sampling cost: decode throughput of N concurrent requests with them
on against the same requests with them off (``decode_ab.run_ab``: one in-process Engine, rounds
alternated).

    python benchmarks/bench_penalties.py [--model-path smollm2-135m-instruct] [--num-prompts 32]
        [--input-len 32] [--output-len 128] [--rounds 3] [--output-file results.jsonl]

"off": greedy, nothing else. "on": temperature 0.8, top_k 50, top_p 0.9, min_p 0.05,
frequency 0.5, presence 0.5, repetition 1.1, a sampling_seed per request, and min_new_tokens
(so the EOS ban runs too). Both ignore EOS, so every request generates --output-len tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_ab import add_args, run_ab  # noqa: E402

ON = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "min_p": 0.05, "frequency_penalty": 0.5,
      "presence_penalty": 0.5, "repetition_penalty": 1.1}


def off(n: int, output_len: int) -> list[dict[str, Any]]:
    return [{"max_new_tokens": output_len, "ignore_eos": True, "temperature": 0.0}
            for _ in range(n)]


def on(n: int, output_len: int) -> list[dict[str, Any]]:
    return [{"max_new_tokens": output_len, "ignore_eos": True, **ON, "sampling_seed": 1000 + i,
             "min_new_tokens": output_len // 2} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, num_prompts=32)
    run_ab(parser.parse_args(), "bench_penalties", {"off": off, "on": on})


if __name__ == "__main__":
    main()
