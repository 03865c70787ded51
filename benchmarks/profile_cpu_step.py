"""Where the time of one CPU step goes: a decode step and a prefill step of the model runner.

Runs the ``bench_one_batch`` driver (scheduler + ModelRunner, no HTTP) on one static batch and
reports, per phase (prefill of ``--input-len`` tokens, median of ``--decode-steps`` decode steps):

* the step's wall time split into scheduling (``Scheduler.schedule`` + ``commit``), building the
  ForwardBatch, the forward pass, and picking the next token;
* inside the forward pass, torch.profiler's self CPU time grouped into categories (matmuls,
  attention, norms, RoPE / activations / elementwise, gathers and scatters, other ops), and the gap
  between the forward pass's wall time and the sum of op times: Python and dispatch overhead.

Usage::

    python benchmarks/profile_cpu_step.py --model-path smollm2-135m-instruct --batch-size 1 \\
        --input-len 512 --decode-steps 10 [--server-args "--quantization gguf"] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from sglang import _core
from sglang.bench_one_batch import StaticBatchDriver
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs
from sglang.utils import cpu_model_name

# Category of an op, by substring of its profiler name (first match wins).
CATEGORIES = (
    ("decoder layers in C++", ("decode_layers",)),
    ("matmul", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "quant_matmul")),
    ("attention", ("scaled_dot_product", "attention", "_flash", "_attend")),
    ("norm", ("rms_norm", "layer_norm")),
    ("gather/scatter", ("index_select", "index_copy", "embedding", "masked_fill", "gather")),
    (
        "rope/act/elementwise",
        ("aten::mul", "aten::add", "aten::sub", "silu", "aten::cat", "rope", "aten::copy_"),
    ),
)


# Our kernels are pybind11 calls that torch.profiler does not see: time them as named ranges.
INSTRUMENTED = (
    ("sglang.srt.layers.quantization.kernels", "_quant_matmul_impl", "sglang::quant_matmul"),
    ("sglang.srt.layers.cpu_ops", "rms_norm", "sglang::rms_norm"),
    ("sglang.srt.layers.cpu_ops", "fused_add_rms_norm_", "sglang::fused_add_rms_norm"),
    ("sglang.srt.layers.cpu_ops", "silu_and_mul", "sglang::silu_and_mul"),
    (
        "sglang.srt.layers.attention.cpu_backend",
        "CpuAttnBackend.forward_rope",
        "sglang::rope+attention",
    ),
    ("sglang.srt.layers.decode_layers_cpu", "FusedDecodeLayers.run", "sglang::decode_layers"),
    ("sglang.srt.layers.quantization.weights", "QuantWeight._gemv", "sglang::quant_matmul (gemv)"),
)


def instrument() -> None:
    """Wrap the kernel adapters in ``record_function`` (this script only)."""
    import importlib

    for module_name, attr, label in INSTRUMENTED:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        fn = getattr(owner, name, None)
        if fn is None:
            continue

        def wrapped(*a: Any, __fn: Any = fn, __label: str = label, **kw: Any) -> Any:
            with torch.profiler.record_function(__label):
                return __fn(*a, **kw)

        setattr(owner, name, wrapped)
        # Modules that imported the function by name keep the original: patch them too.
        for mod in list(sys.modules.values()):
            if mod is not None and getattr(mod, name, None) is fn and mod is not owner:
                setattr(mod, name, wrapped)


def category(name: str) -> str:
    for cat, keys in CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other ops"


class PhaseTimer:
    """Wall time of the step's phases, accumulated over the steps of one profile."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    def step(self, driver: StaticBatchDriver) -> Any:
        t0 = time.perf_counter()
        plan = driver.sched.schedule()
        if plan.mode == _core.ForwardMode.IDLE:
            return plan.mode
        t1 = time.perf_counter()
        batch = ForwardBatch.from_plan(plan, driver.table, driver.runner.device)
        t2 = time.perf_counter()
        logits = driver.runner.forward(batch).logits
        t3 = time.perf_counter()
        next_ids = torch.argmax(logits, dim=-1).to(torch.int32).numpy()
        t4 = time.perf_counter()
        driver.sched.commit(next_ids)
        t5 = time.perf_counter()
        for name, dt in (
            ("schedule+commit", (t1 - t0) + (t5 - t4)),
            ("build ForwardBatch", t2 - t1),
            ("forward", t3 - t2),
            ("argmax", t4 - t3),
            ("step", t5 - t0),
        ):
            self.times[name].append(dt)
        return plan.mode


def op_breakdown(prof: torch.profiler.profile, steps: int) -> dict[str, float]:
    """Self CPU ms per category, per step."""
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.key.startswith("ProfilerStep") or evt.key.startswith("## "):
            continue
        totals[category(evt.key)] += evt.self_cpu_time_total / 1e3 / steps
    return dict(totals)


def top_ops(prof: torch.profiler.profile, steps: int, n: int = 12) -> list[tuple[str, float, int]]:
    events = [e for e in prof.key_averages() if not e.key.startswith("## ")]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in events[:n]]


def drain(driver: StaticBatchDriver) -> None:
    while not driver.sched.idle():
        driver.step()


def profile_phase(
    driver: StaticBatchDriver, steps: int, label: str, prepare: Any
) -> dict[str, Any]:
    """Profile ``steps`` steps, then time them again without the profiler (its own overhead
    inflates small ops); ``prepare()`` runs before each of the two passes (untimed)."""
    timer = PhaseTimer()
    prepare()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            timer.step(driver)
    with_prof = {k: statistics.median(v) * 1e3 for k, v in timer.times.items()}
    plain = PhaseTimer()
    prepare()
    for _ in range(steps):
        plain.step(driver)
    phases = {k: statistics.median(v) * 1e3 for k, v in plain.times.items()}
    ops = op_breakdown(prof, steps)
    op_sum = sum(ops.values())
    return {
        "phase": label,
        "phases_ms": phases,
        "forward_ms_profiled": with_prof["forward"],
        "ops_ms": ops,
        "op_sum_ms": op_sum,
        "overhead_ms": max(0.0, with_prof["forward"] - op_sum),
        "top_ops": top_ops(prof, steps),
    }


def print_phase(r: dict[str, Any]) -> None:
    print(f"\n=== {r['phase']} ===")
    for k, v in r["phases_ms"].items():
        print(f"  {k:<22} {v:8.2f} ms")
    fwd = r["forward_ms_profiled"]
    print(f"  -- forward under the profiler: {fwd:.2f} ms; ops:")
    for k, v in sorted(r["ops_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:<22} {v:8.2f} ms  {100 * v / fwd:5.1f}%")
    print(
        f"  {'python/dispatch gap':<22} {r['overhead_ms']:8.2f} ms  {100 * r['overhead_ms'] / fwd:5.1f}%"
    )
    print("  top ops (self ms per step, calls per step):")
    for name, ms, calls in r["top_ops"]:
        print(f"    {name[:48]:<48} {ms:8.3f} {calls:5d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", default="smollm2-135m-instruct")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=10)
    p.add_argument("--server-args", default="", help="extra ServerArgs flags, one string")
    p.add_argument("--json", default=None, help="append the result as one JSON line")
    args = p.parse_args()
    argv = ["--model-path", args.model_path, "--device", "cpu", *shlex.split(args.server_args)]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(argv))
    runner = ModelRunner.from_server_args(server_args)
    instrument()
    bs, il, steps = args.batch_size, args.input_len, args.decode_steps
    driver = StaticBatchDriver(runner, bs, il, steps + 8)

    def new_batch(output_len: int) -> None:
        drain(driver)
        driver.add_batch(bs, il, output_len, seed=len(driver.runner.model_config.eos_token_ids))

    def decoding_batch() -> None:
        new_batch(steps + 4)
        driver.step()  # its prefill, untimed

    new_batch(4)  # warm-up: allocator and lazy initialisation
    drain(driver)
    prefill = profile_phase(driver, 1, f"prefill bs={bs} x {il} tokens", lambda: new_batch(4))
    decode = profile_phase(driver, steps, f"decode bs={bs} at context {il}", decoding_batch)
    header = {
        "cpu": cpu_model_name(),
        "isa": getattr(_core, "cpu_isa", lambda: "n/a (before ISA dispatch)")(),
        "threads": torch.get_num_threads(),
        "dtype": str(runner.dtype),
        "server_args": args.server_args,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_1m": os.getloadavg()[0],
    }
    print(json.dumps(header))
    for r in (prefill, decode):
        print_phase(r)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({**header, "prefill": prefill, "decode": decode}) + "\n")


if __name__ == "__main__":
    main()
