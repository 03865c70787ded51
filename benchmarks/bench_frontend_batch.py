"""Frontend run_batch throughput: 64 short programs at once vs one by one (issue 11, acc. 6).

    python benchmarks/bench_frontend_batch.py [--model-path smollm2-135m-instruct]
        [--num-programs 64] [--max-tokens 16] [--output-file results.jsonl]

Starts a server, runs the same few-shot program (a shared prefix, a per-item question, one gen)
once per item sequentially (``run`` + wait) and then all at once with ``run_batch``, both greedy,
and reports programs/s for each and the speedup. One JSON line (CPU, date, command) goes to
--output-file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import sglang as sgl
from sglang.utils import append_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py", "server"))
from server_utils import SERVER_ARGS, start_server, stop_server  # noqa: E402
from soak import cpu_name  # noqa: E402

PREFIX = ("The following are short questions with one-word answers.\n"
          "Q: What colour is the sky on a clear day?\nA: blue\n"
          "Q: What do bees make?\nA: honey\n")


def make_program(max_tokens: int):
    @sgl.function
    def few_shot(s, question):
        s += PREFIX + "Q: " + question + "\nA:"
        s += sgl.gen("answer", max_tokens=max_tokens, stop="\n", temperature=0,
                     ignore_eos=True)

    return few_shot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="smollm2-135m-instruct")
    parser.add_argument("--num-programs", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--output-file", default=None)
    args = parser.parse_args()

    proc, url = start_server(args.model_path, [*SERVER_ARGS, "--max-running-requests", "64"])
    try:
        backend = sgl.RuntimeEndpoint(url)
        program = make_program(args.max_tokens)
        items = [{"question": f"What is item number {i}?"} for i in range(args.num_programs)]
        program.run(backend=backend, **items[0]).sync()  # warm-up

        tic = time.perf_counter()
        for item in items:
            program.run(backend=backend, **item).sync()
        sequential_s = time.perf_counter() - tic

        tic = time.perf_counter()
        states = program.run_batch(items, backend=backend)
        batch_s = time.perf_counter() - tic
        assert all(s.error() is None for s in states)
    finally:
        stop_server(proc)

    record = {
        "bench": "frontend_run_batch", "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(), "command": " ".join(sys.argv), "num_programs": args.num_programs,
        "max_tokens": args.max_tokens, "sequential_s": round(sequential_s, 2),
        "batch_s": round(batch_s, 2),
        "sequential_programs_per_s": round(args.num_programs / sequential_s, 2),
        "batch_programs_per_s": round(args.num_programs / batch_s, 2),
        "speedup": round(sequential_s / batch_s, 2),
    }
    print(record)
    append_jsonl(args.output_file, record)


if __name__ == "__main__":
    main()
