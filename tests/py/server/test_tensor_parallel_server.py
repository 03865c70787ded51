"""Tensor parallelism through the server (--tp-size 2): two engine ranks over gloo.

A server of the tiny random Llama (float32) with --tp-size 2 against one with --tp-size 1:
greedy output ids equal and every output logprob within 1e-4, for single prompts, a batch, a
streaming request, prefix hits, input_embeds and chunked prefill with pages; /health passes; the
engine is idle and integrity-clean at the end; a weight update (the same checkpoint, then
another one) reaches both ranks; a killed follower fails the engine (503) and --engine-restart
brings both ranks back; --dp-size 2 replicas of two ranks each serve alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from server_utils import assert_engine_clean, sse_events, start_server, stop_server

ARGS = ["--dtype", "float32", "--max-total-tokens", "2048", "--random-seed", "7",
        "--skip-server-warmup", "--log-level", "warning"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}


def prompt(seed: int, length: int = 20) -> list[int]:
    return [(seed * 7919 + i * 104729) % 40000 + 500 for i in range(length)]


def generate(url: str, body: dict) -> dict | list:
    r = requests.post(f"{url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def servers(tiny_model: Path) -> Iterator[tuple[str, str]]:
    one, url1 = start_server(str(tiny_model), [*ARGS, "--tp-size", "1"])
    try:
        two, url2 = start_server(str(tiny_model), [*ARGS, "--tp-size", "2"])
        try:
            yield url1, url2
            assert_engine_clean(url2)
        finally:
            stop_server(two)
    finally:
        stop_server(one)


def assert_same(a: dict, b: dict) -> None:
    assert a["output_ids"] == b["output_ids"]
    la = [lp for lp, _tok, *_ in a["meta_info"]["output_token_logprobs"]]
    lb = [lp for lp, _tok, *_ in b["meta_info"]["output_token_logprobs"]]
    assert len(la) == len(lb) == len(a["output_ids"])
    assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) < 1e-4, (la, lb)


def test_health_and_capacity(servers: tuple[str, str]) -> None:
    _, url2 = servers
    assert requests.get(f"{url2}/health", timeout=30).status_code == 200
    state = requests.get(f"{url2}/get_server_info", timeout=30).json()["internal_states"][0]
    assert state["memory_usage"]["token_capacity"] == 2048


def test_greedy_prompts_equal_one_rank(servers: tuple[str, str]) -> None:
    url1, url2 = servers
    for seed in range(3):
        body = {"input_ids": prompt(seed, 12 + 5 * seed), "sampling_params": GREEDY,
                "return_logprob": True}
        assert_same(generate(url1, body), generate(url2, body))


def test_batch_equals_one_rank(servers: tuple[str, str]) -> None:
    url1, url2 = servers
    body = {"input_ids": [prompt(seed) for seed in range(10, 14)], "sampling_params": GREEDY,
            "return_logprob": True}
    for a, b in zip(generate(url1, body), generate(url2, body), strict=True):
        assert_same(a, b)


def test_streaming_equals_one_rank(servers: tuple[str, str]) -> None:
    url1, url2 = servers
    body = {"input_ids": prompt(20), "sampling_params": GREEDY}
    expected = generate(url1, body)["output_ids"]
    with requests.post(f"{url2}/generate", json={**body, "stream": True}, stream=True,
                       timeout=300) as r:
        assert r.status_code == 200
        events = list(sse_events(r))
    assert events[-1] == "[DONE]" and len(events) > 2
    assert events[-2]["output_ids"] == expected


def test_prefix_hit_equals_one_rank(servers: tuple[str, str]) -> None:
    url1, url2 = servers
    body = {"input_ids": prompt(30, 40), "sampling_params": GREEDY, "return_logprob": True}
    generate(url2, body)
    again = generate(url2, body)  # the prompt's KV from the cache, on both ranks
    assert again["meta_info"]["cached_tokens"] > 0
    assert_same(generate(url1, body), again)


def test_input_embeds_equal_ids(servers: tuple[str, str], tiny_model: Path) -> None:
    """input_embeds rows replace the (vocabulary-parallel) embedding lookup on every rank."""
    import torch
    from safetensors.torch import load_file

    table = load_file(str(tiny_model / "model.safetensors"))["model.embed_tokens.weight"]
    url1, url2 = servers
    ids = prompt(50, 16)
    by_ids = generate(url1, {"input_ids": ids, "sampling_params": GREEDY})
    embeds = table[torch.tensor(ids)].tolist()
    by_embeds = generate(url2, {"input_embeds": embeds, "sampling_params": GREEDY})
    assert by_embeds["output_ids"] == by_ids["output_ids"]


def test_update_weights_reaches_every_rank(servers: tuple[str, str], tiny_model: Path) -> None:
    url1, url2 = servers
    body = {"input_ids": prompt(60), "sampling_params": GREEDY, "return_logprob": True}
    before = generate(url2, body)
    r = requests.post(f"{url2}/update_weights_from_disk", json={"model_path": str(tiny_model)},
                      timeout=300)
    assert r.status_code == 200 and r.json()["success"], r.text
    after = generate(url2, body)
    assert after["meta_info"]["cached_tokens"] == 0  # the cache was flushed
    assert_same(before, after)
    assert_same(generate(url1, body), after)


def test_update_to_other_weights_reaches_every_rank(servers: tuple[str, str], tiny_model: Path,
                                                   tmp_path: Path) -> None:
    """Another checkpoint (every tensor changed) loaded by both servers: the two ranks of the
    --tp-size 2 one must both hold it to keep matching --tp-size 1 (a rank left with the old
    weights would not); then both go back to the original weights."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    tensors = load_file(str(tiny_model / "model.safetensors"))
    generator = torch.Generator().manual_seed(3)
    save_file({k: (v + 0.05 * torch.randn(v.shape, generator=generator)).contiguous()
               for k, v in tensors.items()}, str(other / "model.safetensors"),
              metadata={"format": "pt"})
    url1, url2 = servers
    body = {"input_ids": prompt(65), "sampling_params": GREEDY, "return_logprob": True}
    before = generate(url2, body)
    try:
        for url in servers:
            r = requests.post(f"{url}/update_weights_from_disk", json={"model_path": str(other)},
                              timeout=300)
            assert r.status_code == 200 and r.json()["success"], r.text
        after = generate(url2, body)
        assert after["output_ids"] != before["output_ids"]  # the new weights are in use
        assert_same(generate(url1, body), after)
    finally:
        for url in servers:
            r = requests.post(f"{url}/update_weights_from_disk",
                              json={"model_path": str(tiny_model)}, timeout=300)
            assert r.status_code == 200 and r.json()["success"], r.text
    assert_same(generate(url2, body), before)


def test_chunked_prefill_with_pages_equals_one_rank(servers: tuple[str, str],
                                                    tiny_model: Path) -> None:
    """Prompts split over several prefill chunks, KV in pages of 4, on two ranks."""
    url1, _ = servers
    proc, url = start_server(str(tiny_model), [*ARGS, "--tp-size", "2", "--page-size", "4",
                                               "--chunked-prefill-size", "16"])
    try:
        body = {"input_ids": [prompt(70 + k, 45 + 7 * k) for k in range(3)],
                "sampling_params": GREEDY, "return_logprob": True}
        for a, b in zip(generate(url1, body), generate(url, body), strict=True):
            assert_same(a, b)
        assert_engine_clean(url)
    finally:
        stop_server(proc)


def test_dead_rank_fails_the_engine(tiny_model: Path) -> None:
    """A follower killed: the engine stops (503 while it restarts), nothing hangs, and the
    restarted engine (both ranks again) serves."""
    import time

    import psutil

    proc, url = start_server(str(tiny_model), [*ARGS, "--tp-size", "2", "--engine-restart"])
    try:
        body = {"input_ids": prompt(40), "sampling_params": GREEDY}
        expected = generate(url, body)["output_ids"]
        engines = [p for p in psutil.Process(proc.pid).children()
                   if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(engines) == 2, engines
        max(engines, key=lambda p: p.pid).kill()  # the follower starts after rank 0
        deadline = time.time() + 10
        while requests.get(f"{url}/health", timeout=30).status_code == 200:
            assert time.time() < deadline, "the dead rank was not noticed"
            time.sleep(0.1)
        r = requests.post(f"{url}/generate", json=body, timeout=60)
        assert r.status_code == 503, r.text
        deadline = time.time() + 120
        while requests.get(f"{url}/health", timeout=30).status_code != 200:
            assert time.time() < deadline, "the engine did not restart"
            time.sleep(0.5)
        assert generate(url, body)["output_ids"] == expected
    finally:
        stop_server(proc)


def test_data_parallel_replicas_of_two_ranks(servers: tuple[str, str], tiny_model: Path) -> None:
    """--dp-size 2 --tp-size 2: two replicas, each two ranks of its own group (four engine
    processes); round robin sends a prompt to each replica, both equal --tp-size 1."""
    import psutil

    url1, _ = servers
    proc, url = start_server(str(tiny_model), [*ARGS, "--tp-size", "2", "--dp-size", "2"])
    try:
        engines = [p for p in psutil.Process(proc.pid).children()
                   if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(engines) == 4, engines
        info = requests.get(f"{url}/get_server_info", timeout=30).json()
        assert [s["dp_rank"] for s in info["internal_states"]] == [0, 1]
        body = {"input_ids": prompt(80), "sampling_params": GREEDY, "return_logprob": True}
        expected = generate(url1, body)
        for _ in range(2):  # once on each replica
            assert_same(expected, generate(url, body))
        for state in requests.get(f"{url}/get_server_info", timeout=30).json()[
                "internal_states"]:
            assert state["cache_miss_tokens"] > 0  # each replica ran one
            assert state["integrity_ok"]
    finally:
        stop_server(proc)
