"""Start and stop a server subprocess for tests."""

from __future__ import annotations

import json
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


def start_server(model: str, extra: list[str], timeout: float = 600.0,
                 headers: dict[str, str] | None = None, log_path: str | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """Starts a server and waits until its health check passes (after the warm-up request,
    if any); ``headers`` for a server with an API key, ``log_path`` to capture its output."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
           "--port", str(port), *extra]
    out = open(log_path, "wb") if log_path else None  # noqa: SIM115 (the child writes to it)
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
                            stderr=subprocess.STDOUT if out else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if requests.get(f"{url}/health", headers=headers, timeout=5).status_code == 200:
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


def server_state(url: str, headers: dict[str, str] | None = None) -> dict:
    """The engine's internal state (from /get_server_info)."""
    info = requests.get(f"{url}/get_server_info", headers=headers, timeout=30).json()
    return info["internal_states"][0]


def wait_idle(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> dict:
    """The engine's internal state once it is idle with no KV held (or the last one seen)."""
    deadline = time.time() + timeout
    state: dict = {}
    while time.time() < deadline:
        state = server_state(url, headers)
        if state.get("idle") and state.get("num_used_tokens") == 0:
            return state
        time.sleep(0.2)
    return state


def wait_running(url: str, count: int, timeout: float = 120.0,
                 headers: dict[str, str] | None = None) -> dict:
    """Waits until the engine runs at least ``count`` requests (an event, not a delay)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = server_state(url, headers)
        if state.get("num_running_reqs", 0) >= count:
            return state
        time.sleep(0.02)
    raise AssertionError(f"{count} requests never ran")


def assert_engine_clean(url: str, headers: dict[str, str] | None = None) -> None:
    """Idle, core integrity check passing, no KV held by requests."""
    state = wait_idle(url, headers=headers)
    assert state.get("idle"), f"engine not idle: {state}"
    assert state.get("integrity_ok"), f"core integrity check failed: {state}"
    assert state.get("num_used_tokens") == 0, f"KV still held by requests: {state}"


def sse_events(resp: requests.Response) -> Iterator[dict | str]:
    """The events of an SSE response: parsed JSON objects, and "[DONE]"."""
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            data = line[len(b"data: "):]
            yield "[DONE]" if data == b"[DONE]" else json.loads(data)


@contextmanager
def serving(model: str, extra: list[str]) -> Iterator[str]:
    """A server for one test module: yields its URL, checks the engine is clean, stops it."""
    proc, url = start_server(model, extra)
    try:
        yield url
        assert_engine_clean(url)
    finally:
        stop_server(proc)


# Custom logit processors written as a user writes them in a script or notebook, i.e. in
# ``__main__``: dill sends those by value (a class importable from a test module would go by
# reference, and the server could not import it).
USER_SCRIPT = """
class DeterministicLogitProcessor(CustomLogitProcessor):
    # The docs' example: every row forced to its custom_params["token_id"].
    def __call__(self, logits, custom_param_list=None):
        for i, params in enumerate(custom_param_list):
            logits[i, :] = -float("inf")
            logits[i, params["token_id"]] = 0.0
        return logits


class CountingProcessor(CustomLogitProcessor):
    # Reads its request through __req__: token (prompt length + 2 + tokens generated so far).
    def __call__(self, logits, custom_param_list=None):
        for i, params in enumerate(custom_param_list):
            req = params["__req__"]
            logits[i, :] = -float("inf")
            logits[i, len(req.origin_input_ids) + 2 + len(req.output_ids)] = 0.0
        return logits


class FailingProcessor(CustomLogitProcessor):
    def __call__(self, logits, custom_param_list=None):
        raise RuntimeError("boom")
"""


def user_logit_processors() -> dict[str, type]:
    """The classes of ``USER_SCRIPT``, defined in a ``__main__`` namespace."""
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    user = {"__name__": "__main__", "CustomLogitProcessor": CustomLogitProcessor}
    exec(USER_SCRIPT, user)  # noqa: S102 - the tests' stand-in for a user's script
    return {k: v for k, v in user.items()
            if k.endswith("Processor") and k != "CustomLogitProcessor"}

