"""Schema fuzzing: every route of the server's OpenAPI schema, hit with generated requests.

schemathesis walks the schema the server publishes (/openapi.json), so a new route is fuzzed
without touching this file. Each operation gets up to ``EXAMPLES`` generated cases (hypothesis,
derandomized: the same cases every run), valid and invalid; every reply must be < 500 within the
timeout; afterwards the engine is alive, idle and integrity-clean, and at least ``MIN_CASES``
cases ran. The server is the demo model with small limits, so every generation is short and
the run is bounded in time. Issue #9, acceptance 3; the OpenAI and Anthropic routes of issue
#10 are in the schema, so they are fuzzed too, and LoRA is enabled so that ``lora_path`` and the
adapter routes run their checks (issue #15).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest
import requests
from server_utils import DEMO_MODEL, assert_engine_clean, start_server, stop_server

schemathesis = pytest.importorskip("schemathesis")  # a test dependency (absent on GPU images)
from hypothesis import HealthCheck, settings  # schemathesis brings hypothesis

EXAMPLES = 40
MIN_CASES = 1000
TIMEOUT_S = 120
CASES: list[tuple[str, str, int]] = []


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[str]:
    proc, url = start_server(DEMO_MODEL, [
        "--context-length", "96", "--max-total-tokens", "4096", "--max-running-requests", "8",
        "--preferred-sampling-params", '{"max_new_tokens": 4}',
        "--max-n", "4", "--max-batch-size", "8", "--max-stop-strings", "4",
        "--enable-metrics", "--random-seed", "11", "--skip-server-warmup",
        "--enable-lora", "--max-loras-per-batch", "2", "--max-lora-rank", "8",
        "--log-level", "warning"])
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: str):
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx_or_hangs(case, fuzz_server: str) -> None:
    response = case.call(base_url=fuzz_server, timeout=TIMEOUT_S)
    CASES.append((case.method, case.path, response.status_code))
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])


def test_fuzzing_covered_the_schema_and_left_the_engine_clean(fuzz_server: str) -> None:
    paths = {p for _, p, _ in CASES}
    assert len(CASES) >= MIN_CASES, collections.Counter((m, p) for m, p, _ in CASES)
    assert {"/generate", "/encode", "/tokenize", "/detokenize", "/abort_request",
            "/v1/completions",
            "/v1/chat/completions", "/v1/embeddings", "/v1/messages",
            "/v1/messages/count_tokens", "/v1/rerank"} <= paths
    # (/v1/rerank's yes/no prompts do not fit this server's 96-token context: 400s only.)
    for path in ("/generate", "/v1/completions", "/v1/chat/completions", "/v1/messages"):
        statuses = {s for _, p, s in CASES if p == path}
        assert 200 in statuses and 400 in statuses, (path, statuses)  # valid and invalid ran
    info = requests.get(f"{fuzz_server}/get_server_info", timeout=30).json()
    assert info["status"] == "ready" and info["engine_restarts"] == 0
    assert_engine_clean(fuzz_server)
    r = requests.post(f"{fuzz_server}/generate", json={
        "text": "Hi", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}, timeout=60)
    assert r.status_code == 200 and len(r.json()["output_ids"]) == 4
