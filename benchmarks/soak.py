"""Soak test: the server under steady load with aborts, grammars and bad requests mixed in.

    python benchmarks/soak.py [--model-path smollm2-135m-instruct] [--duration 300]
        [--warmup 60] [--load 0.8] [--output-file results.jsonl] [-- extra server flags]

Starts a server, measures its capacity (completed requests/s of --capacity-requests requests of
the normal shape sent at once), then sends Poisson arrivals at --load x capacity for --duration
seconds: 5% aborted mid-stream (half by closing the connection, half by /abort_request), 5% with
a grammar (regex or JSON schema), 5% invalid (must get a 4xx), the rest normal (half streamed).
Samples the RSS of the HTTP and engine processes every few seconds. Passes when no valid request
got a 5xx or a broken connection, every invalid one got a 4xx, the engine ends idle and
integrity-clean, and the RSS after --warmup seconds drifts by less than --max-rss-drift. One JSON
line per run (CPU, date, command, counts, latencies, RSS) goes to --output-file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import aiohttp
import psutil
import requests

from sglang.utils import append_jsonl, cpu_model_name

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py", "server"))
from server_utils import start_server, stop_server  # noqa: E402

WORDS = ("river", "mountain", "lantern", "orchard", "harbor", "meadow", "comet", "violin",
         "granite", "compass", "willow", "ember", "quartz", "saddle", "thistle", "beacon")
BAD_BODIES = [
    {"text": "x", "sampling_params": {"temperature": -1}},
    {"text": "x", "return_logprob": True, "top_logprobs_num": 100000},
    {"input_ids": [-5, 3]},
    {"text": "x", "sampling_params": {"n": 100000}},
    {"text": "x", "sampling_params": {"stop": ""}},
    {"text": "x", "image_data": "cat.png"},
    {"text": "x", "input_ids": [1]},
    {"text": "x", "sampling_params": {"stream_interval": -1}, "stream": True},
    {"text": "x", "sampling_params": {"regex": "(unclosed"}},
]
GRAMMARS = [
    {"regex": "(yes|no|maybe)( [a-z]+){0,5}"},
    {"json_schema": json.dumps({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"]})},
]




def prompt(rng: random.Random) -> str:
    return "Tell a short story about " + " ".join(rng.choice(WORDS) for _ in range(12)) + "."


class Soak:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.rng = random.Random(args.seed)
        self.results: list[dict[str, Any]] = []

    def normal_body(self) -> dict[str, Any]:
        return {"text": prompt(self.rng), "sampling_params": {
            "max_new_tokens": self.args.output_len, "ignore_eos": True, "temperature": 0.7}}

    # ---- one request of each kind ----------------------------------------------------------------
    async def normal(self, session: aiohttp.ClientSession, stream: bool) -> dict[str, Any]:
        body = {**self.normal_body(), "stream": stream}
        async with session.post(f"{self.url}/generate", json=body) as r:
            if not stream or r.status != 200:
                data = await r.read()
                ok = r.status == 200 and len(json.loads(data)["output_ids"]) \
                    == self.args.output_len
                return {"status": r.status, "ok": ok}
            last = None
            async for line in r.content:
                if line.startswith(b"data: {"):
                    last = json.loads(line[6:])
            ok = last is not None and "error" not in last and \
                len(last["output_ids"]) == self.args.output_len
            return {"status": r.status, "ok": ok}

    async def aborted(self, session: aiohttp.ClientSession, by_disconnect: bool) -> dict[str, Any]:
        rid = f"soak-abort-{self.rng.getrandbits(64):x}"
        body = {**self.normal_body(), "stream": True, "rid": rid}
        body["sampling_params"]["max_new_tokens"] = self.args.output_len * 4
        chunks = 0
        async with session.post(f"{self.url}/generate", json=body) as r:
            if r.status != 200:
                return {"status": r.status, "ok": False}
            async for line in r.content:
                if not line.startswith(b"data: {"):
                    continue
                chunks += 1
                data = json.loads(line[6:])
                if "error" in data:
                    return {"status": 500, "ok": False}
                if data["meta_info"]["finish_reason"] is not None:
                    return {"status": 200, "ok": data["meta_info"]["finish_reason"]["type"]
                            == "abort"}
                if chunks == 2:
                    if by_disconnect:
                        r.close()
                        return {"status": 200, "ok": True}
                    async with session.post(f"{self.url}/abort_request",
                                            json={"rid": rid}) as a:
                        if a.status != 200:
                            return {"status": a.status, "ok": False}
        return {"status": 200, "ok": False}  # the stream ended without a finish reason

    async def grammar(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        grammar = self.rng.choice(GRAMMARS)
        body = {"text": prompt(self.rng), "sampling_params": {
            "max_new_tokens": self.args.output_len, "temperature": 0.7, **grammar}}
        async with session.post(f"{self.url}/generate", json=body) as r:
            data = await r.read()
            ok = r.status == 200
            if ok and "json_schema" in grammar:
                out = json.loads(data)
                finished = out["meta_info"]["finish_reason"]["type"] == "stop"
                ok = not finished or isinstance(json.loads(out["text"]), dict)
            return {"status": r.status, "ok": ok}

    async def invalid(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        body = self.rng.choice(BAD_BODIES)
        async with session.post(f"{self.url}/generate", json=body) as r:
            await r.read()
            return {"status": r.status, "ok": 400 <= r.status < 500}

    async def one(self, session: aiohttp.ClientSession, kind: str, start: float) -> None:
        t0 = time.perf_counter()
        try:
            if kind == "normal":
                result = await self.normal(session, stream=self.rng.random() < 0.5)
            elif kind == "abort":
                result = await self.aborted(session, by_disconnect=self.rng.random() < 0.5)
            elif kind == "grammar":
                result = await self.grammar(session)
            else:
                result = await self.invalid(session)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            result = {"status": -1, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result.update(kind=kind, at=t0 - start, latency=time.perf_counter() - t0)
        self.results.append(result)

    def kind(self) -> str:
        x = self.rng.random()
        return "abort" if x < 0.05 else "grammar" if x < 0.10 else "invalid" if x < 0.15 \
            else "normal"

    # ---- phases ----------------------------------------------------------------------------------
    async def capacity(self, session: aiohttp.ClientSession) -> float:
        """Completed normal requests per second with --capacity-requests sent at once."""
        n = self.args.capacity_requests
        await asyncio.gather(*(self.normal(session, False) for _ in range(4)))  # warm-up
        t0 = time.perf_counter()
        done = await asyncio.gather(*(self.normal(session, False) for _ in range(n)))
        elapsed = time.perf_counter() - t0
        assert all(d["ok"] for d in done), done
        return n / elapsed

    async def run(self, rate: float, duration: float, sample: Any) -> None:
        timeout = aiohttp.ClientTimeout(total=600)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            start = time.perf_counter()
            tasks = []
            next_sample = 0.0
            while (now := time.perf_counter() - start) < duration:
                if now >= next_sample:
                    sample(now)
                    next_sample += self.args.rss_every
                tasks.append(asyncio.ensure_future(self.one(session, self.kind(), start)))
                await asyncio.sleep(self.rng.expovariate(rate))
            await asyncio.gather(*tasks)
            sample(time.perf_counter() - start)


def rss_mb(proc: psutil.Process) -> dict[str, float]:
    children = proc.children(recursive=True)
    engine = sum(c.memory_info().rss for c in children)
    return {"http": proc.memory_info().rss / 2**20, "engine": engine / 2**20}


def summarize(soak: Soak, samples: list[dict[str, float]], warmup: float) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for r in soak.results:
        k = by_kind.setdefault(r["kind"], {"sent": 0, "ok": 0, "5xx": 0, "broken": 0})
        k["sent"] += 1
        k["ok"] += bool(r["ok"])
        k["5xx"] += r["status"] >= 500
        k["broken"] += r["status"] == -1
    valid = [r for r in soak.results if r["kind"] != "invalid"]
    lat = sorted(r["latency"] for r in soak.results if r["kind"] == "normal" and r["ok"])
    after = [s for s in samples if s["t"] >= warmup]
    base, end = (after[0], after[-1]) if after else (samples[0], samples[-1])

    def drift(key: str) -> float:
        return (end[key] - base[key]) / base[key]

    total_base = base["http"] + base["engine"]
    total_end = end["http"] + end["engine"]
    return {
        "by_kind": by_kind,
        "valid_5xx_or_broken": sum(r["status"] >= 500 or r["status"] == -1 for r in valid),
        "failed": sum(not r["ok"] for r in soak.results),
        "normal_latency_s": {"p50": lat[len(lat) // 2] if lat else None,
                             "p99": lat[int(len(lat) * 0.99)] if lat else None},
        "rss_mb": {"after_warmup": base, "end": end,
                   "max_total": max(s["http"] + s["engine"] for s in samples)},
        "rss_drift": {"http": drift("http"), "engine": drift("engine"),
                      "total": (total_end - total_base) / total_base},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="smollm2-135m-instruct")
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--capacity-requests", type=int, default=32)
    parser.add_argument("--rss-every", type=float, default=5)
    parser.add_argument("--max-rss-drift", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-file", default=None)
    parser.add_argument("server_args", nargs="*", help="extra server flags (after --)")
    args = parser.parse_args()

    server_args = ["--max-running-requests", "32", "--random-seed", "1", "--skip-server-warmup",
                   "--log-level", "warning", *args.server_args]
    proc, url = start_server(args.model_path, server_args)
    try:
        server = psutil.Process(proc.pid)
        soak = Soak(url, args)
        samples: list[dict[str, float]] = []

        async def go() -> float:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                cap = await soak.capacity(s)
            rate = args.load * cap
            print(f"capacity {cap:.2f} req/s; soaking at {rate:.2f} req/s for "
                  f"{args.duration:g} s", flush=True)
            await soak.run(rate, args.duration,
                           lambda t: samples.append({"t": t, **rss_mb(server)}))
            return cap

        capacity = asyncio.run(go())
        state: dict[str, Any] = {}
        deadline = time.time() + 60
        while time.time() < deadline:
            state = requests.get(f"{url}/get_server_info", timeout=30).json()["internal_states"][0]
            if state["idle"] and state["num_used_tokens"] == 0:
                break
            time.sleep(0.5)
        summary = summarize(soak, samples, args.warmup)
        passed = (summary["valid_5xx_or_broken"] == 0 and summary["failed"] == 0
                  and state.get("idle") and state.get("integrity_ok")
                  and state.get("num_used_tokens") == 0
                  and abs(summary["rss_drift"]["total"]) < args.max_rss_drift)
        record = {
            "bench": "soak", "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model_name(),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            "server_args": server_args, "duration_s": args.duration, "warmup_s": args.warmup,
            "capacity_req_s": capacity, "load": args.load, "requests": len(soak.results),
            **summary, "engine_clean": bool(state.get("idle") and state.get("integrity_ok")),
            "passed": bool(passed),
        }
        print(json.dumps(record, indent=2))
        append_jsonl(args.output_file, record)
    finally:
        stop_server(proc)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
