"""Server lifecycle: a missing model fails at start with a clear error; a dead engine turns /health
into 503 and fails in-flight requests without hanging; SIGTERM leaves no orphan processes.

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
from server_utils import start_server, stop_server


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


def test_dead_engine_gives_503_and_fails_pending(tiny_server: tuple) -> None:
    proc, url = tiny_server
    assert requests.get(f"{url}/health").status_code == 200
    result: dict = {}

    def long_request() -> None:
        result["r"] = requests.post(f"{url}/generate", json={
            "text": "hello", "sampling_params": {"max_new_tokens": 400, "ignore_eos": True,
                                                 "temperature": 0}}, timeout=120)

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)
    for child in engine_children(proc):
        child.kill()
    t.join(60)
    assert not t.is_alive(), "the pending request hung"
    assert result["r"].status_code >= 500
    deadline = time.time() + 10
    while time.time() < deadline and requests.get(f"{url}/health").status_code != 503:
        time.sleep(0.2)
    assert requests.get(f"{url}/health").status_code == 503
    assert requests.get(f"{url}/health_generate").status_code == 503
    r = requests.post(f"{url}/generate", json={"text": "hi"}, timeout=30)
    assert r.status_code == 503
    assert proc.poll() is None  # the HTTP server itself keeps answering


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
