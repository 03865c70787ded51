"""/encode throughput against sentence-transformers on the same CPU, in the same run.

    python benchmarks/bench_encode.py [--sentences 1024] [--batch 64] [--rounds 2]

Starts ``launch_server --model-path all-minilm-l6-v2 --is-embedding``, then, ``--rounds`` times and
interleaved: sentence-transformers' ``SentenceTransformer.encode(batch_size=64)`` in this process,
and the same sentences through HTTP ``/encode`` in requests of ``--batch`` texts from
``--clients`` concurrent clients (default 1, sequential: every request's tokenization, engine
step and JSON reply are counted; with 2 the HTTP side's work overlaps the engine's). Reports
sentences/s (median over rounds), the CPU, the thread count and the agreement of the vectors
(min cosine). The sentences are generated (seeded) with 4-40 words each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py" / "server"))

MODEL = "all-minilm-l6-v2"
# fmt: off
WORDS = [
    "the", "a", "cat", "dog", "sits", "runs", "outside", "inside", "house", "garden", "music",
    "guitar", "plays", "loves", "pasta", "pizza", "quickly", "slowly", "river", "mountain",
    "city", "country", "history", "science", "computer", "network", "model", "data", "vector",
    "search", "query", "answer", "question", "because", "although", "while", "during", "after",
    "before", "people", "market", "price", "rises", "falls", "storm", "weather", "sunny",
    "cold", "warm", "book", "reads", "writes", "learns", "teaches",
]
# fmt: on


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "."
            for _ in range(n)]  # fmt: skip


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    cmd = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


def run_st(model, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vecs = model.encode(texts, batch_size=batch, convert_to_numpy=True)
    return len(texts) / (time.perf_counter() - start), vecs


def run_http(url: str, texts: list[str], batch: int, clients: int = 1) -> tuple[float, np.ndarray]:
    """Requests of ``batch`` texts from ``clients`` concurrent clients (each sequential)."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    sessions = [requests.Session() for _ in range(clients)]

    def post(k: int) -> list[list[float]]:
        r = sessions[k % clients].post(f"{url}/encode", json={"text": chunks[k]}, timeout=600)
        r.raise_for_status()
        return [item["embedding"] for item in r.json()]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(post, range(len(chunks))))
    rate = len(texts) / (time.perf_counter() - start)
    return rate, np.asarray([v for part in parts for v in part], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1, help="concurrent HTTP clients")
    parser.add_argument("--output-file", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer
    from server_utils import start_server, stop_server
    from sglang.srt.model_loader.resolve import resolve_model_path

    folder = resolve_model_path(MODEL).folder
    texts = sentences(args.sentences)
    st_model = SentenceTransformer(folder, device="cpu")
    proc, url = start_server(MODEL, ["--is-embedding", "--max-batch-size", str(args.batch),
                                     "--log-level", "warning"])  # fmt: skip
    try:
        run_st(st_model, texts[: args.batch], args.batch)  # warm-up both
        run_http(url, texts[: args.batch], args.batch)
        st_rates, http_rates = [], []
        for _ in range(args.rounds):
            rate, st_vecs = run_st(st_model, texts, args.batch)
            st_rates.append(rate)
            rate, http_vecs = run_http(url, texts, args.batch, args.clients)
            http_rates.append(rate)
    finally:
        stop_server(proc)
    cos = (st_vecs * http_vecs).sum(1) / (
        np.linalg.norm(st_vecs, axis=1) * np.linalg.norm(http_vecs, axis=1)
    )
    record = {
        "bench": "bench_encode",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "sentences": args.sentences,
        "batch": args.batch,
        "clients": args.clients,
        "rounds": args.rounds,
        "sentence_transformers_per_s": statistics.median(st_rates),
        "ours_http_per_s": statistics.median(http_rates),
        "st_rounds": st_rates,
        "ours_rounds": http_rates,
        "min_cosine": float(cos.min()),
        "git": git_commit(),
        "loadavg_1m": os.getloadavg()[0],
    }
    print(json.dumps(record, indent=2))
    print(f"ours / sentence-transformers: "
          f"{record['ours_http_per_s'] / record['sentence_transformers_per_s']:.2f}x")  # fmt: skip
    if args.output_file:
        with open(args.output_file, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
