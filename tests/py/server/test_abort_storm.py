"""Abort storm: 64 streaming clients on the demo model, half of them killed mid-stream, then
``abort_all``. Everything is freed within two engine steps of the abort (the engine's own step
counter, not a clock), every surviving stream ends, and what each survivor received is exactly
its undisturbed greedy output (computed afterwards, without aborts). Issue #9, acceptance 4.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from server_utils import DEMO_MODEL, assert_engine_clean, server_state, serving, sse_events

CLIENTS = 64
CHUNKS_BEFORE_KILL = 3
SURVIVOR_CHUNKS = 6  # every survivor has at least this many chunks before abort_all
MAX_NEW_TOKENS = 400  # never reached: abort_all ends the survivors


class Client(threading.Thread):
    def __init__(self, url: str, i: int) -> None:
        super().__init__(daemon=True)
        self.url, self.i = url, i
        self.victim = i % 2 == 1
        self.prompt = f"Story number {i}: once upon a time, in a land of {i % 7} rivers,"
        self.chunks: list[dict] = []
        self.events: list = []
        self.error: Exception | None = None

    def run(self) -> None:
        body = {"text": self.prompt, "stream": True, "rid": f"storm-{self.i}",
                "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS,
                                    "ignore_eos": True}}
        try:
            with requests.post(f"{self.url}/generate", json=body, stream=True,
                               timeout=600) as r:
                assert r.status_code == 200, r.text
                for event in sse_events(r):
                    self.events.append(event)
                    if isinstance(event, dict):
                        self.chunks.append(event)
                    if self.victim and len(self.chunks) >= CHUNKS_BEFORE_KILL:
                        r.close()  # the client goes away mid-stream
                        return
        except Exception as exc:  # surfaced by the test
            self.error = exc


def wait_for(condition, what, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what() if callable(what) else what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def storm_server() -> Iterator[str]:
    """Room for every client at once: the victims never wait behind the survivors."""
    with serving(DEMO_MODEL, ["--max-running-requests", str(CLIENTS), "--max-total-tokens",
                              "40000", "--random-seed", "5", "--skip-server-warmup",
                              "--log-level", "warning"]) as url:
        yield url


def test_abort_storm(storm_server: str) -> None:
    server = storm_server
    clients = [Client(server, i) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    victims = [c for c in clients if c.victim]
    survivors = [c for c in clients if not c.victim]
    wait_for(lambda: all(not c.is_alive() for c in victims), "victims never disconnected")
    assert all(c.error is None for c in clients), [c.error for c in clients if c.error]
    # The server noticed every disconnect: only the survivors are left in the engine.
    seen: list = []

    def only_survivors_left() -> bool:
        state = server_state(server)
        seen.append((state["num_running_reqs"], state["num_waiting_reqs"]))
        return sum(seen[-1]) == len(survivors)

    wait_for(only_survivors_left, lambda: f"disconnected requests were not freed: {seen[-5:]}, "
             f"{[(c.i, len(c.chunks), c.error) for c in survivors if not c.is_alive()]}")
    wait_for(lambda: all(len(c.chunks) >= SURVIVOR_CHUNKS for c in survivors),
             "survivors stalled")

    r = requests.post(f"{server}/abort_request", json={"abort_all": True}, timeout=60)
    assert r.status_code == 200
    at_abort = server_state(server)  # answered after the abort was handled (one FIFO channel)
    state = at_abort
    while not (state["idle"] and state["num_used_tokens"] == 0):
        assert state["forward_ct"] - at_abort["forward_ct"] <= 2, (at_abort, state)
        state = server_state(server)
    assert state["forward_ct"] - at_abort["forward_ct"] <= 2, (at_abort, state)

    for c in survivors:
        c.join(120)
        assert not c.is_alive(), "a surviving stream did not end"
        assert c.error is None, c.error
        assert c.events[-1] == "[DONE]"
        assert c.chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    # Undisturbed greedy outputs, as long as what each survivor got.
    got = {c.i: c.chunks[-1]["output_ids"] for c in survivors}
    reference = requests.post(f"{server}/generate", timeout=600, json={
        "text": [c.prompt for c in survivors],
        "sampling_params": [{"temperature": 0, "ignore_eos": True,
                             "max_new_tokens": max(1, len(got[c.i]))} for c in survivors],
    }).json()
    for c, ref in zip(survivors, reference):
        assert got[c.i] == ref["output_ids"][:len(got[c.i])], c.i
    assert_engine_clean(server)
