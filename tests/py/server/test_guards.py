"""The guards every route inherits: API keys, the body limit, the bounded queue, and the metrics.

The guards' rules are first checked as plain ASGI apps (every key configuration); then a server
started with both keys, a 1 MB body limit, a 4-request queue and metrics is attacked as a client
would: the auth matrix of the contract (section 1.3), keys absent from every reply and log line,
413s, and a burst of 4x --max-queued-requests that gets 503s with Retry-After while /metrics
counts exactly what was sent. Issue #9: defect 1, acceptance 2 and 5.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from server_utils import DEMO_MODEL, assert_engine_clean, start_server, stop_server
from sglang.srt.entrypoints.http_guards import ApiKeyGuard, BodyLimitGuard, admin_optional
from starlette.routing import Route

USER_KEY = "user-secret-4242"
ADMIN_KEY = "admin-secret-8686"
MAX_QUEUED = 4


# ---- the guards alone ------------------------------------------------------------------------------
async def _ok(scope: dict, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app, method: str, path: str, headers: dict[str, str] | None = None,
         chunks: list[bytes] | None = None, content_length: int | None = None) -> int:
    """Runs one request through an ASGI app; returns the status."""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length is not None:
        raw.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": raw,
             "query_string": b"", "root_path": ""}
    parts = list(chunks or [b""])
    sent: list[dict] = []

    async def receive() -> dict:
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def _routes() -> list[Route]:
    def admin() -> None: ...

    return [Route("/generate", _ok, methods=["POST"]),
            Route("/flush_cache", admin_optional(admin), methods=["POST"])]


@pytest.mark.parametrize("api_key,admin_key,expected", [
    # rows: (no key, user key, admin key, wrong key) on a normal route, then on an admin route
    (None, None, ((200, 200, 200, 200), (200, 200, 200, 200))),
    (USER_KEY, None, ((401, 200, 401, 401), (401, 200, 401, 401))),
    (None, ADMIN_KEY, ((200, 200, 200, 200), (401, 401, 200, 401))),
    (USER_KEY, ADMIN_KEY, ((401, 200, 401, 401), (401, 401, 200, 401))),
])
def test_api_key_rules(api_key: str | None, admin_key: str | None, expected: tuple) -> None:
    guard = ApiKeyGuard(_ok, api_key, admin_key, _routes)
    keys = [None, USER_KEY, ADMIN_KEY, "wrong"]
    for path, row in zip(("/generate", "/flush_cache"), expected):
        got = tuple(call(guard, "POST", path,
                         {"Authorization": f"Bearer {k}"} if k else None) for k in keys)
        assert got == row, (path, got)
    for path in ("/health", "/health_generate", "/ready", "/metrics"):
        assert call(guard, "GET", path) == 200
    assert call(guard, "OPTIONS", "/generate") == 200


def test_bearer_scheme_is_case_insensitive_and_exact() -> None:
    guard = ApiKeyGuard(_ok, USER_KEY, None, _routes)
    assert call(guard, "POST", "/generate", {"Authorization": f"bearer {USER_KEY}"}) == 200
    assert call(guard, "POST", "/generate", {"Authorization": f"BEARER {USER_KEY}"}) == 200
    for bad in (USER_KEY, f"Basic {USER_KEY}", f"Bearer {USER_KEY} ", f"Bearer {USER_KEY[:-1]}",
                "Bearer", ""):
        assert call(guard, "POST", "/generate", {"Authorization": bad}) == 401, bad


def test_body_limit_by_length_and_by_stream() -> None:
    guard = BodyLimitGuard(_ok, max_bytes=100)
    assert call(guard, "POST", "/generate", chunks=[b"x" * 100], content_length=100) == 200
    assert call(guard, "POST", "/generate", chunks=[b"x" * 101], content_length=101) == 413
    # No Content-Length (chunked): counted as it streams in.
    assert call(guard, "POST", "/generate", chunks=[b"x" * 60, b"x" * 60]) == 413
    assert call(guard, "POST", "/generate", chunks=[b"x" * 50, b"x" * 50]) == 200


# ---- a guarded server ----------------------------------------------------------------------------
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    proc, url = start_server(DEMO_MODEL, [
        "--api-key", USER_KEY, "--admin-api-key", ADMIN_KEY, "--enable-metrics",
        "--max-request-body-bytes", "1000000", "--max-queued-requests", str(MAX_QUEUED),
        "--max-running-requests", "2", "--max-total-tokens", "8192", "--random-seed", "3",
        "--log-level", "info"], headers=USER, log_path=str(log))
    try:
        yield url, log
        assert_engine_clean(url, headers=USER)
    finally:
        stop_server(proc)
    text = log.read_text(errors="replace")
    assert "POST /generate" in text  # the log was captured
    assert USER_KEY not in text and ADMIN_KEY not in text


ROUTES = [  # (method, path, body, level)
    ("GET", "/health", None, "open"),
    ("GET", "/health_generate", None, "open"),
    ("GET", "/ready", None, "open"),
    ("GET", "/metrics", None, "open"),
    ("GET", "/v1/models", None, "user"),
    ("GET", "/get_model_info", None, "user"),
    ("GET", "/get_server_info", None, "user"),
    ("POST", "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}, "user"),
    ("POST", "/tokenize", {"prompt": "Hi"}, "user"),
    ("POST", "/detokenize", {"tokens": [1, 2]}, "user"),
    ("POST", "/flush_cache", None, "admin"),
    ("POST", "/abort_request", {"rid": "nobody"}, "admin"),
    ("POST", "/abort_request", {"abort_all": True}, "admin"),
    ("GET", "/get_weight_version", None, "user"),
    # the served demo GGUF again: a real (quantized) weight reload, allowed for the admin only
    ("POST", "/update_weights_from_disk", {"model_path": "smollm2-135m-instruct"}, "admin"),
]


@pytest.mark.parametrize("method,path,body,level", ROUTES)
def test_auth_matrix(guarded: tuple, method: str, path: str, body: dict | None,
                     level: str) -> None:
    url, _ = guarded
    for name, headers in (("none", {}), ("user", USER), ("admin", ADMIN),
                          ("wrong", {"Authorization": "Bearer nope"})):
        r = requests.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
        allowed = level == "open" or name == level
        if allowed:
            assert r.status_code == 200, (path, name, r.status_code, r.text[:200])
        else:
            assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"}), (path, name)
        assert USER_KEY not in r.text and ADMIN_KEY not in r.text


def test_unknown_route_needs_the_key_first(guarded: tuple) -> None:
    url, _ = guarded
    assert requests.get(f"{url}/nope").status_code == 401
    assert requests.get(f"{url}/nope", headers=USER).status_code == 404


def test_server_info_redacts_the_keys(guarded: tuple) -> None:
    url, _ = guarded
    r = requests.get(f"{url}/get_server_info", headers=USER)
    info = r.json()
    assert info["api_key"] == info["admin_api_key"] == "<redacted>"
    assert info["internal_states"][0]["api_key"] == "<redacted>"
    assert USER_KEY not in r.text and ADMIN_KEY not in r.text


def test_body_over_the_limit_is_413(guarded: tuple) -> None:
    url, _ = guarded
    big = {"text": "x" * 1_100_000}
    r = requests.post(f"{url}/generate", json=big, headers=USER)
    assert r.status_code == 413
    assert r.json()["code"] == 413 and "--max-request-body-bytes" in r.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it streams in
        yield b'{"text": "'
        for _ in range(12):
            yield b"y" * 100_000
        yield b'"}'

    r = requests.post(f"{url}/generate", data=chunks(), headers=USER)
    assert r.status_code == 413
    ok = requests.post(f"{url}/generate", json={"text": "Hi", "sampling_params": {
        "max_new_tokens": 2}}, headers=USER)
    assert ok.status_code == 200


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    for (n, lbls), v in samples.items():
        if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()):
            return v
    return 0.0


def test_metrics_names(guarded: tuple) -> None:
    url, _ = guarded
    samples = _samples(url)
    names = {n for n, _ in samples}
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                 "sglang:cache_hit_rate", "sglang:gen_throughput",
                 "sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                 "sglang:num_requests_total", "sglang:num_aborted_requests_total",
                 "sglang:time_to_first_token_seconds_bucket",
                 "sglang:inter_token_latency_seconds_bucket",
                 "sglang:e2e_request_latency_seconds_bucket"):
        assert name in names, name
    assert _value(samples, "sglang:num_running_reqs", model_name=DEMO_MODEL) == 0


def test_overload_burst_gets_503_and_counts_match(guarded: tuple) -> None:
    url, _ = guarded
    before = _samples(url)
    burst = 4 * MAX_QUEUED * 2  # four times the queue, plus the running slots' worth
    tokens = 32
    replies: list[requests.Response] = []
    lock = threading.Lock()
    go = threading.Barrier(burst)

    def one(i: int) -> None:
        go.wait()
        r = requests.post(f"{url}/generate", headers=USER, timeout=600, json={
            "text": f"Request {i}: tell me a story.",
            "sampling_params": {"max_new_tokens": tokens, "ignore_eos": True}})
        with lock:
            replies.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(replies) == burst, "a request hung"
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 503]
    assert len(ok) + len(refused) == burst, [r.status_code for r in replies]
    assert refused and len(ok) >= MAX_QUEUED
    for r in refused:
        assert r.headers["Retry-After"] == "1"
        assert r.json() == {"object": "error", "message": "The request queue is full.",
                            "type": "503", "param": None, "code": 503}
    assert all(len(r.json()["output_ids"]) == tokens for r in ok)
    # The server serves normally afterwards.
    after_burst = requests.post(f"{url}/generate", headers=USER, json={
        "text": "Hi", "sampling_params": {"max_new_tokens": 3}})
    assert after_burst.status_code == 200
    after = _samples(url)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("sglang:num_requests_total") == burst + 1
    assert delta("sglang:num_failed_requests_total", code="503") == len(refused)
    assert delta("sglang:generation_tokens_total") == tokens * len(ok) + 3
    assert delta("sglang:e2e_request_latency_seconds_count") == len(ok) + 1
    assert delta("sglang:time_to_first_token_seconds_count") == len(ok) + 1
    assert delta("sglang:inter_token_latency_seconds_count") == (tokens - 1) * len(ok) + 2
    assert delta("sglang:num_aborted_requests_total") == 0
