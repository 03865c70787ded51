"""Static-batch latency benchmark through the model runner only: ``python -m sglang.bench_one_batch``.

No HTTP and no engine process: this module drives ``sglang._core.Scheduler`` and ``ModelRunner``
itself (the driver loop of ``docs/architecture.md``: ``schedule()`` -> ``ForwardBatch.from_plan``
-> ``runner.forward`` -> greedy argmax -> ``commit``). For each ``--batch-size`` it queues that many
random prompts of ``--input-len`` tokens, times the one prefill (extend) step that admits them all
(chunked prefill and the radix cache are off, the KV pool holds the whole batch), then the
``--output-len - 1`` decode steps. Prints a table per batch size; ``--output-file`` appends one
JSON line each. Server flags (``--model-path``, ``--dtype``, ``--load-format dummy``, ``--device``,
...) are parsed by ``ServerArgs.add_cli_args``. With ``--tp-size N`` (as SGLang's) N spawned
processes, one per rank, each drive their own scheduler with the same prompts (so they run the
same steps: every rank computes the same full logits) and rank 0 reports.

Usage::

    python -m sglang.bench_one_batch --model-path smollm2-135m-instruct --dtype float32 \\
        --batch-size 1 8 32 --input-len 128 --output-len 32
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sglang import _core
from sglang.srt.model_executor.forward_batch import ForwardBatch, table_as_tensor
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs
from sglang.utils import append_jsonl

WARMUP_OUTPUT_LEN = 4


@dataclass
class BenchArgs:
    batch_size: list[int]
    input_len: list[int]
    output_len: list[int]
    warmup: bool
    output_file: str | None
    run_name: str

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--batch-size", type=int, nargs="+", default=[1])
        a("--input-len", type=int, nargs="+", default=[1024])
        a("--output-len", type=int, nargs="+", default=[16])
        a("--no-warmup", action="store_true", help="Skip the short warm-up run.")
        a("--output-file", "--result-filename", dest="output_file", type=str, default=None)
        a("--run-name", type=str, default="default")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> BenchArgs:
        return cls(
            batch_size=args.batch_size,
            input_len=args.input_len,
            output_len=args.output_len,
            warmup=not args.no_warmup,
            output_file=args.output_file,
            run_name=args.run_name,
        )


class StaticBatchDriver:
    """One scheduler and one KV pool sized for the largest batch; reused across batch sizes
    (with the radix cache off, every slot is free again once a batch finishes)."""

    def __init__(
        self, runner: ModelRunner, max_batch: int, input_len: int, output_len: int
    ) -> None:
        mc = runner.model_config
        if input_len + output_len > mc.context_length:
            raise ValueError(
                f"input_len + output_len ({input_len + output_len}) exceeds the "
                f"context length ({mc.context_length})"
            )
        cfg = _core.SchedulerConfig()
        cfg.max_total_tokens = max_batch * (input_len + output_len) + 256
        cfg.max_running_requests = max_batch
        cfg.max_prefill_tokens = max_batch * input_len
        cfg.chunked_prefill_size = -1
        cfg.context_length = mc.context_length
        cfg.vocab_size = mc.vocab_size
        cfg.disable_radix_cache = True
        cfg.eos_token_ids = list(mc.eos_token_ids)
        self.runner = runner
        self.sched = _core.Scheduler(cfg)
        runner.init_kv_pool(self.sched.num_slots)
        self.table = table_as_tensor(self.sched.req_to_token())
        self.vocab_size = mc.vocab_size

    def add_batch(self, batch_size: int, input_len: int, output_len: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(batch_size):
            ids = rng.integers(0, self.vocab_size, size=input_len, dtype=np.int32)
            self.sched.add_request(ids, max_new_tokens=output_len, ignore_eos=True)

    def step(self) -> tuple[Any, float]:
        """One scheduled step (schedule, forward, argmax, commit); returns (mode, seconds)."""
        sync(self.runner.device)
        start = time.perf_counter()
        plan = self.sched.schedule()
        if plan.mode == _core.ForwardMode.IDLE:
            return plan.mode, 0.0
        batch = ForwardBatch.from_plan(plan, self.table, self.runner.device)
        logits = self.runner.forward(batch).logits
        next_ids = torch.argmax(logits, dim=-1).to(torch.int32).cpu().numpy()
        self.sched.commit(next_ids)
        sync(self.runner.device)
        return plan.mode, time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(
    driver: StaticBatchDriver, batch_size: int, input_len: int, output_len: int, seed: int = 0
) -> dict[str, Any]:
    """Prefill and decode one static batch; returns latencies (s) and throughputs (tok/s)."""
    driver.add_batch(batch_size, input_len, output_len, seed)
    mode, prefill = driver.step()
    if mode != _core.ForwardMode.EXTEND:
        raise RuntimeError(f"expected one prefill step, got {mode}")
    decodes: list[float] = []
    while not driver.sched.idle():
        mode, seconds = driver.step()
        if mode != _core.ForwardMode.DECODE:
            raise RuntimeError(f"the batch did not fit one prefill step (got {mode} after it)")
        decodes.append(seconds)
    return summarize(batch_size, input_len, output_len, prefill, decodes)


def summarize(
    batch_size: int, input_len: int, output_len: int, prefill: float, decodes: list[float]
) -> dict[str, Any]:
    median = statistics.median(decodes) if decodes else 0.0
    decode_total = sum(decodes)
    total = prefill + decode_total
    return {
        "batch_size": batch_size,
        "input_len": input_len,
        "output_len": output_len,
        "prefill_latency": prefill,
        "prefill_throughput": batch_size * input_len / prefill,
        "decode_steps": len(decodes),
        "median_decode_latency": median,
        "median_decode_throughput": batch_size / median if median else 0.0,
        "decode_throughput": batch_size * len(decodes) / decode_total if decode_total else 0.0,
        "total_latency": total,
        "overall_throughput": batch_size * (input_len + output_len) / total,
    }


def format_result(r: dict[str, Any]) -> str:
    rows = [
        ("Prefill latency (ms)", r["prefill_latency"] * 1e3),
        ("Prefill throughput (tok/s)", r["prefill_throughput"]),
        ("Decode steps", r["decode_steps"]),
        ("Median decode step latency (ms)", r["median_decode_latency"] * 1e3),
        ("Median decode throughput (tok/s)", r["median_decode_throughput"]),
        ("Decode throughput (tok/s)", r["decode_throughput"]),
        ("Total latency (s)", r["total_latency"]),
        ("Overall throughput (tok/s)", r["overall_throughput"]),
    ]
    title = f" bs={r['batch_size']} in={r['input_len']} out={r['output_len']} "
    lines = [f"{title:=^50}"]
    for label, value in rows:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<38} {text}")
    return "\n".join(lines)


def build_runner(server_args: ServerArgs, tp_rank: int = 0,
                 dist_init_method: str | None = None) -> ModelRunner:
    return ModelRunner.from_server_args(server_args, tp_rank=tp_rank,
                                        dist_init_method=dist_init_method)


def run_benchmarks(server_args: ServerArgs, bench: BenchArgs, tp_rank: int = 0,
                   dist_init_method: str | None = None) -> list[dict[str, Any]]:
    """Runs every (batch size, input, output) case; with TP, on rank ``tp_rank`` of a group
    joined through ``dist_init_method`` (only rank 0 prints and writes the results)."""
    runner = build_runner(server_args, tp_rank, dist_init_method)
    report = tp_rank == 0
    driver = StaticBatchDriver(
        runner, max(bench.batch_size), max(bench.input_len), max(bench.output_len)
    )
    if bench.warmup:
        run_once(
            driver,
            bench.batch_size[0],
            bench.input_len[0],
            min(bench.output_len[0], WARMUP_OUTPUT_LEN),
        )
    meta = {
        "bench": "bench_one_batch",
        "run_name": bench.run_name,
        "model_path": server_args.model_path,
        "dtype": str(runner.dtype),
        "device": str(runner.device),
        "load_format": server_args.load_format,
        "num_threads": torch.get_num_threads(),
        "tp_size": runner.tp_size,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_1m": os.getloadavg()[0],
    }
    results = []
    for bs, il, ol in itertools.product(bench.batch_size, bench.input_len, bench.output_len):
        result = {**meta, **run_once(driver, bs, il, ol, seed=bs)}
        results.append(result)
        if report:
            print(format_result(result), flush=True)
            append_jsonl(bench.output_file, result)
    return results


def _run_rank(server_args: ServerArgs, bench: BenchArgs, tp_rank: int, init_method: str) -> None:
    import sys

    import torch.distributed as dist

    from sglang.srt.managers.engine_process import place_rank_process

    place_rank_process(server_args, None)  # its GPU / its share of the CPU threads
    run_benchmarks(server_args, bench, tp_rank, init_method)
    dist.barrier()  # every rank done: none is left waiting on a collective
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the process group's and the interpreter's teardown: gloo's threads torn down there
    # can end a rank with "terminate called without an active exception" after a good run.
    os._exit(0)


def run_tensor_parallel(server_args: ServerArgs, bench: BenchArgs) -> None:
    """--tp-size N: one spawned process per rank; raises when a rank fails."""
    import multiprocessing as mp
    import tempfile

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sglang-bench-") as folder:
        init_method = f"file://{folder}/tp_init"
        procs = [ctx.Process(target=_run_rank, args=(server_args, bench, rank, init_method))
                 for rank in range(server_args.tp_size)]
        for proc in procs:
            proc.start()
        while any(p.is_alive() for p in procs):  # a failed rank ends the others
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
            time.sleep(0.2)
        failed = [rank for rank, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"TP rank(s) {failed} failed; see their output above")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_one_batch", description=__doc__.split("\n")[0]
    )
    ServerArgs.add_cli_args(parser)
    BenchArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    server_args = ServerArgs.from_cli_args(args)
    if server_args.nnodes > 1:
        raise SystemExit("error: bench_one_batch runs on one machine (--nnodes 1)")
    if server_args.tp_size > 1:
        run_tensor_parallel(server_args, BenchArgs.from_cli_args(args))
    else:
        run_benchmarks(server_args, BenchArgs.from_cli_args(args))


if __name__ == "__main__":
    main()
