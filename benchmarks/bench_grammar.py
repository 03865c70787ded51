"""What constrained decoding costs: decode throughput of N concurrent requests under a JSON schema
against the same requests unconstrained (``decode_ab.run_ab``: one in-process Engine, rounds
alternated), plus the grammar's per-token mask time.

    python benchmarks/bench_grammar.py [--grammar-backend xgrammar] [--num-prompts 16]
        [--output-len 96] [--rounds 3] [--output-file results.jsonl]

Both variants are greedy and generate exactly --output-len tokens: the unconstrained one ignores
EOS, the constrained one follows a schema (an array of at least 48 short lowercase strings) that
cannot end sooner. The mask time is the engine's own counter (filling the token bitmask of every
grammar row; it runs on a worker thread during the forward pass) divided by the grammar tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_ab import add_args, run_ab  # noqa: E402

from sglang.utils import append_jsonl  # noqa: E402

SCHEMA = json.dumps({"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                     "minItems": 48})


def free(n: int, output_len: int) -> list[dict[str, Any]]:
    return [{"max_new_tokens": output_len, "ignore_eos": True, "temperature": 0.0}
            for _ in range(n)]


def constrained(n: int, output_len: int) -> list[dict[str, Any]]:
    return [{"max_new_tokens": output_len, "temperature": 0.0, "json_schema": SCHEMA}
            for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, num_prompts=16)
    parser.add_argument("--grammar-backend", default="xgrammar", choices=("xgrammar", "outlines"))
    parser.set_defaults(output_len=96)
    args = parser.parse_args()
    mask_us: list[float] = []

    def after_round(engine: Any, name: str, out: dict[str, float]) -> None:
        if name == "json_schema":
            state = engine.get_server_info()["internal_states"][0]
            mask_us.append(state["grammar_mask_us_per_token"])

    record = run_ab(args, "bench_grammar", {"unconstrained": free, "json_schema": constrained},
                    {"grammar_backend": args.grammar_backend}, after_round)
    print(f"grammar mask fill: {mask_us[-1]:.1f} us per token ({args.grammar_backend}, "
          f"running mean over all constrained rounds)")
    append_jsonl(args.output_file, {"bench": "bench_grammar_mask",
                                    "grammar_backend": args.grammar_backend,
                                    "mask_us_per_token": mask_us[-1],
                                    "ratio": record["ratios"]["json_schema"]})


if __name__ == "__main__":
    main()
