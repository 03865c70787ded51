"""Server lifecycle: a missing model fails at start with a clear error; a dead engine fails in-flight
requests without hanging (a server error event for streams) and the server exits non-zero, or
restarts the engine with --engine-restart; SIGTERM leaves no orphan processes.

Uses its own small server: a tiny random Llama with the demo model's tokenizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from server_utils import (
    DEMO_MODEL,
    free_port,
    sse_events,
    start_server,
    stop_server,
    wait_running,
)

DEATH_ARGS = ["--max-total-tokens", "8192", "--skip-server-warmup", "--log-level", "warning"]


@pytest.fixture()
def tiny_server(tiny_model: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, url = start_server(str(tiny_model), ["--max-total-tokens", "4096",
                                               "--skip-server-warmup", "--log-level", "warning"])
    try:
        yield proc, url
    finally:
        stop_server(proc)


def engine_children(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def test_unknown_model_fails_at_start_with_the_path() -> None:
    missing = "/nonexistent/model-folder"
    result = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", missing, "--port", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode != 0
    assert missing in result.stderr


LONG = {"text": "hello", "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True,
                                             "temperature": 0}}


def kill_engine_mid_request(proc: subprocess.Popen, url: str) -> tuple[dict, list]:
    """Starts a plain and a streamed request, kills the engine once both run; returns the plain
    reply (status, body) and the stream's events after the first chunk."""
    plain: dict = {}

    def long_request() -> None:
        r = requests.post(f"{url}/generate", json=LONG, timeout=300)
        plain["status"], plain["body"] = r.status_code, r.json()

    t = threading.Thread(target=long_request)
    t.start()
    with requests.post(f"{url}/generate", json={**LONG, "stream": True}, stream=True,
                       timeout=300) as r:
        events = sse_events(r)
        first = next(events)
        assert first["meta_info"]["finish_reason"] is None
        wait_running(url, 2)
        for child in engine_children(proc):
            child.kill()
        rest = list(events)
    t.join(120)
    assert not t.is_alive(), "the pending request hung"
    return plain, rest


@pytest.fixture()
def demo_server() -> Iterator[tuple[subprocess.Popen, str]]:
    """The demo model: slow enough that a 3000-token request is still running when killed."""
    proc, url = start_server(DEMO_MODEL, DEATH_ARGS)
    try:
        yield proc, url
    finally:
        stop_server(proc)


def test_dead_engine_fails_pending_and_the_server_exits(demo_server: tuple) -> None:
    proc, url = demo_server
    assert requests.get(f"{url}/health").status_code == 200
    plain, rest = kill_engine_mid_request(proc, url)
    assert plain["status"] == 500
    assert "engine process died" in plain["body"]["message"]
    # The stream ends with a server error event (retryable), then [DONE].
    assert rest[-1] == "[DONE]"
    error = rest[-2]["error"]
    assert error["type"] == "server_error" and error["code"] == 500 and error["retryable"]
    # No zombie server answering 503 forever: it exits non-zero so a supervisor restarts it.
    assert proc.wait(60) != 0


def test_engine_restart_serves_again() -> None:
    proc, url = start_server(DEMO_MODEL, [*DEATH_ARGS, "--engine-restart"])
    try:
        old_engine = engine_children(proc)
        plain, rest = kill_engine_mid_request(proc, url)
        assert plain["status"] == 500 and rest[-2]["error"]["code"] == 500
        deadline = time.time() + 300
        while True:  # refused (503 + Retry-After, never a hang) until the new engine serves
            r = requests.post(f"{url}/generate", json={
                "text": "hi", "sampling_params": {"max_new_tokens": 4}}, timeout=60)
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert time.time() < deadline, "the engine was not restarted"
            time.sleep(0.1)
        assert len(r.json()["output_ids"]) == 4
        info = requests.get(f"{url}/get_server_info", timeout=30).json()
        assert info["status"] == "ready" and info["engine_restarts"] == 1, info
        assert requests.get(f"{url}/health").status_code == 200
        assert proc.poll() is None
        assert {p.pid for p in engine_children(proc)}.isdisjoint(p.pid for p in old_engine)
    finally:
        stop_server(proc)


def test_sigterm_leaves_no_orphans(tiny_server: tuple) -> None:
    proc, url = tiny_server
    assert requests.post(f"{url}/generate", json={"text": "hi", "sampling_params": {
        "max_new_tokens": 2}}).status_code == 200
    children = engine_children(proc)
    assert children, "expected an engine process"
    proc.terminate()
    proc.wait(30)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"orphans left: {[p.pid for p in alive]}"


def test_ctrl_c_stops_everything(tiny_model: Path) -> None:
    proc, _url = start_server(str(tiny_model), ["--max-total-tokens", "4096",
                                               "--skip-server-warmup", "--log-level", "warning"])
    children = engine_children(proc)
    os.kill(proc.pid, 2)  # SIGINT
    proc.wait(30)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive


def test_health_fails_until_the_warm_up_request_is_done(tiny_model: Path, tmp_path: Path) -> None:
    """Health checks pass only after the warm-up request ended, so a client (or a test) that
    waits for /health never finds the warm-up still running in the engine."""
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_model),
             "--port", str(port), "--max-total-tokens", "4096", "--log-level", "info"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    # (/health, /ready, status) in the order observed; read in this order, a passing health
    # check must be followed by "ready" in the other two (the status never goes back).
    seen: list[tuple[int, int, str]] = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (not seen or seen[-1][0] != 200):
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                health = requests.get(f"{url}/health", timeout=30).status_code
                ready = requests.get(f"{url}/ready", timeout=30).status_code
                status = requests.get(f"{url}/get_server_info", timeout=30).json()["status"]
            except requests.ConnectionError:
                time.sleep(0.01)  # polls faster than the warm-up thread, so it sees the start
                continue
            seen.append((health, ready, status))
        assert seen[0] == (503, 503, "starting"), seen
        assert seen[-1] == (200, 200, "ready"), seen
        # Once healthy, the engine holds nothing: the warm-up request is over.
        info = requests.get(f"{url}/get_server_info", timeout=30).json()
        assert info["internal_states"][0]["num_running_reqs"] == 0, info["internal_states"]
        assert "ready to roll" in log.read_text(errors="replace")
    finally:
        stop_server(proc)
