"""Helpers used by SGLang's docs and notebooks: start a server, wait for it, print, stop it.

Pure client code: no torch, no native modules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from typing import Any

import requests

_port_locks: dict[int, socket.socket] = {}


def print_highlight(html_content: Any) -> None:
    if os.environ.get("SGLANG_IS_IN_CI"):
        try:
            from IPython.display import HTML, display

            html = str(html_content).replace("\n", "<br>")
            display(HTML(f"<strong style='color: #00008B;'>{html}</strong>"))
            return
        except ImportError:
            pass
    print(html_content)


def wait_for_server(base_url: str, timeout: float | None = None,
                    process: subprocess.Popen | None = None) -> None:
    """Polls GET {base_url}/v1/models every second until it answers 200."""
    start = time.perf_counter()
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Server process exited with code {process.returncode}")
        try:
            r = requests.get(f"{base_url}/v1/models",
                             headers={"Authorization": "Bearer None"}, timeout=5)
            if r.status_code == 200:
                time.sleep(5)
                print_highlight(
                    "\n\n    NOTE: Typically, the server runs in a separate terminal.\n"
                    "    In this notebook, we run the server and notebook code together, so "
                    "their outputs are combined.\n    To improve clarity, the server logs are "
                    "displayed in the original black color, while the notebook outputs are "
                    "highlighted in blue.\n    To reduce the log length, we set the log level "
                    "to warning for the server, the default log level is info.\n    We are "
                    "running those notebooks in a CI environment, so the throughput is not "
                    "representative of the actual performance.\n    "
                )
                return
        except requests.RequestException:
            pass
        if timeout is not None and time.perf_counter() - start > timeout:
            raise TimeoutError("Server did not become ready within timeout period")
        time.sleep(1)


def _reserve_port(host: str = "0.0.0.0", start: int = 30000, end: int = 40000) -> int:
    import random

    for _ in range(1000):
        port = random.randint(start, end - 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            continue
        _port_locks[port] = sock
        return port
    raise RuntimeError("no free port in [30000, 40000)")


def _release_port(port: int) -> None:
    sock = _port_locks.pop(port, None)
    if sock is not None:
        sock.close()


def launch_server_cmd(command: str, host: str = "0.0.0.0", port: int | None = None
                      ) -> tuple[subprocess.Popen, int]:
    """Runs ``f"{command} --port {port}"`` (a free port when None); returns (process, port)."""
    if port is None:
        port = _reserve_port(host)
    _release_port(port)  # the server binds it now
    command = command.replace("\\\n", " ").replace("\\", " ")
    parts = f"{command} --port {port}".split()
    env = dict(os.environ)
    while parts and "=" in parts[0] and not parts[0].startswith("-"):
        key, value = parts.pop(0).split("=", 1)
        env[key] = value
    proc = subprocess.Popen(parts, text=True, stderr=subprocess.STDOUT, env=env)
    return proc, port


def terminate_process(process: subprocess.Popen) -> None:
    """Kills the process and all its children."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(process.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        process.kill()
    for port, sock in list(_port_locks.items()):
        sock.close()
        _port_locks.pop(port, None)


def trim_overlap(existing_text: str, new_chunk: str) -> str:
    """The part of new_chunk not already at the end of existing_text."""
    max_overlap = 0
    for i in range(1, min(len(existing_text), len(new_chunk)) + 1):
        if existing_text.endswith(new_chunk[:i]):
            max_overlap = i
    return new_chunk[max_overlap:]


def stream_and_merge(llm: Any, prompt: str, sampling_params: dict[str, Any]) -> str:
    final_text = ""
    for chunk in llm.generate(prompt, sampling_params, stream=True):
        final_text += trim_overlap(final_text, chunk["text"])
    return final_text


async def async_stream_and_merge(llm: Any, prompt: str, sampling_params: dict[str, Any]):
    final_text = ""
    generator = await llm.async_generate(prompt, sampling_params, stream=True)
    async for chunk in generator:
        cleaned = trim_overlap(final_text, chunk["text"])
        final_text += cleaned
        yield cleaned


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
    """Appends one JSON line to ``path`` (benchmark results); nothing when ``path`` is None."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
