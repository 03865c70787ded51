"""Schema fuzzing of an --is-embedding server (all-MiniLM-L6-v2): the embedding routes (/encode,
/classify, /v1/embeddings, /v1/classify, /v1/rerank) with generated requests, valid and invalid, each answered < 500 within the
timeout; afterwards the engine is alive and idle and still gives a correct-length vector. The
generation server's routes are fuzzed by test_schema_fuzz.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from server_utils import assert_engine_clean, start_server, stop_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # schemathesis brings hypothesis

EXAMPLES = 60
TIMEOUT_S = 120
ROUTES = ("/encode", "/classify", "/v1/embeddings", "/v1/classify", "/v1/rerank")
CASES: list[tuple[str, int]] = []


@pytest.fixture(scope="module")
def emb_fuzz_server() -> Iterator[str]:
    proc, url = start_server("all-minilm-l6-v2", [
        "--is-embedding", "--max-batch-size", "8", "--max-running-requests", "8",
        "--skip-server-warmup", "--log-level", "warning"])  # fmt: skip
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def emb_schema(emb_fuzz_server: str):
    return schemathesis.openapi.from_url(f"{emb_fuzz_server}/openapi.json").include(
        path=list(ROUTES)
    )


schema = schemathesis.pytest.from_fixture("emb_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_embedding_routes_never_answer_5xx(case, emb_fuzz_server: str) -> None:
    response = case.call(base_url=emb_fuzz_server, timeout=TIMEOUT_S)
    CASES.append((case.path, response.status_code))
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])


def test_fuzzing_reached_both_routes_and_left_the_engine_clean(emb_fuzz_server: str) -> None:
    for route in ROUTES:
        statuses = {s for p, s in CASES if p == route}
        assert 400 in statuses, (route, statuses)
    assert {s for p, s in CASES} & {200}, "no generated request was valid"
    assert_engine_clean(emb_fuzz_server)
    r = requests.post(f"{emb_fuzz_server}/encode", json={"text": "still here"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["embedding"]) == 384
