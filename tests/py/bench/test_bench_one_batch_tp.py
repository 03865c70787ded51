"""bench_one_batch --tp-size 2: two spawned ranks (gloo) run the same static batch; rank 0 reports
one result per case, and its greedy decode runs the full number of steps on both ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-llama-bench")
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def run_bench(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sglang.bench_one_batch", "--model-path", str(model),
           "--dtype", "float32", "--device", "cpu", "--batch-size", "1", "3",
           "--input-len", "16", "--output-len", "5", "--no-warmup", "--output-file", str(out),
           *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)


def test_two_ranks_report_once_per_case(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "tp2.jsonl"
    proc = run_bench(tiny_llama, out, "--tp-size", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["batch_size"], r["tp_size"]) for r in rows] == [(1, 2), (3, 2)]
    assert all(r["decode_steps"] == 4 and r["decode_throughput"] > 0 for r in rows)
    assert proc.stdout.count("Median decode step latency") == 2  # rank 0 only prints


def test_a_rank_that_cannot_start_fails_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    proc = run_bench(tiny_llama, tmp_path / "bad.jsonl", "--tp-size", "3")  # 4 heads, 3 ranks
    assert proc.returncode != 0
    assert "not divisible by the TP size" in proc.stdout + proc.stderr
