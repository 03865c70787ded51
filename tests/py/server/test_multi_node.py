"""Two "nodes" on one machine: --tp-size 2 --nnodes 2, node ranks 0 and 1 on loopback (gloo).

Each node is its own launch command, as on two machines: node 1 runs TP rank 1 only (and a
/health probe), node 0 runs rank 0 with the HTTP server. They serve the tiny random Llama
(float32) together with transformers' greedy tokens and logprobs. Killing node 1 (its whole
process group, as a machine going down) fails an in-flight request within seconds, makes /health
answer 503, and without --engine-restart ends node 0 even while idle; with --engine-restart node 0
waits for node 1 to come back and then serves again. Stopping node 0 stops node 1 cleanly (exit
0). A node whose peers never come, or started with other flags, fails with a clear error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from server_utils import assert_engine_clean, free_port, start_server, stop_server
from sglang.srt.server_args import ServerArgs, dist_init_url, parse_dist_init_addr

ARGS = ["--dtype", "float32", "--max-total-tokens", "2048", "--random-seed", "7",
        "--skip-server-warmup", "--log-level", "warning", "--tp-size", "2", "--nnodes", "2"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}
PROMPTS = [[500 + 37 * i for i in range(n)] for n in (6, 13, 21)]


def node_args(addr: str, rank: int, *extra: str) -> list[str]:
    return [*ARGS, "--dist-init-addr", addr, "--node-rank", str(rank), *extra]


def launch_node1(model: Path, addr: str, *extra: str, env: dict | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """Node 1's launch command (not waited for: it runs until node 0 has met it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
           "--port", str(port), *node_args(addr, 1, *extra)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def kill_node(proc: subprocess.Popen) -> None:
    """The machine goes down: every process of the node at once."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{out.decode()[-2000:]}") \
            from None
    return proc.returncode, (out or b"").decode()


def generate(url: str, body: dict, timeout: float = 120) -> dict | list:
    r = requests.post(f"{url}/generate", json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> list[tuple[list[int], list[float]]]:
    """transformers' greedy tokens and their logprobs for PROMPTS."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in PROMPTS:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=0, eos_token_id=None)
            tokens = gen.sequences[0, len(ids):].tolist()
            logprobs = [torch.log_softmax(s[0].float(), -1)[t].item()
                        for s, t in zip(gen.scores, tokens, strict=True)]
            out.append((tokens, logprobs))
    return out


def test_dist_init_addr_parsing() -> None:
    assert parse_dist_init_addr("10.0.0.1:5000") == ("10.0.0.1", 5000)
    assert parse_dist_init_addr("[::1]:29500") == ("::1", 29500)
    assert dist_init_url("[::1]:29500") == "tcp://[::1]:29500"
    assert dist_init_url("node0:5000") == "tcp://node0:5000"
    for bad in ("10.0.0.1", "10.0.0.1:", ":5000", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="--dist-init-addr"):
            parse_dist_init_addr(bad)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nnodes": 0}, "--nnodes must be at least 1"),
    ({"nnodes": 2, "node_rank": 2, "tp_size": 2, "dist_init_addr": "h:1"}, "--node-rank"),
    ({"node_rank": -1}, "--node-rank"),
    ({"nnodes": 2, "tp_size": 2}, "needs --dist-init-addr"),
    ({"nnodes": 2, "tp_size": 3, "dist_init_addr": "h:1"}, "multiple of --nnodes"),
    ({"nnodes": 2, "tp_size": 1, "dist_init_addr": "h:1"}, "multiple of --nnodes"),
    ({"nnodes": 2, "tp_size": 2, "dp_size": 2, "dist_init_addr": "h:1"}, "--dp-size"),
    ({"dist_init_addr": "nowhere"}, "--dist-init-addr"),
])
def test_node_flags_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerArgs(model_path="x", device="cpu", **kwargs)


def test_node_ranks_layout() -> None:
    args = ServerArgs(model_path="x", device="cpu", tp_size=4, nnodes=2, node_rank=1,
                      dist_init_addr="127.0.0.1:5000")
    assert args.ranks_per_node == 2 and list(args.node_tp_ranks()) == [2, 3]
    assert list(ServerArgs(model_path="x", device="cpu", tp_size=2).node_tp_ranks()) == [0, 1]


def test_engine_refuses_a_worker_node() -> None:
    import sglang as sgl

    with pytest.raises(ValueError, match="launch_server"):
        sgl.Engine(model_path="x", device="cpu", tp_size=2, nnodes=2, node_rank=1,
                   dist_init_addr="127.0.0.1:5000")


def assert_matches(out: dict, ref: tuple[list[int], list[float]]) -> None:
    assert out["output_ids"] == ref[0]
    got = [lp for lp, _tok, *_ in out["meta_info"]["output_token_logprobs"]]
    assert max(abs(a - b) for a, b in zip(got, ref[1], strict=True)) < 1e-4, (got, ref[1])


def test_two_nodes_serve_together_and_a_dead_node_ends_node0(
        tiny_model: Path, reference: list) -> None:
    addr = f"127.0.0.1:{free_port()}"
    node1, health1 = launch_node1(tiny_model, addr)
    try:
        node0, url = start_server(str(tiny_model), node_args(addr, 0))
        try:
            for ids, ref in zip(PROMPTS, reference, strict=True):
                body = {"input_ids": ids, "sampling_params": GREEDY, "return_logprob": True}
                assert_matches(generate(url, body), ref)
            batch = generate(url, {"input_ids": PROMPTS, "sampling_params": GREEDY,
                                   "return_logprob": True})
            for out, ref in zip(batch, reference, strict=True):
                assert_matches(out, ref)
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
            assert requests.get(f"{health1}/health", timeout=10).status_code == 200
            r = requests.post(f"{health1}/generate", json={}, timeout=10)
            assert r.status_code == 404 and "node 0" in r.text
            assert_engine_clean(url)
            # Node 1 goes down while node 0 is idle: no request needed for node 0 to notice.
            kill_node(node1)
            code, _ = wait_exit(node0, 15)
            assert code != 0
        finally:
            stop_server(node0)
    finally:
        if node1.poll() is None:
            kill_node(node1)


def test_killed_node_fails_fast_then_rejoins(tiny_model: Path, reference: list) -> None:
    """--engine-restart on both: node 1 killed mid-request -> the request fails within seconds
    and /health is 503; a new node 1 joins the restarted engine, which serves again. Stopping
    node 0 then stops node 1 with exit code 0."""
    addr = f"127.0.0.1:{free_port()}"
    node1, _ = launch_node1(tiny_model, addr, "--engine-restart")
    node0, url = start_server(str(tiny_model), node_args(addr, 0, "--engine-restart"))
    try:
        body = {"input_ids": PROMPTS[0], "sampling_params": GREEDY, "return_logprob": True}
        assert_matches(generate(url, body), reference[0])
        long_body = {"input_ids": PROMPTS[1],
                     "sampling_params": {"temperature": 0, "max_new_tokens": 400,
                                         "ignore_eos": True}}
        result: dict = {}

        def in_flight() -> None:
            start = time.time()
            r = requests.post(f"{url}/generate", json=long_body, timeout=120)
            result.update(status=r.status_code, text=r.text, seconds=time.time() - start,
                          at=time.time())

        thread = threading.Thread(target=in_flight)
        thread.start()
        deadline = time.time() + 30
        while requests.get(f"{url}/get_server_info", timeout=10).json()[
                "internal_states"][0].get("num_running_reqs", 0) < 1:
            assert time.time() < deadline, "the long request never ran"
            time.sleep(0.02)
        killed = time.time()
        kill_node(node1)
        thread.join(30)
        assert result and result["status"] >= 500, result
        assert result["at"] - killed < 5, result  # failed fast, not after a timeout
        deadline = time.time() + 5
        while requests.get(f"{url}/health", timeout=30).status_code == 200:
            assert time.time() < deadline, "the dead node was not noticed"
            time.sleep(0.1)
        r = requests.post(f"{url}/generate", json=body, timeout=30)
        assert r.status_code == 503, r.text  # node 0 waits for its ranks to come back
        node1, _ = launch_node1(tiny_model, addr, "--engine-restart")
        deadline = time.time() + 180
        while requests.get(f"{url}/health", timeout=30).status_code != 200:
            assert time.time() < deadline, "the nodes did not meet again"
            assert node1.poll() is None, node1.communicate()[0].decode()[-2000:]
            time.sleep(0.5)
        assert_matches(generate(url, body), reference[0])
        assert_engine_clean(url)
        stop_server(node0)
        code, log = wait_exit(node1, 20)
        assert code == 0, log[-2000:]
    finally:
        stop_server(node0)
        if node1.poll() is None:
            kill_node(node1)


def test_nodes_that_never_meet_fail_clearly(tiny_model: Path) -> None:
    """Node 0 without node 1 (and node 1 without node 0): each gives up after the group's
    timeout with a non-zero exit, instead of waiting forever."""
    env = {"SGLANG_TP_TIMEOUT": "6"}
    lone1, _ = launch_node1(tiny_model, f"127.0.0.1:{free_port()}", env=env)
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_model),
           "--port", str(port), *node_args(f"127.0.0.1:{free_port()}", 0)]
    lone0 = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    code0, log0 = wait_exit(lone0, 90)
    code1, log1 = wait_exit(lone1, 90)
    assert code0 != 0 and "engine failed to start" in log0, log0[-2000:]
    assert code1 != 0 and "rank of node 1 failed" in log1, log1[-2000:]


def test_nodes_with_other_flags_refuse_to_serve(tiny_model: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    node1, _ = launch_node1(tiny_model, addr, "--context-length", "256")
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_model),
           "--port", str(port), *node_args(addr, 0)]
    node0 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    code0, log0 = wait_exit(node0, 120)
    code1, log1 = wait_exit(node1, 120)
    assert code0 != 0 and "other flags than rank 0" in log0, log0[-2000:]
    assert code1 != 0 and "context_length=256" in log1, log1[-2000:]
