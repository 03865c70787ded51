"""Benchmark scripts: dataset generators, stream timing and metric arithmetic. No server, no model."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from sglang import bench_serving as bs

REPO = Path(__file__).resolve().parents[3]


class FakeTokenizer:
    vocab_size = 100
    all_special_ids = (0, 1, 2)

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


def test_lengths_follow_range_ratio() -> None:
    rng = np.random.default_rng(0)
    lens = bs.sample_lengths(rng, 2000, 100, 0.5)
    assert lens.min() >= 50 and lens.max() <= 100
    assert lens.min() == 50 and lens.max() == 100  # both ends reachable with 2000 draws
    assert (bs.sample_lengths(rng, 10, 64, 1.0) == 64).all()
    assert bs.sample_lengths(rng, 1000, 8, 0.0).min() >= 1


def test_random_dataset_ids_lengths_and_seed() -> None:
    tok = FakeTokenizer()
    rows = bs.sample_random_requests(tok, 20, 32, 8, 1.0, seed=3)
    assert len(rows) == 20
    assert all(r.prompt_len == 32 and r.output_len == 8 for r in rows)
    ids = np.concatenate([r.input_ids for r in rows])
    assert ids.min() >= 3 and ids.max() < 100  # special ids excluded
    again = bs.sample_random_requests(tok, 20, 32, 8, 1.0, seed=3)
    assert [r.input_ids for r in again] == [r.input_ids for r in rows]
    other = bs.sample_random_requests(tok, 20, 32, 8, 1.0, seed=4)
    assert [r.input_ids for r in other] != [r.input_ids for r in rows]
    bs.ensure_text(rows, tok)
    assert rows[0].prompt == tok.decode(rows[0].input_ids)


def test_generated_shared_prefix_groups_share_system_prompt() -> None:
    tok = FakeTokenizer()
    rows = bs.sample_generated_shared_prefix_requests(tok, 3, 4, 50, 6, 5, seed=0)
    assert len(rows) == 12
    assert all(r.prompt_len == 56 and r.output_len == 5 for r in rows)
    prefixes = {tuple(r.input_ids[:50]) for r in rows}
    assert len(prefixes) == 3
    for p in prefixes:
        assert sum(tuple(r.input_ids[:50]) == p for r in rows) == 4
    assert len({tuple(r.input_ids) for r in rows}) == 12
    first = rows[0]
    assert first.prompt == tok.decode(first.input_ids[:50]) + " " + tok.decode(first.input_ids[50:])
    assert len({tuple(r.input_ids[:50]) for r in rows[:4]}) > 1  # shuffled, not in blocks


def test_parse_args_defaults_and_gsp_count() -> None:
    args = bs.parse_args([])
    assert args.backend == "sglang" and args.request_rate == float("inf")
    assert args.random_range_ratio == 0.0 and args.warmup_requests == 1
    assert bs.base_url_of(args) == "http://127.0.0.1:30000"
    gsp = bs.parse_args(
        [
            "--dataset-name",
            "generated-shared-prefix",
            "--gsp-num-groups",
            "4",
            "--gsp-prompts-per-group",
            "8",
            "--base-url",
            "http://h:1/",
        ]
    )
    assert gsp.num_prompts == 32 and bs.base_url_of(gsp) == "http://h:1"


def test_stream_timer_ttft_and_itl() -> None:
    timer = bs.StreamTimer(start=10.0)
    timer.on_tokens(10.5, 1)  # first token
    timer.on_tokens(10.6, 1)  # no new token: ignored
    timer.on_tokens(10.7, 2)
    timer.on_tokens(11.0, 5)  # one chunk of three tokens: three equal shares
    assert timer.ttft == pytest.approx(0.5)
    assert timer.itl == pytest.approx([0.2, 0.1, 0.1, 0.1])
    assert timer.tokens == 5


def _out(
    ttft: float, latency: float, n: int, itl: list[float], prompt: int = 10, ok: bool = True
) -> bs.RequestOutput:
    return bs.RequestOutput(
        success=ok, prompt_len=prompt, output_len=n, ttft=ttft, latency=latency, itl=itl
    )


def test_calculate_metrics() -> None:
    outs = [
        _out(0.1, 0.5, 5, [0.1] * 4),
        _out(0.2, 0.2, 1, []),  # single token: no TPOT
        _out(0.3, 1.3, 11, [0.05] * 5 + [0.15] * 5, prompt=20),
        _out(9.0, 9.0, 100, [1.0], ok=False),  # failed: ignored except in the count
    ]
    m = bs.calculate_metrics(outs, duration=2.0)
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 40 and m["total_output_tokens"] == 17
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["input_throughput"] == pytest.approx(20.0)
    assert m["output_throughput"] == pytest.approx(8.5)
    assert m["total_throughput"] == pytest.approx(28.5)
    assert m["concurrency"] == pytest.approx((0.5 + 0.2 + 1.3) / 2.0)
    ttfts = np.array([0.1, 0.2, 0.3]) * 1000
    assert m["mean_ttft_ms"] == pytest.approx(ttfts.mean())
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["p99_ttft_ms"] == pytest.approx(np.percentile(ttfts, 99))
    assert m["mean_tpot_ms"] == pytest.approx(100.0)  # (0.4/4 + 1.0/10) / 2
    itls = np.array([0.1] * 4 + [0.05] * 5 + [0.15] * 5) * 1000
    assert m["mean_itl_ms"] == pytest.approx(itls.mean())
    assert m["median_itl_ms"] == pytest.approx(np.median(itls))
    assert m["p95_itl_ms"] == pytest.approx(np.percentile(itls, 95))
    assert m["p99_itl_ms"] == pytest.approx(np.percentile(itls, 99))
    assert m["max_itl_ms"] == pytest.approx(150.0)
    assert m["median_e2e_latency_ms"] == pytest.approx(500.0)
    table = bs.format_table(
        {
            "backend": "sglang",
            "dataset_name": "random",
            "request_rate": "inf",
            "max_concurrency": None,
            **m,
        }
    )
    assert "Median TTFT (ms):" in table and "not set" in table


def test_calculate_metrics_all_failed() -> None:
    m = bs.calculate_metrics([_out(0.1, 0.2, 3, [], ok=False)], duration=1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["mean_ttft_ms"] == 0.0


def test_run_requests_respects_max_concurrency() -> None:
    rows = [bs.DatasetRow(input_ids=[i], output_len=1) for i in range(12)]
    live, peak = 0, 0

    async def send(row: bs.DatasetRow) -> bs.RequestOutput:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.005)
        live -= 1
        return _out(0.0, 0.0, 1, [], prompt=row.input_ids[0])

    outs = asyncio.run(bs.run_requests(send, rows, float("inf"), 3, seed=0))
    assert peak == 3
    assert [o.prompt_len for o in outs] == list(range(12))  # results in request order


def test_offline_throughput_metrics() -> None:
    from sglang.bench_offline_throughput import throughput_metrics

    replies = [{"meta_info": {"prompt_tokens": 10, "completion_tokens": 4}}] * 3
    m = throughput_metrics(replies, duration=2.0)
    assert m["total_input_tokens"] == 30 and m["total_output_tokens"] == 12
    assert m["output_throughput"] == pytest.approx(6.0)
    assert m["total_throughput"] == pytest.approx(21.0)


def test_one_batch_summary() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sglang._core")
    from sglang.bench_one_batch import summarize

    r = summarize(8, 128, 4, prefill=0.5, decodes=[0.1, 0.2, 0.3])
    assert r["prefill_throughput"] == pytest.approx(8 * 128 / 0.5)
    assert r["median_decode_latency"] == pytest.approx(0.2)
    assert r["decode_throughput"] == pytest.approx(8 * 3 / 0.6)
    assert r["overall_throughput"] == pytest.approx(8 * 132 / 1.1)


def test_hf_baseline_prompts_are_identical_rows() -> None:
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("hf_baseline", REPO / "benchmarks/hf_baseline.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hf_baseline", mod)
    spec.loader.exec_module(mod)
    ids = mod.prompt_ids(1000, 16, 4, seed=0)
    assert ids.shape == (4, 16) and bool((ids == ids[0]).all())
    assert int(ids.min()) >= 100 and torch.equal(ids, mod.prompt_ids(1000, 16, 4, seed=0))
