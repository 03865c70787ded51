"""Data parallelism (--dp-size 2): two engine replicas behind the router, through real HTTP.

Two servers of the tiny random Llama (float32, so every replica computes alike): round_robin,
then cache_aware with --engine-restart, whose last test kills one replica. Greedy outputs equal
one in-process EngineCore's; batches, n > 1, streaming, aborts and cache flushes work across
replicas; /get_server_info lists both replicas, idle and integrity-clean after each module part.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from server_utils import sse_events, start_server, stop_server

ARGS = ["--dp-size", "2", "--dtype", "float32", "--max-total-tokens", "4096",
        "--random-seed", "7", "--skip-server-warmup", "--log-level", "warning"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}
LONG = {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}


def prompt(seed: int, length: int = 24) -> list[int]:
    return [(seed * 7919 + i * 104729) % 40000 + 500 for i in range(length)]


def states(url: str) -> list[dict]:
    return requests.get(f"{url}/get_server_info", timeout=30).json()["internal_states"]


def assert_replicas_clean(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while True:
        now = states(url)
        if all(s.get("idle") and s.get("num_used_tokens") == 0 for s in now):
            break
        assert time.time() < deadline, f"replicas not idle: {now}"
        time.sleep(0.2)
    assert len(now) == 2 and all(s["integrity_ok"] for s in now), now


def generate(url: str, body: dict) -> dict | list:
    r = requests.post(f"{url}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def wait_running(url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while sum(s.get("num_running_reqs", 0) for s in states(url)) < count:
        assert time.time() < deadline, f"{count} requests never ran"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def rr(tiny_model: Path) -> Iterator[str]:
    proc, url = start_server(str(tiny_model), [*ARGS, "--load-balance-method", "round_robin"])
    try:
        yield url
        assert_replicas_clean(url)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Iterator[object]:
    """One EngineCore in this process (the dp 1 path) with the servers' model and dtype."""
    from sglang.srt.managers.engine_core import EngineCore
    from sglang.srt.server_args import ServerArgs

    yield EngineCore(ServerArgs(model_path=str(tiny_model), dtype="float32", max_total_tokens=2048,
                                random_seed=7))


def reference_tokens(engine: object, ids: list[int], max_new_tokens: int) -> list[int]:
    from sglang.srt.managers.io_struct import TokenizedGenerateReq
    from sglang.srt.sampling.sampling_params import SamplingParams

    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    sampling.normalize()
    assert engine.add_request(TokenizedGenerateReq(rid="ref", input_ids=ids,
                                                   sampling=sampling)) is None
    out: list[int] = []
    while not engine.idle():
        for o in engine.step() or []:
            out += o.new_token_ids
    return out


# ---- round robin ---------------------------------------------------------------------------------
def test_server_info_lists_each_replica(rr: str) -> None:
    info = requests.get(f"{rr}/get_server_info", timeout=30).json()
    assert info["status"] == "ready" and info["dp_size"] == 2
    assert info["load_balance_method"] == "round_robin"
    assert [s["dp_rank"] for s in info["internal_states"]] == [0, 1]
    assert all(s["memory_usage"]["token_capacity"] == 4096 for s in info["internal_states"])
    assert requests.get(f"{rr}/health", timeout=30).status_code == 200


def test_greedy_equals_one_engine_on_both_replicas(rr: str, reference: object) -> None:
    for seed in range(3):
        expected = reference_tokens(reference, prompt(seed), GREEDY["max_new_tokens"])
        for _ in range(2):  # round robin: once on each replica
            body = {"input_ids": prompt(seed), "sampling_params": GREEDY}
            assert generate(rr, body)["output_ids"] == expected


def test_round_robin_spreads_requests_evenly(rr: str) -> None:
    before = states(rr)
    for seed in range(100, 110):
        generate(rr, {"input_ids": prompt(seed), "sampling_params": {"max_new_tokens": 1}})
    after = states(rr)
    prompt_tokens = [a["cache_hit_tokens"] + a["cache_miss_tokens"]
                     - b["cache_hit_tokens"] - b["cache_miss_tokens"]
                     for a, b in zip(after, before, strict=True)]
    assert prompt_tokens[0] == prompt_tokens[1] > 0, prompt_tokens


def test_batch_and_n_samples(rr: str, reference: object) -> None:
    batch = [prompt(seed) for seed in range(200, 205)]
    outs = generate(rr, {"input_ids": batch, "sampling_params": GREEDY})
    for ids, out in zip(batch, outs, strict=True):
        assert out["output_ids"] == reference_tokens(reference, ids, GREEDY["max_new_tokens"])
    # n > 1: the samples follow their prompt's prefill to its replica and find it cached
    fresh = prompt(300, 40)
    samples = generate(rr, {"input_ids": fresh, "sampling_params": {
        "n": 3, "temperature": 1.0, "max_new_tokens": 6}})
    assert len(samples) == 3
    for s in samples:
        assert len(s["output_ids"]) == 6
        assert s["meta_info"]["cached_tokens"] == len(fresh) - 1, s["meta_info"]


def test_streaming(rr: str) -> None:
    body = {"input_ids": prompt(400), "sampling_params": GREEDY}
    plain = generate(rr, body)
    with requests.post(f"{rr}/generate", json={**body, "stream": True}, stream=True,
                       timeout=60) as r:
        events = list(sse_events(r))
    assert events[-1] == "[DONE]" and len(events) > 2
    assert events[-2]["output_ids"] == plain["output_ids"]
    assert events[-2]["meta_info"]["finish_reason"]["type"] == "length"


def test_abort_one_request_and_all(rr: str) -> None:
    results: dict[str, dict] = {}

    def run(rid: str) -> None:
        body = {"input_ids": prompt(500 + int(rid[1])), "sampling_params": LONG, "rid": rid}
        results[rid] = requests.post(f"{rr}/generate", json=body, timeout=120).json()

    threads = [threading.Thread(target=run, args=(rid,)) for rid in ("a0", "a1", "a2")]
    for t in threads:
        t.start()
    wait_running(rr, 3)
    requests.post(f"{rr}/abort_request", json={"rid": "a1"}, timeout=30)
    threads[1].join(30)
    assert not threads[1].is_alive()
    assert results["a1"]["meta_info"]["finish_reason"]["type"] == "abort"
    requests.post(f"{rr}/abort_request", json={"abort_all": True}, timeout=30)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    for rid in ("a0", "a2"):
        assert results[rid]["meta_info"]["finish_reason"]["type"] == "abort", results[rid]
    assert_replicas_clean(rr)


def test_flush_cache_flushes_every_replica(rr: str) -> None:
    ids = prompt(600)
    for _ in range(2):  # cached on both replicas
        generate(rr, {"input_ids": ids, "sampling_params": {"max_new_tokens": 1}})
    assert all(s["num_evictable_tokens"] > 0 for s in states(rr))
    assert requests.post(f"{rr}/flush_cache", timeout=30).status_code == 200
    assert all(s["num_evictable_tokens"] == 0 for s in states(rr))
    out = generate(rr, {"input_ids": ids, "sampling_params": {"max_new_tokens": 1}})
    assert out["meta_info"]["cached_tokens"] == 0


# ---- cache aware, then a replica dies ------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tiny_model: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, url = start_server(str(tiny_model), [*ARGS, "--load-balance-method", "cache_aware",
                                         "--engine-restart"])
    try:
        yield proc, url
        assert_replicas_clean(url)
    finally:
        stop_server(proc)


def test_cache_aware_keeps_a_shared_prefix_on_one_replica(ca: tuple) -> None:
    _, url = ca
    before = states(url)
    groups = {0: prompt(700, 64), 1: prompt(800, 64)}
    for group, prefix in groups.items():
        for i in range(5):
            body = {"input_ids": prefix + prompt(900 + 10 * group + i, 8),
                    "sampling_params": {"max_new_tokens": 1}}
            generate(url, body)
    hits = [a["cache_hit_tokens"] - b["cache_hit_tokens"]
            for a, b in zip(states(url), before, strict=True)]
    # each group's later four prompts hit its 64-token prefix on the replica that has it; the
    # second group went to the other replica (equal queues: the emptier index)
    assert hits == [4 * 64, 4 * 64], hits


def engine_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server's engine replicas (its spawned children) in replica order (started in that
    order: increasing pids)."""
    return sorted((p for p in psutil.Process(proc.pid).children()
                   if "spawn_main" in " ".join(p.cmdline())), key=lambda p: p.pid)


def test_a_dead_replica_fails_fast_and_the_group_restarts(ca: tuple) -> None:
    proc, url = ca
    engines = engine_processes(proc)
    assert len(engines) == 2
    with requests.post(f"{url}/generate", json={"input_ids": prompt(1000), "stream": True,
                                                "sampling_params": LONG},
                       stream=True, timeout=60) as r:
        events = sse_events(r)
        assert next(events)["meta_info"]["finish_reason"] is None
        # kill the replica running it (so it cannot finish before the death is noticed)
        running = [s["num_running_reqs"] for s in states(url)]
        assert sorted(running) == [0, 1], running
        killed = time.time()
        engines[running.index(1)].kill()
        deadline = killed + 10
        while requests.get(f"{url}/health", timeout=30).status_code != 503:
            assert time.time() < deadline, "/health kept answering 200"
            time.sleep(0.1)
        rest = list(events)
    assert rest[-1] == "[DONE]" and rest[-2]["error"]["code"] == 500, rest[-2:]
    assert time.time() - killed < 10
    refused = requests.post(f"{url}/generate", json={"input_ids": prompt(1), "sampling_params":
                                                     GREEDY}, timeout=30)
    assert refused.status_code == 503, refused.text  # the replicas are restarting
    deadline = time.time() + 180
    while requests.get(f"{url}/health", timeout=30).status_code != 200:
        assert time.time() < deadline, "the replicas were not restarted"
        time.sleep(0.2)
    info = requests.get(f"{url}/get_server_info", timeout=30).json()
    assert info["engine_restarts"] == 1 and len(info["internal_states"]) == 2
    _, alive = psutil.wait_procs(engines, timeout=15)
    assert not alive, "the surviving replica of the old group still runs"
    assert len(engine_processes(proc)) == 2
    assert len(generate(url, {"input_ids": prompt(2), "sampling_params": GREEDY})[
        "output_ids"]) == 8
