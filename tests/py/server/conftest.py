"""One server for the server tests: SmolLM2-135M-Instruct (the demo alias), started once per session.

``server`` yields its base URL; every test module ends by checking the engine is idle, its core
integrity check passes and no KV memory is held by requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from server_utils import DEMO_MODEL, SERVER_ARGS, start_server, stop_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    proc, url = start_server(DEMO_MODEL, SERVER_ARGS)
    try:
        yield url
    finally:
        stop_server(proc)


def wait_idle(url: str, timeout: float = 30.0) -> dict:
    deadline = time.time() + timeout
    state: dict = {}
    while time.time() < deadline:
        state = requests.get(f"{url}/get_server_info", timeout=10).json()["internal_states"][0]
        if state.get("idle") and state.get("num_used_tokens") == 0:
            return state
        time.sleep(0.2)
    return state


@pytest.fixture(scope="module", autouse=True)
def engine_idle_after_module(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" not in request.fixturenames:
        return
    url = request.getfixturevalue("server")
    state = wait_idle(url)
    assert state.get("idle"), f"engine not idle after the module: {state}"
    assert state.get("integrity_ok"), f"core integrity check failed: {state}"
    assert state.get("num_used_tokens") == 0, f"KV still held by requests: {state}"
