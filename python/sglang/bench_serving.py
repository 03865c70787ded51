"""Online serving benchmark: ``python -m sglang.bench_serving`` (flags as in SGLang's).

Builds a list of requests (``random``: prompts of uniformly random token ids; ``generated-shared-
prefix``: groups of prompts sharing a long random system prompt), sends them to a running server
over HTTP with streaming (``--backend sglang``: ``POST /generate`` with ``input_ids``;
``sglang-oai``: ``POST /v1/completions`` with the same token ids as the prompt;
``sglang-oai-chat``: ``POST /v1/chat/completions`` with the decoded text as one user message;
``vllm``: ``POST /v1/completions`` with the decoded text), at a Poisson
``--request-rate`` and at most ``--max-concurrency`` in flight, and times every streamed chunk.
The per-request timings go to ``calculate_metrics`` (TTFT, TPOT, ITL, E2E latency, throughputs),
which is printed as a table and returned by ``run_benchmark(args)``; ``--output-file`` appends it
as one JSON line.

Usage::

    python -m sglang.bench_serving --backend sglang --dataset-name random --num-prompts 32 \\
        --random-input-len 128 --random-output-len 64 --max-concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sglang.utils import append_jsonl

AIOHTTP_TIMEOUT_S = 6 * 60 * 60
READ_BUFSIZE = 10 * 1024**2
WARMUP_MAX_OUTPUT = 16


# ---- data -----------------------------------------------------------------------------------------
@dataclass
class DatasetRow:
    """One request to send: the prompt as token ids and as text (text may be None until needed)."""

    input_ids: list[int]
    output_len: int
    prompt: str | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)


@dataclass
class RequestOutput:
    """What one request measured. Times are seconds; ``itl`` has one entry per token after the
    first (a chunk carrying n tokens contributes n equal shares of its gap)."""

    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    start_time: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


class StreamTimer:
    """Turns (arrival time, tokens received so far) events of one stream into TTFT and ITLs."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.last = start
        self.tokens = 0
        self.ttft = 0.0
        self.itl: list[float] = []

    def on_tokens(self, now: float, total_tokens: int) -> None:
        new = total_tokens - self.tokens
        if new <= 0:
            return
        if self.tokens == 0:
            self.ttft = now - self.start
        else:
            self.itl.extend([(now - self.last) / new] * new)
        self.tokens = total_tokens
        self.last = now


# ---- datasets -------------------------------------------------------------------------------------
def usable_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids of the base vocabulary, special tokens excluded."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = np.arange(int(tokenizer.vocab_size), dtype=np.int64)
    if special:
        ids = ids[~np.isin(ids, np.fromiter(special, dtype=np.int64))]
    return ids


def sample_lengths(rng: np.random.Generator, n: int, length: int, range_ratio: float) -> np.ndarray:
    """``n`` lengths uniform in ``[max(1, int(length * range_ratio)), length]`` (SGLang's rule)."""
    low = max(1, int(length * range_ratio))
    high = max(low, length)
    return rng.integers(low, high + 1, size=n)


def random_ids(rng: np.random.Generator, vocab: np.ndarray, n: int) -> list[int]:
    return rng.choice(vocab, size=int(n)).tolist()


def sample_random_requests(
    tokenizer: Any,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    seed: int,
) -> list[DatasetRow]:
    """Prompts of token ids drawn uniformly from the vocabulary, lengths per ``sample_lengths``."""
    rng = np.random.default_rng(seed)
    vocab = usable_token_ids(tokenizer)
    in_lens = sample_lengths(rng, num_prompts, input_len, range_ratio)
    out_lens = sample_lengths(rng, num_prompts, output_len, range_ratio)
    return [
        DatasetRow(input_ids=random_ids(rng, vocab, i), output_len=int(o))
        for i, o in zip(in_lens, out_lens)
    ]


def sample_generated_shared_prefix_requests(
    tokenizer: Any,
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int,
) -> list[DatasetRow]:
    """``num_groups`` random system prompts, each followed by ``prompts_per_group`` random
    questions; shuffled, as SGLang does. Prompts of a group share the system prompt's ids
    exactly; for text backends the prompt is ``decode(system) + " " + decode(question)``."""
    rng = np.random.default_rng(seed)
    vocab = usable_token_ids(tokenizer)
    rows = []
    for _ in range(num_groups):
        system = random_ids(rng, vocab, system_prompt_len)
        system_text = None
        for _ in range(prompts_per_group):
            question = random_ids(rng, vocab, question_len)
            if hasattr(tokenizer, "decode"):
                system_text = system_text or tokenizer.decode(system)
                text = system_text + " " + tokenizer.decode(question)
            else:
                text = None
            rows.append(DatasetRow(input_ids=system + question, output_len=output_len, prompt=text))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def build_dataset(args: argparse.Namespace, tokenizer: Any) -> list[DatasetRow]:
    if args.dataset_name == "random":
        return sample_random_requests(
            tokenizer,
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.seed,
        )
    if args.dataset_name == "generated-shared-prefix":
        return sample_generated_shared_prefix_requests(
            tokenizer,
            args.gsp_num_groups,
            args.gsp_prompts_per_group,
            args.gsp_system_prompt_len,
            args.gsp_question_len,
            args.gsp_output_len,
            args.seed,
        )
    raise ValueError(f"unknown --dataset-name {args.dataset_name!r}")


def ensure_text(rows: list[DatasetRow], tokenizer: Any) -> None:
    """Fill ``prompt`` (decoded ids) for the text backends."""
    for row in rows:
        if row.prompt is None:
            row.prompt = tokenizer.decode(row.input_ids)


# ---- metrics --------------------------------------------------------------------------------------
def _stats(values: list[float], name: str, percentiles: tuple[int, ...] = (99,)) -> dict:
    arr = np.asarray(values if values else [0.0], dtype=np.float64) * 1000.0
    out = {
        f"mean_{name}_ms": float(np.mean(arr)),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(np.std(arr)),
    }
    for p in percentiles:
        out[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def tpot(out: RequestOutput) -> float | None:
    """Time per output token after the first, or None for single-token outputs."""
    if out.output_len <= 1:
        return None
    return (out.latency - out.ttft) / (out.output_len - 1)


def token_throughputs(completed: int, total_in: int, total_out: int, duration: float
                      ) -> dict[str, Any]:
    """SGLang's count and throughput fields of a run."""
    dur = max(duration, 1e-9)
    return {
        "duration": duration,
        "completed": completed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": completed / dur,
        "input_throughput": total_in / dur,
        "output_throughput": total_out / dur,
        "total_throughput": (total_in + total_out) / dur,
    }


def calculate_metrics(outputs: list[RequestOutput], duration: float) -> dict[str, Any]:
    """Aggregate metrics (SGLang's names); failed requests count only in ``failed``."""
    ok = [o for o in outputs if o.success]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_len for o in ok)
    dur = max(duration, 1e-9)
    tpots = [t for t in (tpot(o) for o in ok) if t is not None]
    itls = [x for o in ok for x in o.itl]
    e2e = [o.latency for o in ok]
    metrics = token_throughputs(len(ok), total_in, total_out, duration)
    metrics["failed"] = len(outputs) - len(ok)
    metrics["concurrency"] = float(np.sum(e2e)) / dur if e2e else 0.0
    metrics.update(_stats([o.ttft for o in ok], "ttft"))
    metrics.update(_stats(tpots, "tpot"))
    metrics.update(_stats(itls, "itl", (95, 99)))
    metrics["max_itl_ms"] = float(max(itls) * 1000.0) if itls else 0.0
    metrics.update(_stats(e2e, "e2e_latency"))
    return metrics


_TABLE: list[tuple[str | None, str, str]] = [
    (None, "Successful requests:", "completed"),
    (None, "Failed requests:", "failed"),
    (None, "Benchmark duration (s):", "duration"),
    (None, "Total input tokens:", "total_input_tokens"),
    (None, "Total generated tokens:", "total_output_tokens"),
    (None, "Request throughput (req/s):", "request_throughput"),
    (None, "Input token throughput (tok/s):", "input_throughput"),
    (None, "Output token throughput (tok/s):", "output_throughput"),
    (None, "Total token throughput (tok/s):", "total_throughput"),
    (None, "Concurrency:", "concurrency"),
    ("End-to-End Latency", "Mean E2E Latency (ms):", "mean_e2e_latency_ms"),
    (None, "Median E2E Latency (ms):", "median_e2e_latency_ms"),
    (None, "P99 E2E Latency (ms):", "p99_e2e_latency_ms"),
    ("Time to First Token", "Mean TTFT (ms):", "mean_ttft_ms"),
    (None, "Median TTFT (ms):", "median_ttft_ms"),
    (None, "P99 TTFT (ms):", "p99_ttft_ms"),
    ("Time per Output Token (excl. 1st token)", "Mean TPOT (ms):", "mean_tpot_ms"),
    (None, "Median TPOT (ms):", "median_tpot_ms"),
    (None, "P99 TPOT (ms):", "p99_tpot_ms"),
    ("Inter-token Latency", "Mean ITL (ms):", "mean_itl_ms"),
    (None, "Median ITL (ms):", "median_itl_ms"),
    (None, "P95 ITL (ms):", "p95_itl_ms"),
    (None, "P99 ITL (ms):", "p99_itl_ms"),
    (None, "Max ITL (ms):", "max_itl_ms"),
]


def format_table(result: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return f"{value:<10.2f}" if isinstance(value, float) else f"{value!s:<10}"

    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]
    for label, key in (
        ("Backend:", "backend"),
        ("Dataset:", "dataset_name"),
        ("Traffic request rate:", "request_rate"),
        ("Max request concurrency:", "max_concurrency"),
    ):
        value = result.get(key)
        lines.append(f"{label:<40} {cell('not set' if value is None else value)}")
    for section, label, key in _TABLE:
        if section is not None:
            lines.append("{s:{c}^{n}}".format(s=section, n=50, c="-"))
        lines.append(f"{label:<40} {cell(result[key])}")
    lines.append("=" * 50)
    return "\n".join(lines)


# ---- HTTP -----------------------------------------------------------------------------------------
@dataclass
class Target:
    backend: str
    base_url: str
    model: str | None
    ignore_eos: bool
    extra_body: dict[str, Any]

    @property
    def api_url(self) -> str:
        return self.base_url + BACKEND_PATHS[self.backend]


BACKEND_PATHS = {"sglang": "/generate", "sglang-oai": "/v1/completions",
                 "sglang-oai-chat": "/v1/chat/completions", "vllm": "/v1/completions"}
# The SGLang OpenAI backends count the streamed tokens as the native one does (the server's
# running completion_tokens, per chunk); vLLM's completions are counted by chunks and usage.
SGLANG_STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


async def sse_events(response: Any) -> AsyncIterator[dict[str, Any]]:
    """JSON payloads of an SSE stream (``data: {...}`` lines), stopping at ``[DONE]``."""
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        body = line[5:].strip()
        if body == b"[DONE]":
            return
        yield json.loads(body)


def generate_payload(target: Target, row: DatasetRow, output_len: int) -> dict[str, Any]:
    params = {"temperature": 0.0, "max_new_tokens": output_len, "ignore_eos": target.ignore_eos}
    return {
        "input_ids": row.input_ids,
        "sampling_params": params,
        "stream": True,
        **target.extra_body,
    }


def completions_payload(target: Target, row: DatasetRow, output_len: int) -> dict[str, Any]:
    """``/v1/completions``: ``sglang-oai`` sends the row's token ids (the native backend's exact
    prompt), ``vllm`` its text."""
    sglang = target.backend == "sglang-oai"
    return {
        "model": target.model,
        "prompt": row.input_ids if sglang else row.prompt,
        "temperature": 0.0,
        "max_tokens": output_len,
        "stream": True,
        "ignore_eos": target.ignore_eos,
        "stream_options": SGLANG_STREAM_OPTIONS if sglang else {"include_usage": True},
        **target.extra_body,
    }


def chat_payload(target: Target, row: DatasetRow, output_len: int) -> dict[str, Any]:
    """``/v1/chat/completions``: the row's text as one user message (the chat template adds its
    tokens to the prompt: ``prompt_len`` is the server's ``usage.prompt_tokens``)."""
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": row.prompt}],
        "temperature": 0.0,
        "max_tokens": output_len,
        "stream": True,
        "ignore_eos": target.ignore_eos,
        "stream_options": SGLANG_STREAM_OPTIONS,
        **target.extra_body,
    }


def _chunk_error(data: dict[str, Any]) -> str | None:
    err = data.get("error")
    if err is None:
        return None
    return err.get("message", str(err)) if isinstance(err, dict) else str(err)


async def _read_generate(response: Any, timer: StreamTimer, out: RequestOutput) -> None:
    async for data in sse_events(response):
        if (err := _chunk_error(data)) is not None:
            raise RuntimeError(err)
        meta = data.get("meta_info") or {}
        completion = int(meta.get("completion_tokens", timer.tokens))
        timer.on_tokens(time.perf_counter(), completion)
        out.prompt_len = int(meta.get("prompt_tokens", out.prompt_len))
    out.output_len = timer.tokens


def _completion_delta(choice: dict[str, Any]) -> str:
    return choice.get("text") or ""


def _chat_delta(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


async def _read_openai(response: Any, timer: StreamTimer, out: RequestOutput,
                       delta_of: Callable[[dict[str, Any]], str]) -> None:
    """An OpenAI stream: a chunk with ``usage`` (continuous usage stats) counts the server's
    completion tokens so far, as ``/generate``'s chunks do; without it each chunk with new text
    counts one token. The last usage seen gives the output and prompt lengths."""
    chunks = 0
    usage: dict[str, Any] = {}
    async for data in sse_events(response):
        if (err := _chunk_error(data)) is not None:
            raise RuntimeError(err)
        choices = data.get("choices") or []
        usage = data.get("usage") or usage
        if not choices:
            continue
        if data.get("usage"):
            timer.on_tokens(time.perf_counter(), int(usage.get("completion_tokens", 0)))
        elif delta_of(choices[0]):
            chunks += 1
            timer.on_tokens(time.perf_counter(), chunks)
    out.output_len = int(usage.get("completion_tokens", timer.tokens))
    out.prompt_len = int(usage.get("prompt_tokens", out.prompt_len))


async def _read_completions(response: Any, timer: StreamTimer, out: RequestOutput) -> None:
    await _read_openai(response, timer, out, _completion_delta)


async def _read_chat(response: Any, timer: StreamTimer, out: RequestOutput) -> None:
    await _read_openai(response, timer, out, _chat_delta)


# backend -> (payload builder, stream reader)
PROTOCOLS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., Awaitable[None]]]] = {
    "sglang": (generate_payload, _read_generate),
    "sglang-oai": (completions_payload, _read_completions),
    "sglang-oai-chat": (chat_payload, _read_chat),
    "vllm": (completions_payload, _read_completions),
}


async def send_request(
    session: Any, target: Target, row: DatasetRow, output_len: int | None = None
) -> RequestOutput:
    """Sends one streaming request and times it; never raises (errors land in ``error``)."""
    output_len = row.output_len if output_len is None else output_len
    out = RequestOutput(prompt_len=row.prompt_len)
    build, reader = PROTOCOLS[target.backend]
    payload = build(target, row, output_len)
    out.start_time = time.perf_counter()
    timer = StreamTimer(out.start_time)
    try:
        async with session.post(target.api_url, json=payload) as response:
            if response.status != 200:
                body = await response.text()
                raise RuntimeError(f"HTTP {response.status}: {body[:500]}")
            await reader(response, timer, out)
        out.latency = time.perf_counter() - out.start_time
        out.ttft, out.itl = timer.ttft, timer.itl
        out.success = out.output_len > 0
        if not out.success:
            out.error = "no tokens were streamed"
    except Exception as exc:  # noqa: BLE001 - a failed request is a data point, not a crash
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def make_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=AIOHTTP_TIMEOUT_S),
        read_bufsize=READ_BUFSIZE,
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
    )


# ---- the run --------------------------------------------------------------------------------------
async def arrivals(
    rows: list[DatasetRow], request_rate: float, seed: int
) -> AsyncIterator[DatasetRow]:
    """Yields the rows in order; with a finite rate, after exponential (Poisson) gaps."""
    rng = np.random.default_rng(seed + 1)
    for i, row in enumerate(rows):
        yield row
        if request_rate != float("inf") and i + 1 < len(rows):
            await asyncio.sleep(float(rng.exponential(1.0 / request_rate)))


async def run_requests(
    send: Callable[[DatasetRow], Awaitable[RequestOutput]],
    rows: list[DatasetRow],
    request_rate: float,
    max_concurrency: int | None,
    seed: int,
) -> list[RequestOutput]:
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def limited(row: DatasetRow) -> RequestOutput:
        if semaphore is None:
            return await send(row)
        async with semaphore:
            return await send(row)

    tasks = [asyncio.create_task(limited(row)) async for row in arrivals(rows, request_rate, seed)]
    return list(await asyncio.gather(*tasks))


async def warmup(session: Any, target: Target, rows: list[DatasetRow], n: int) -> None:
    if n <= 0:
        return
    row = rows[0]
    outs = await asyncio.gather(
        *(
            send_request(session, target, row, min(row.output_len, WARMUP_MAX_OUTPUT))
            for _ in range(n)
        )
    )
    if not any(o.success for o in outs):
        raise RuntimeError(f"warmup failed: {outs[0].error}")


async def benchmark(
    target: Target, rows: list[DatasetRow], args: argparse.Namespace
) -> dict[str, Any]:
    async with make_session() as session:
        print(f"Starting warmup with {args.warmup_requests} request(s) ...", flush=True)
        await warmup(session, target, rows, args.warmup_requests)
        if args.flush_cache:
            flush_cache(target.base_url)

        async def send(row: DatasetRow) -> RequestOutput:
            return await send_request(session, target, row)

        print(f"Sending {len(rows)} request(s) ...", flush=True)
        start = time.perf_counter()
        outputs = await run_requests(send, rows, args.request_rate, args.max_concurrency, args.seed)
        duration = time.perf_counter() - start
    errors = [o.error for o in outputs if not o.success]
    if errors:
        print(f"{len(errors)} request(s) failed; first error: {errors[0]}", file=sys.stderr)
    return calculate_metrics(outputs, duration)


# ---- server discovery -----------------------------------------------------------------------------
def http_get_json(url: str, timeout: float = 30.0) -> Any:
    import requests

    resp = requests.get(url, timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def flush_cache(base_url: str) -> None:
    import requests

    try:
        requests.post(base_url + "/flush_cache", timeout=60)
    except requests.RequestException as exc:
        print(f"warning: /flush_cache failed: {exc}", file=sys.stderr)


def served_model(base_url: str) -> str | None:
    try:
        data = http_get_json(base_url + "/v1/models")
        return data["data"][0]["id"]
    except Exception:  # noqa: BLE001 - the model name is optional for most servers
        return None


def load_tokenizer(path: str) -> Any:
    """Through sglang's ``get_tokenizer`` (demo alias, GGUF), else ``AutoTokenizer``."""
    try:
        from sglang.srt.hf_transformers_utils import get_tokenizer

        return get_tokenizer(path)
    except Exception:  # noqa: BLE001 - fall back to plain transformers
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)


def tokenizer_path(args: argparse.Namespace, base_url: str, model: str | None) -> str:
    if args.tokenizer:
        return args.tokenizer
    try:
        return http_get_json(base_url + "/get_model_info")["model_path"]
    except Exception:  # noqa: BLE001 - not an SGLang server: use the served model name
        if model is None:
            raise ValueError("cannot find the model: pass --tokenizer") from None
        return model


def base_url_of(args: argparse.Namespace) -> str:
    if args.base_url:
        return args.base_url.rstrip("/")
    return f"http://{args.host}:{args.port}"


# ---- entry points ---------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by ``args`` (see ``add_cli_args``); returns the result dict
    (metrics plus the run's settings), printed as a table and appended to ``--output-file``."""
    base_url = base_url_of(args)
    model = args.model or served_model(base_url)
    tokenizer = load_tokenizer(tokenizer_path(args, base_url, model))
    rows = build_dataset(args, tokenizer)
    if args.backend not in ("sglang", "sglang-oai"):  # these two send the token ids
        ensure_text(rows, tokenizer)
    extra = json.loads(args.extra_request_body) if args.extra_request_body else {}
    target = Target(args.backend, base_url, model, not args.disable_ignore_eos, extra)
    metrics = asyncio.run(benchmark(target, rows, args))
    result = {**run_settings(args), **metrics}
    print(format_table(result))
    append_jsonl(args.output_file, result)
    return result


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = [
        "backend",
        "dataset_name",
        "num_prompts",
        "request_rate",
        "max_concurrency",
        "seed",
        "disable_ignore_eos",
    ]
    if args.dataset_name == "random":
        keys += ["random_input_len", "random_output_len", "random_range_ratio"]
    else:
        keys += [
            "gsp_num_groups",
            "gsp_prompts_per_group",
            "gsp_system_prompt_len",
            "gsp_question_len",
            "gsp_output_len",
        ]
    out = {k: getattr(args, k) for k in keys}
    if out["request_rate"] == float("inf"):
        out["request_rate"] = "inf"
    out.update(
        bench="bench_serving",
        tag=args.tag,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        loadavg_1m=os.getloadavg()[0],
    )
    return out


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--backend", choices=tuple(BACKEND_PATHS), default="sglang")
    a("--base-url", type=str, default=None)
    a("--host", type=str, default="127.0.0.1")
    a("--port", type=int, default=30000)
    a("--model", type=str, default=None,
      help="Model name for the OpenAI backends (default: the served one).")
    a("--tokenizer", type=str, default=None)
    a("--dataset-name", choices=("random", "generated-shared-prefix"), default="random")
    a("--num-prompts", type=int, default=1000)
    a("--random-input-len", type=int, default=1024)
    a("--random-output-len", type=int, default=1024)
    a("--random-range-ratio", type=float, default=0.0)
    a("--gsp-num-groups", type=int, default=64)
    a("--gsp-prompts-per-group", type=int, default=16)
    a("--gsp-system-prompt-len", type=int, default=2048)
    a("--gsp-question-len", type=int, default=128)
    a("--gsp-output-len", type=int, default=256)
    a("--request-rate", type=float, default=float("inf"))
    a("--max-concurrency", type=int, default=None)
    a("--seed", type=int, default=1)
    a("--disable-ignore-eos", action="store_true")
    a("--extra-request-body", type=str, default=None, help="JSON merged into each request body.")
    a("--warmup-requests", type=int, default=1)
    a("--flush-cache", action="store_true", help="POST /flush_cache after the warmup.")
    a("--output-file", type=str, default=None)
    a("--tag", type=str, default=None, help="Free-form label stored in the output JSON line.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_serving", description=__doc__.split("\n")[0]
    )
    add_cli_args(parser)
    args = parser.parse_args(argv)
    if args.dataset_name == "generated-shared-prefix":
        args.num_prompts = args.gsp_num_groups * args.gsp_prompts_per_group
    return args


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
