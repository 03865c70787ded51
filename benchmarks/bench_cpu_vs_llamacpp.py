"""CPU comparison in one run: our runner and server vs HF transformers vs llama.cpp.

All systems serve the same checkpoint (``--model-path``, default the demo alias
``smollm2-135m-instruct``: the Q4_1 GGUF file that ``resolve_model_path`` gives), greedy, with the
same number of threads (``--threads``, default all cores), strictly one system after another:

* ``ours-runner`` / ``baseline-runner``: ``python -m sglang.bench_one_batch`` in a subprocess (bs 1;
  decode tok/s from a short prompt, prefill latency of a ``--ttft-prompt-len`` prompt).
* ``ours-http`` / ``baseline-http``: ``python -m sglang.launch_server`` started here (``--server-args``
  passed through), waited for with ``/health``, killed at the end: bs 1 decode tok/s of one
  streaming ``/generate`` (tokens after the first over the time after the first), TTFT of a
  ``--ttft-prompt-len`` prompt (random ``input_ids``, ``max_new_tokens`` 1, median of
  ``--ttft-repeats`` after one warm-up; every prompt distinct, so the radix cache never hits), and
  output tok/s of ``--concurrency`` concurrent requests (``--conc-prompt-len`` in,
  ``--conc-output-len`` out, ``ignore_eos``).
  The ``baseline-*`` pair runs with ``PYTHONPATH=--baseline-pythonpath`` (an older checkout's
  ``python`` folder, already built); the ``ours-*`` pair with this checkout's ``python`` folder.
* ``hf``: transformers fp32 on the same dequantized weights (``benchmarks/hf_baseline.py``'s
  ``build_model``): bs 1 decode tok/s, TTFT (a one-token ``generate``), and batched ``generate``
  throughput of N identical prompts for each N of ``--concurrency``.
* ``llamacpp``: ``llama_cpp.Llama`` (llama-cpp-python) on the GGUF file: bs 1 decode tok/s (llama's
  own timings when available), TTFT (prompt eval + first token), and the throughput of N requests
  served one after another (llama-cpp-python runs one sequence at a time).

``hf`` and ``llamacpp`` run in a subprocess of this script, so no two thread pools meet.
``--output`` appends one JSON line per (system, metric) with the CPU model, its ISA flags, the
thread count, the date and the git commit. A markdown table (rows: systems; columns: bs 1 decode
tok/s, TTFT, N-concurrent tok/s) is printed at the end. The llama.cpp build command recommended for
this CPU (derived from ``/proc/cpuinfo``; never ``GGML_NATIVE=ON``, whose AMX build crashes on some
VMs) is printed too.

Usage::

    python benchmarks/bench_cpu_vs_llamacpp.py --output build/benchmarks/vs-llamacpp.jsonl
    python benchmarks/bench_cpu_vs_llamacpp.py --systems baseline-runner,baseline-http,hf,llamacpp \\
        --baseline-pythonpath /tmp/base/python
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("ours-runner", "ours-http", "baseline-runner", "baseline-http", "hf", "llamacpp")
FIRST_ID = 100  # random prompts skip the special ids at the start of the vocabulary

# ---- machine description ---------------------------------------------------------------------

ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# (cpuinfo flag, llama.cpp CMake option): the options the recommended build sets
GGML_ISA_OPTIONS = (
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("avx512f", "GGML_AVX512"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def isa_summary(flags: set[str]) -> str:
    return " ".join(f for f in ISA_FLAGS if f in flags) or "unknown"


def llamacpp_cmake_args(flags: set[str]) -> str:
    """CMAKE_ARGS for a portable llama.cpp build that uses this CPU's ISA (no GGML_NATIVE)."""
    parts = ["-DGGML_NATIVE=OFF"]
    parts += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in GGML_ISA_OPTIONS]
    parts += ["-DGGML_BLAS=OFF", "-DLLAMA_CURL=OFF"]
    return " ".join(parts)


def llamacpp_build_command(flags: set[str]) -> str:
    """The pip command that builds llama-cpp-python from source for this CPU (run it with
    ``LLAMA_CPP_CMAKE_ARGS`` set to the same CMAKE_ARGS so this script records the build)."""
    return (
        f'CMAKE_ARGS="{llamacpp_cmake_args(flags)}" CMAKE_BUILD_PARALLEL_LEVEL=2 '
        "nice -n 10 pip install --no-binary llama-cpp-python llama-cpp-python"
    )


def git_commit(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


# ---- shared helpers --------------------------------------------------------------------------


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(FIRST_ID, vocab_size) for _ in range(length)]


def gguf_vocab_size(model_path: str) -> int:
    """Vocabulary size of the checkpoint (through the sglang on ``sys.path``)."""
    from sglang.srt.model_loader.resolve import resolve_model_path

    source = resolve_model_path(model_path)
    if source.is_gguf:
        from sglang.srt.model_loader.gguf_file import gguf_config

        return int(gguf_config(source.path)["vocab_size"])
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(source.folder).vocab_size)


def probe_loader(model_path: str, pythonpath: str) -> int | None:
    """The vocabulary size as the sglang under ``pythonpath`` reads it (in a subprocess), or None
    when that checkout cannot load the model (e.g. a half-rebuilt one)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
        "from bench_cpu_vs_llamacpp import gguf_vocab_size; "
        f"print(gguf_vocab_size({model_path!r}))"
    )
    env = dict(os.environ, PYTHONPATH=pythonpath)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(
            f"  (sglang under {pythonpath} cannot load the model: "
            f"{out.stderr.strip().splitlines()[-1:]})"
        )
        return None
    return int(out.stdout.strip().splitlines()[-1])


def subprocess_env(pythonpath: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def metric(name: str, value: float | None, unit: str, **params: Any) -> dict[str, Any]:
    return {"metric": name, "value": value, "unit": unit, "params": params}


# ---- our runner (bench_one_batch) ------------------------------------------------------------


def bench_runner(args: argparse.Namespace, pythonpath: str, log: Path) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one_batch.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "sglang.bench_one_batch",
            "--model-path",
            args.model_path,
            *shlex.split(args.server_args),
            "--batch-size",
            "1",
            "--input-len",
            str(args.decode_prompt_len),
            str(args.ttft_prompt_len),
            "--output-len",
            str(args.decode_tokens),
            "--output-file",
            str(out),
        ]
        print("  $", shlex.join(cmd), flush=True)
        with open(log, "w") as f:
            proc = subprocess.run(
                cmd,
                env=subprocess_env(pythonpath, args.threads),
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=args.system_timeout,
                check=False,
                cwd=tempfile.gettempdir(),
            )
        if proc.returncode != 0:
            raise RuntimeError(f"bench_one_batch exited with {proc.returncode}; see {log}")
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    short = next(r for r in rows if r["input_len"] == args.decode_prompt_len)
    long = next(r for r in rows if r["input_len"] == args.ttft_prompt_len)
    return [
        metric(
            "decode_tok_s",
            short["decode_throughput"],
            "tok/s",
            prompt_len=args.decode_prompt_len,
            new_tokens=args.decode_tokens,
            how="bench_one_batch bs 1: decode steps / decode time",
        ),
        metric(
            "ttft_ms",
            long["prefill_latency"] * 1e3,
            "ms",
            prompt_len=args.ttft_prompt_len,
            how="bench_one_batch bs 1: the prefill step (no HTTP, no tokenizer)",
        ),
    ]


# ---- our server (HTTP) -----------------------------------------------------------------------


class Server:
    """``python -m sglang.launch_server`` in its own process group; stopped by that group."""

    def __init__(self, args: argparse.Namespace, pythonpath: str, log: Path) -> None:
        self.url = f"http://127.0.0.1:{args.port}"
        cmd = [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            args.model_path,
            "--port",
            str(args.port),
            "--log-level",
            "warning",
            *shlex.split(args.server_args),
        ]
        print("  $", shlex.join(cmd), flush=True)
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=subprocess_env(pythonpath, args.threads),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tempfile.gettempdir(),
        )

    def wait_healthy(self, timeout: float) -> float:
        import requests

        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if requests.get(self.url + "/health", timeout=30).status_code == 200:
                    return time.perf_counter() - start
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not healthy after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        self._log_file.close()


def _generate_body(ids: list[int], new_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True},
        "stream": stream,
    }


def http_stream_decode(url: str, ids: list[int], new_tokens: int) -> tuple[float, int]:
    """(tok/s after the first token, tokens made) of one streaming /generate."""
    import requests

    stamps: list[tuple[float, int]] = []
    body = _generate_body(ids, new_tokens, stream=True)
    with requests.post(url + "/generate", json=body, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines(chunk_size=None):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            stamps.append((time.perf_counter(), int(chunk["meta_info"]["completion_tokens"])))
    if len(stamps) < 2:
        raise RuntimeError(f"stream gave {len(stamps)} chunks")
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9), n1


def http_one(url: str, ids: list[int], new_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one non-streaming /generate."""
    import requests

    start = time.perf_counter()
    resp = requests.post(
        url + "/generate", json=_generate_body(ids, new_tokens, False), timeout=900
    )
    resp.raise_for_status()
    return time.perf_counter() - start, int(resp.json()["meta_info"]["completion_tokens"])


def bench_http(args: argparse.Namespace, pythonpath: str, log: Path) -> list[dict[str, Any]]:
    vocab = args.vocab_size
    server = Server(args, pythonpath, log)
    try:
        startup = server.wait_healthy(args.server_timeout)
        print(f"  server healthy after {startup:.1f} s", flush=True)
        url = server.url
        seed = iter(range(1000, 10**6))  # every prompt distinct: no radix-cache hits
        http_one(url, random_prompt(vocab, args.decode_prompt_len, next(seed)), 8)  # warm-up
        decode, made = http_stream_decode(
            url, random_prompt(vocab, args.decode_prompt_len, next(seed)), args.decode_tokens
        )
        out = [
            metric(
                "decode_tok_s",
                decode,
                "tok/s",
                prompt_len=args.decode_prompt_len,
                new_tokens=made,
                how="one streaming /generate: tokens after the first / time after the first",
            )
        ]
        http_one(url, random_prompt(vocab, args.ttft_prompt_len, next(seed)), 1)  # warm-up
        ttfts = [
            http_one(url, random_prompt(vocab, args.ttft_prompt_len, next(seed)), 1)[0]
            for _ in range(args.ttft_repeats)
        ]
        out.append(
            metric(
                "ttft_ms",
                statistics.median(ttfts) * 1e3,
                "ms",
                prompt_len=args.ttft_prompt_len,
                repeats=args.ttft_repeats,
                how="/generate with max_new_tokens 1, median after one warm-up",
            )
        )
        for n in args.concurrency:
            prompts = [random_prompt(vocab, args.conc_prompt_len, next(seed)) for _ in range(n)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
                start = time.perf_counter()
                results = list(
                    pool.map(lambda ids: http_one(url, ids, args.conc_output_len), prompts)
                )
                wall = time.perf_counter() - start
            tokens = sum(t for _, t in results)
            out.append(
                metric(
                    f"conc{n}_tok_s",
                    tokens / wall,
                    "tok/s",
                    concurrency=n,
                    prompt_len=args.conc_prompt_len,
                    new_tokens=args.conc_output_len,
                    how=f"{n} concurrent /generate (thread pool): output tokens / wall time",
                )
            )
        return out
    finally:
        server.stop()


# ---- workers: HF transformers and llama.cpp (run in a subprocess of this script) ---------------


def worker_hf(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hf_baseline import build_model, prompt_ids, timed_generate

    torch.set_num_threads(args.threads)
    model = build_model(args.model_path, torch.float32)
    vocab = model.config.vocab_size
    timed_generate(model, prompt_ids(vocab, 8, 1, 0), 2)  # warm-up
    ids = prompt_ids(vocab, args.decode_prompt_len, 1, 1)
    prefill = statistics.median(timed_generate(model, ids, 1)[0] for _ in range(2))
    total, made = timed_generate(model, ids, args.decode_tokens)
    out = [
        metric(
            "decode_tok_s",
            (made - 1) / max(total - prefill, 1e-9),
            "tok/s",
            prompt_len=args.decode_prompt_len,
            new_tokens=made,
            how="generate bs 1: (tokens - 1) / (time - one-token generate time)",
        )
    ]
    timed_generate(model, prompt_ids(vocab, args.ttft_prompt_len, 1, 2), 1)  # warm-up
    ttfts = [
        timed_generate(model, prompt_ids(vocab, args.ttft_prompt_len, 1, 3 + i), 1)[0]
        for i in range(args.ttft_repeats)
    ]
    out.append(
        metric(
            "ttft_ms",
            statistics.median(ttfts) * 1e3,
            "ms",
            prompt_len=args.ttft_prompt_len,
            repeats=args.ttft_repeats,
            how="one-token generate, median after one warm-up",
        )
    )
    for n in args.concurrency:
        ids = prompt_ids(vocab, args.conc_prompt_len, n, 100 + n)
        total, made = timed_generate(model, ids, args.conc_output_len)
        out.append(
            metric(
                f"conc{n}_tok_s",
                n * made / total,
                "tok/s",
                concurrency=n,
                prompt_len=args.conc_prompt_len,
                new_tokens=made,
                how=f"one batched generate of {n} identical prompts: output tokens / time",
            )
        )
    return out


def _llama_perf(llm: Any) -> dict[str, float] | None:
    """llama.cpp's own context timings (ms and token counts), when this binding has them."""
    import llama_cpp

    fn = getattr(llama_cpp, "llama_perf_context", None)
    ctx = getattr(getattr(llm, "_ctx", None), "ctx", None)
    if fn is None or ctx is None:
        return None
    try:
        d = fn(ctx)
        return {
            "t_p_eval_ms": d.t_p_eval_ms,
            "n_p_eval": d.n_p_eval,
            "t_eval_ms": d.t_eval_ms,
            "n_eval": d.n_eval,
        }
    except Exception:  # noqa: BLE001 - older/newer bindings: fall back to wall clock
        return None


def _llama_perf_reset(llm: Any) -> None:
    import llama_cpp

    fn = getattr(llama_cpp, "llama_perf_context_reset", None)
    ctx = getattr(getattr(llm, "_ctx", None), "ctx", None)
    if fn is not None and ctx is not None:
        fn(ctx)


def _llama_run(llm: Any, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """Greedy generation of exactly ``new_tokens`` tokens (EOS is not a stop here) from a fresh
    context; (seconds to the first token, total seconds)."""
    llm.reset()
    start = time.perf_counter()
    first = 0.0
    tokens = llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True)
    for made, _ in enumerate(tokens, start=1):
        if made == 1:
            first = time.perf_counter() - start
        if made >= new_tokens:
            break
    return first, time.perf_counter() - start


def worker_llamacpp(args: argparse.Namespace) -> list[dict[str, Any]]:
    import llama_cpp
    from sglang.srt.model_loader.resolve import resolve_model_path

    source = resolve_model_path(args.model_path)
    if not source.is_gguf:
        raise ValueError(f"llama.cpp needs a GGUF file; {args.model_path!r} is not one")
    llm = llama_cpp.Llama(
        model_path=source.path,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=2048,
        n_batch=512,
        verbose=False,
    )
    vocab = llm.n_vocab()
    _llama_run(llm, random_prompt(vocab, 8, 0), 4)  # warm-up
    _llama_perf_reset(llm)
    first, total = _llama_run(
        llm, random_prompt(vocab, args.decode_prompt_len, 1), args.decode_tokens
    )
    perf = _llama_perf(llm)
    if perf and perf["n_eval"] > 0 and perf["t_eval_ms"] > 0:
        decode = perf["n_eval"] / (perf["t_eval_ms"] / 1e3)
        how = f"llama.cpp timings: {perf['n_eval']} evals / t_eval"
    else:
        decode = (args.decode_tokens - 1) / max(total - first, 1e-9)
        how = "wall clock: tokens after the first / time after the first"
    out = [
        metric(
            "decode_tok_s",
            decode,
            "tok/s",
            prompt_len=args.decode_prompt_len,
            new_tokens=args.decode_tokens,
            how=how,
            llama_perf=perf,
            system_info=llama_cpp.llama_print_system_info().decode().strip(),
        )
    ]
    _llama_run(llm, random_prompt(vocab, args.ttft_prompt_len, 2), 1)  # warm-up
    ttfts = [
        _llama_run(llm, random_prompt(vocab, args.ttft_prompt_len, 3 + i), 1)[0]
        for i in range(args.ttft_repeats)
    ]
    out.append(
        metric(
            "ttft_ms",
            statistics.median(ttfts) * 1e3,
            "ms",
            prompt_len=args.ttft_prompt_len,
            repeats=args.ttft_repeats,
            how="prompt eval + first token (wall clock), median after one warm-up",
        )
    )
    for n in args.concurrency:
        start = time.perf_counter()
        for i in range(n):
            ids = random_prompt(vocab, args.conc_prompt_len, 100 * n + i)
            _llama_run(llm, ids, args.conc_output_len)
        wall = time.perf_counter() - start
        out.append(
            metric(
                f"conc{n}_tok_s",
                n * args.conc_output_len / wall,
                "tok/s",
                concurrency=n,
                prompt_len=args.conc_prompt_len,
                new_tokens=args.conc_output_len,
                how=f"{n} requests served SEQUENTIALLY (llama-cpp-python runs one sequence at a "
                "time): output tokens / wall time",
            )
        )
    return out


WORKERS = {"hf": worker_hf, "llamacpp": worker_llamacpp}


def run_worker(args: argparse.Namespace, system: str, log: Path) -> list[dict[str, Any]]:
    """Run ``system``'s worker in a subprocess of this script (this checkout's sglang)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            system,
            "--worker-out",
            str(out),
            "--model-path",
            args.model_path,
            "--threads",
            str(args.threads),
            "--decode-tokens",
            str(args.decode_tokens),
            "--decode-prompt-len",
            str(args.decode_prompt_len),
            "--ttft-prompt-len",
            str(args.ttft_prompt_len),
            "--ttft-repeats",
            str(args.ttft_repeats),
            "--concurrency",
            *map(str, args.concurrency),
            "--conc-prompt-len",
            str(args.conc_prompt_len),
            "--conc-output-len",
            str(args.conc_output_len),
        ]
        with open(log, "w") as f:
            proc = subprocess.run(
                cmd,
                env=subprocess_env(args.helper_pythonpath, args.threads),
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=args.system_timeout,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"{system} worker exited with {proc.returncode}; see {log}")
        return json.loads(out.read_text())


def llamacpp_info() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        version = dist_version("llama_cpp_python")
    except PackageNotFoundError:
        version = "unknown"
    return {
        "llama_cpp_version": version,
        "llama_cpp_cmake_args": os.environ.get("LLAMA_CPP_CMAKE_ARGS", "unknown"),
    }


# ---- the table ---------------------------------------------------------------------------------


def format_table(
    results: dict[str, dict[str, float | None]], concurrency: list[int], ttft_prompt_len: int
) -> str:
    cols = ["decode_tok_s", "ttft_ms", *(f"conc{n}_tok_s" for n in concurrency)]
    heads = [
        "system",
        "bs1 decode tok/s",
        f"TTFT {ttft_prompt_len} ms",
        *(f"{n}-conc tok/s" for n in concurrency),
    ]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for system, row in results.items():
        cells = [system]
        for c in cols:
            v = row.get(c)
            cells.append("n/a" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_table(rounds: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float | None]]:
    """Each (system, metric)'s median over the rounds that measured it."""
    return {
        system: {metric: statistics.median(values) for metric, values in metrics.items()}
        for system, metrics in rounds.items()
    }


TABLE_NOTES = {
    "ours-runner": "runner rows: bench_one_batch (no HTTP); TTFT = the prefill step alone",
    "baseline-runner": "runner rows: bench_one_batch (no HTTP); TTFT = the prefill step alone",
    "hf": "hf: transformers fp32 on the dequantized weights; N-conc = one batched generate of N "
    "identical prompts",
    "llamacpp": "llamacpp: N-conc = N requests served one after another (llama-cpp-python serves "
    "one sequence at a time)",
}


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", default="smollm2-135m-instruct")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"Comma-separated subset of {', '.join(SYSTEMS)}.",
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument(
        "--decode-prompt-len",
        type=int,
        default=16,
        help="Prompt length of the bs 1 decode measurement.",
    )
    p.add_argument("--ttft-prompt-len", type=int, default=512)
    p.add_argument("--ttft-repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    p.add_argument("--conc-prompt-len", type=int, default=128)
    p.add_argument("--conc-output-len", type=int, default=64)
    p.add_argument(
        "--baseline-pythonpath",
        default=None,
        help="An older checkout's python folder (already built) for baseline-*.",
    )
    p.add_argument(
        "--server-args",
        default="",
        help="Extra flags for our server and runner, e.g. '--dtype auto'.",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Run the whole system list this many times, interleaved (A B A B ...), and report "
        "each metric's median over the rounds: the dev VMs drift +-20%% over minutes.",
    )
    p.add_argument("--port", type=int, default=30171)
    p.add_argument("--server-timeout", type=float, default=600)
    p.add_argument("--system-timeout", type=float, default=1200)
    p.add_argument("--output", default=None, help="Append one JSON line per (system, metric).")
    p.add_argument("--log-dir", default=None, help="Logs of the subprocesses (default: a tmp dir).")
    p.add_argument("--worker", choices=sorted(WORKERS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args)
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_vs_llamacpp_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ours_path = str(ROOT / "python")
    # hf and llamacpp use this checkout's model loader (to resolve the model and dequantize the
    # weights), the baseline's when this checkout cannot load it (others may be rebuilding it)
    candidates = [ours_path] + ([args.baseline_pythonpath] if args.baseline_pythonpath else [])
    args.helper_pythonpath, args.vocab_size = ours_path, None
    for candidate in candidates:
        args.vocab_size = probe_loader(args.model_path, candidate)
        if args.vocab_size is not None:
            args.helper_pythonpath = candidate
            break
    if args.vocab_size is None:
        raise SystemExit(f"no sglang in {candidates} can load {args.model_path!r}")
    meta = {
        "bench": "bench_cpu_vs_llamacpp",
        "model_path": args.model_path,
        "cpu_model": cpu_model(cpuinfo),
        "isa": isa_summary(flags),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(ROOT),
        "server_args": args.server_args,
    }
    print(f"CPU: {meta['cpu_model']} ({os.cpu_count()} cores); ISA: {meta['isa']}")
    print(f"threads {args.threads}; commit {meta['git_commit']}; logs in {log_dir}")
    print(f"model loader for hf/llamacpp: {args.helper_pythonpath}; vocab {args.vocab_size}")
    print("llama.cpp build recommended for this CPU (then run this script with the same")
    print("CMAKE_ARGS in LLAMA_CPP_CMAKE_ARGS):\n  " + llamacpp_build_command(flags))

    rounds: dict[str, dict[str, list[float]]] = {}  # system -> metric -> one value per round
    failed: dict[str, str] = {}
    for system, rnd in ((s, r) for r in range(max(1, args.rounds)) for s in wanted):
        if system in failed:
            continue
        extra: dict[str, Any] = {}
        if system.startswith("baseline") and not args.baseline_pythonpath:
            failed[system] = "skipped: no --baseline-pythonpath"
            print(f"\n=== {system}: {failed[system]}")
            continue
        if system == "llamacpp":
            if importlib.util.find_spec("llama_cpp") is None:
                failed[system] = "skipped: llama_cpp (llama-cpp-python) is not installed"
                print(f"\n=== {system}: {failed[system]}")
                continue
            extra = llamacpp_info()
        pythonpath = args.baseline_pythonpath if system.startswith("baseline") else ours_path
        if system in WORKERS:
            extra["loader_pythonpath"] = args.helper_pythonpath
        if system.startswith(("ours", "baseline")):
            extra = {"code_commit": git_commit(Path(pythonpath)), "pythonpath": pythonpath}
        print(
            f"\n=== {system}, round {rnd + 1} (load average {os.getloadavg()[0]:.2f}) ===",
            flush=True,
        )
        log = log_dir / f"{system}.log"
        start = time.perf_counter()
        try:
            if system.endswith("-runner"):
                rows = bench_runner(args, pythonpath, log)
            elif system.endswith("-http"):
                rows = bench_http(args, pythonpath, log)
            else:
                rows = run_worker(args, system, log)
        except Exception as exc:  # noqa: BLE001 - report, go on with the next system
            failed[system] = f"failed: {type(exc).__name__}: {exc}"
            print(f"  !!! {failed[system]}", flush=True)
            continue
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
        for row in rows:
            rounds.setdefault(system, {}).setdefault(row["metric"], []).append(row["value"])
            print(f"  {row['metric']:<14} {row['value']:10.2f} {row['unit']}", flush=True)
            if args.output:
                record = {
                    **meta,
                    "system": system,
                    **extra,
                    **row,
                    "round": rnd + 1,
                    "loadavg_1m": os.getloadavg()[0],
                }
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                with open(args.output, "a") as f:
                    f.write(json.dumps(record) + "\n")

    print(
        f"\n{meta['model_path']} on {meta['cpu_model']}, {args.threads} threads, "
        f"{meta['date']}, commit {meta['git_commit']}\n"
    )
    table = median_table(rounds)
    print(format_table(table, args.concurrency, args.ttft_prompt_len))
    if args.rounds > 1:
        print(f"\nmedians over {args.rounds} interleaved rounds; every round:")
        for system, metrics in rounds.items():
            for metric, values in metrics.items():
                print(f"  {system:<16} {metric:<14} " + "  ".join(f"{v:.1f}" for v in values))
    notes = sorted({TABLE_NOTES[s] for s in table if s in TABLE_NOTES})
    if "llamacpp" in table:
        info = llamacpp_info()
        notes.append(
            f"llama-cpp-python {info['llama_cpp_version']}, "
            f"CMAKE_ARGS: {info['llama_cpp_cmake_args']}"
        )
    for note in notes:
        print(f"- {note}")
    for system, why in failed.items():
        print(f"- {system}: {why}")
    return 1 if any(w.startswith("failed") for w in failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
