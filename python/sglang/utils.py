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
    import requests

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


def cpu_model_name() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere), for benchmark
    records."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
    """Appends one JSON line to ``path`` (benchmark results); nothing when ``path`` is None."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ---- the frontend language's HTTP client and media encoding ----------------------------------
class HttpResponse:
    """A non-streaming reply of ``http_request``: ``.json()``, ``.status_code``, ``.text``."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(url: str, json: Any = None, stream: bool = False, api_key: str | None = None,
                 verify: str | None = None, method: str | None = None) -> Any:
    """One request of the frontend's wire protocol (JSON in, JSON or an SSE stream out).

    Sends ``Authorization: Bearer <api_key>`` when a key is given (GETs too). ``verify`` is a CA
    file for https. Any status but 200 raises ``RuntimeError`` with the reply's body. Streaming
    returns the ``requests`` response (iterate ``iter_lines()``).
    """
    import json as _json
    import ssl
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json; charset=utf-8"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if stream:
        import requests

        response = requests.post(url, json=json, stream=True, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(response.text)
        return response
    data = None if json is None else bytes(_json.dumps(json), encoding="utf-8")
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method=method or ("GET" if data is None else "POST"))
    context = ssl.create_default_context(cafile=verify) if verify else None
    try:
        with urllib.request.urlopen(request, context=context) as reply:
            result = HttpResponse(reply.status, reply.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(e.read().decode("utf-8", errors="replace")) from None
    if result.status_code != 200:
        raise RuntimeError(result.text)
    return result


def encode_image_base64(image: Any) -> str:
    """Raw base64 of an image given as a file path, bytes, a PIL image or a CHW/HWC tensor."""
    import base64
    import io

    if isinstance(image, str):
        with open(image, "rb") as f:
            return base64.b64encode(f.read()).decode("utf-8")
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("utf-8")
    if hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("utf-8")
    if hasattr(image, "cpu") and hasattr(image, "numpy"):  # a torch tensor
        from PIL import Image

        array = image.cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        if array.dtype != "uint8":
            array = (array * 255).clip(0, 255).astype("uint8")
        return encode_image_base64(Image.fromarray(array.squeeze()))
    raise TypeError(f"cannot encode an image of type {type(image).__name__}")


def encode_video_base64(video_path: str, num_frames: int = 16) -> str:
    """``"video:"`` + base64 of ``num_frames`` evenly spaced PNG frames (needs opencv-python)."""
    import base64

    try:
        import cv2
    except ImportError:
        raise ImportError("sgl.video needs opencv: pip install opencv-python") from None
    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise OSError(f"Could not open video file: {video_path}")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = {int(i * total / num_frames) for i in range(num_frames)} if total else set()
    frames = []
    for index in range(total):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(cv2.imencode(".png", frame)[1].tobytes())
    capture.release()
    return "video:" + base64.b64encode(b"".join(frames)).decode("utf-8")


class LazyImport:
    """A stand-in for ``module.name`` that imports it on first use (call or attribute)."""

    def __init__(self, module_name: str, class_name: str) -> None:
        self.module_name = module_name
        self.class_name = class_name
        self._module: Any = None

    def _load(self) -> Any:
        if self._module is None:
            import importlib

            module = importlib.import_module(self.module_name)
            self._module = getattr(module, self.class_name)
        return self._module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._load(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyImport({self.module_name}.{self.class_name})"
