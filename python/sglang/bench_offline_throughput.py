"""Offline throughput through the in-process engine: ``python -m sglang.bench_offline_throughput``.

Builds ``sglang.Engine`` from the server flags (parsed by ``ServerArgs.add_cli_args``), makes
``--num-prompts`` random prompts (the same generator as ``bench_serving``), sends them all in one
``engine.generate(input_ids=[...], sampling_params=[...])`` call, and reports the wall time and the
request / input / output / total token throughputs counted from each reply's ``meta_info``.
``--output-file`` appends one JSON line.

Usage::

    python -m sglang.bench_offline_throughput --model-path smollm2-135m-instruct --dtype float32 \\
        --num-prompts 32 --random-input-len 128 --random-output-len 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

from sglang.bench_serving import DatasetRow, sample_random_requests, token_throughputs
from sglang.srt.server_args import ServerArgs
from sglang.utils import append_jsonl

WARMUP_PROMPTS = 4
WARMUP_OUTPUT_LEN = 4


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--dataset-name", choices=("random",), default="random")
    a("--num-prompts", type=int, default=1000)
    a("--random-input-len", type=int, default=1024)
    a("--random-output-len", type=int, default=1024)
    a("--random-range-ratio", type=float, default=0.0)
    a("--seed", type=int, default=1)
    a("--disable-ignore-eos", action="store_true")
    a("--skip-warmup", action="store_true")
    a("--output-file", "--result-filename", dest="output_file", type=str, default=None)
    a("--tag", type=str, default=None)


def sampling_params(
    rows: list[DatasetRow], ignore_eos: bool, max_new: int | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "temperature": 0.0,
            "ignore_eos": ignore_eos,
            "max_new_tokens": r.output_len if max_new is None else max_new,
        }
        for r in rows
    ]


def generate(
    engine: Any, rows: list[DatasetRow], params: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], float]:
    """One batched ``generate`` call; returns (replies, wall seconds)."""
    start = time.perf_counter()
    replies = engine.generate(input_ids=[r.input_ids for r in rows], sampling_params=params)
    return list(replies), time.perf_counter() - start


def throughput_metrics(replies: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    total_in = sum(int(r["meta_info"]["prompt_tokens"]) for r in replies)
    total_out = sum(int(r["meta_info"]["completion_tokens"]) for r in replies)
    return token_throughputs(len(replies), total_in, total_out, duration)


def format_table(m: dict[str, Any]) -> str:
    rows = [
        ("Successful requests:", m["completed"]),
        ("Benchmark duration (s):", m["duration"]),
        ("Total input tokens:", m["total_input_tokens"]),
        ("Total generated tokens:", m["total_output_tokens"]),
        ("Request throughput (req/s):", m["request_throughput"]),
        ("Input token throughput (tok/s):", m["input_throughput"]),
        ("Output token throughput (tok/s):", m["output_throughput"]),
        ("Total token throughput (tok/s):", m["total_throughput"]),
    ]
    lines = ["{s:{c}^{n}}".format(s=" Offline Throughput Benchmark Result ", n=50, c="=")]
    for label, value in rows:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40} {text}")
    lines.append("=" * 50)
    return "\n".join(lines)


def run_benchmark(server_args: ServerArgs, args: argparse.Namespace) -> dict[str, Any]:
    import sglang as sgl
    from sglang.srt.hf_transformers_utils import get_tokenizer

    tokenizer = get_tokenizer(server_args.tokenizer_path)
    rows = sample_random_requests(
        tokenizer,
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        args.seed,
    )
    ignore_eos = not args.disable_ignore_eos
    engine = sgl.Engine(**dataclasses.asdict(server_args))
    try:
        if not args.skip_warmup:
            warm = rows[:WARMUP_PROMPTS]
            generate(engine, warm, sampling_params(warm, ignore_eos, WARMUP_OUTPUT_LEN))
            engine.flush_cache()  # the measured prompts must not hit the warm-up's cache
        replies, duration = generate(engine, rows, sampling_params(rows, ignore_eos))
    finally:
        engine.shutdown()
    metrics = throughput_metrics(replies, duration)
    print(format_table(metrics), flush=True)
    result = {
        "bench": "bench_offline_throughput",
        "tag": args.tag,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_1m": os.getloadavg()[0],
        "model_path": server_args.model_path,
        "dtype": server_args.dtype,
        "device": server_args.device,
        "num_prompts": args.num_prompts,
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "random_range_ratio": args.random_range_ratio,
        "seed": args.seed,
        **metrics,
    }
    append_jsonl(args.output_file, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_offline_throughput", description=__doc__.split("\n")[0]
    )
    ServerArgs.add_cli_args(parser)
    add_bench_args(parser)
    parser.set_defaults(log_level="error")
    args = parser.parse_args(argv)
    run_benchmark(ServerArgs.from_cli_args(args), args)


if __name__ == "__main__":
    main()
