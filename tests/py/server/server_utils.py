"""Start and stop a server subprocess for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

DEMO_MODEL = "smollm2-135m-instruct"
SERVER_ARGS = ["--max-total-tokens", "16384", "--max-running-requests", "32",
               "--random-seed", "1234", "--skip-server-warmup", "--log-level", "warning"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], timeout: float = 600.0
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
           "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if requests.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_idle(url: str, timeout: float = 30.0) -> dict:
    """The engine's internal state once it is idle with no KV held (or the last one seen)."""
    deadline = time.time() + timeout
    state: dict = {}
    while time.time() < deadline:
        state = requests.get(f"{url}/get_server_info", timeout=10).json()["internal_states"][0]
        if state.get("idle") and state.get("num_used_tokens") == 0:
            return state
        time.sleep(0.2)
    return state


def assert_engine_clean(url: str) -> None:
    """Idle, core integrity check passing, no KV held by requests."""
    state = wait_idle(url)
    assert state.get("idle"), f"engine not idle: {state}"
    assert state.get("integrity_ok"), f"core integrity check failed: {state}"
    assert state.get("num_used_tokens") == 0, f"KV still held by requests: {state}"


@contextmanager
def serving(model: str, extra: list[str]) -> Iterator[str]:
    """A server for one test module: yields its URL, checks the engine is clean, stops it."""
    proc, url = start_server(model, extra)
    try:
        yield url
        assert_engine_clean(url)
    finally:
        stop_server(proc)
