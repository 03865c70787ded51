"""The engine survives what goes wrong inside one step (EngineCore in-process, tiny model).

A forward pass or sampling that raises ends the requests of that batch with a 500 while the core
drops the step's KV (cancel_plan); the engine stays integrity-clean and later requests give the
same tokens as an undisturbed run. A failure while finishing one request (its stop check) ends
that request alone. Only MAX_FAILED_STEPS failures in a row end the engine (a broken device).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sglang.srt.managers.engine_core import MAX_FAILED_STEPS, EngineCore
from sglang.srt.managers.finish_reason import FinishKind
from sglang.srt.server_args import ServerArgs
from sglang.test.engine_steps import (
    assert_engine_core_clean,
    greedy_request,
    output_tokens,
    run_steps,
)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[EngineCore]:
    yield EngineCore(ServerArgs(model_path=str(tiny_model), max_total_tokens=2048,
                                random_seed=1, max_queued_requests=3))


def test_failed_forward_ends_its_batch_and_the_engine_goes_on(engine: EngineCore,
                                                              monkeypatch) -> None:
    assert engine.add_request(greedy_request("ref")) is None
    reference = output_tokens(run_steps(engine)["ref"])
    assert len(reference) == 6
    for rid in ("a", "b"):
        assert engine.add_request(greedy_request(rid, 50)) is None
    engine.step()  # prefill
    engine.step()  # one decode step

    def broken(batch):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken)
    outs = engine.step()
    assert sorted(o.rid for o in outs) == ["a", "b"]
    for o in outs:
        assert o.finish_reason.is_error and o.finish_reason.status_code == 500
        assert "RuntimeError: device lost" in o.finish_reason.message
    monkeypatch.undo()
    assert_engine_core_clean(engine)
    assert engine.add_request(greedy_request("after")) is None
    assert output_tokens(run_steps(engine)["after"]) == reference
    assert_engine_core_clean(engine)


def test_failures_in_a_row_end_the_engine(engine: EngineCore, monkeypatch) -> None:
    def broken(batch):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken)
    for i in range(MAX_FAILED_STEPS - 1):
        assert engine.add_request(greedy_request(f"x{i}")) is None
        assert engine.step()[0].finish_reason.status_code == 500
    assert engine.add_request(greedy_request("last")) is None
    with pytest.raises(RuntimeError, match="device lost"):
        engine.step()
    monkeypatch.undo()
    engine.core.cancel_plan()  # the test goes on with the same engine
    engine.reqs.clear()
    engine.rid_to_handle.clear()
    engine.failed_steps = 0
    assert_engine_core_clean(engine)


def test_failure_finishing_one_request_ends_only_it(engine: EngineCore) -> None:
    assert engine.add_request(greedy_request("fine", 8)) is None
    assert engine.add_request(greedy_request("bad", 8)) is None
    engine.step()
    bad = engine.reqs[engine.rid_to_handle["bad"]]

    def broken_check(output_ids):
        raise KeyError("oops")

    bad.stop.check = broken_check
    bad.stop.active = True
    outs = run_steps(engine)
    assert outs["bad"][-1].finish_reason.status_code == 500
    assert outs["fine"][-1].finish_reason.kind is FinishKind.LENGTH
    assert len(output_tokens(outs["fine"])) == 7  # plus the prefill step's token
    assert_engine_core_clean(engine)


def test_queue_limit_refuses_with_503(engine: EngineCore) -> None:
    for i in range(3):
        assert engine.add_request(greedy_request(f"q{i}")) is None
    error = engine.add_request(greedy_request("q3"))
    assert (error.status_code, error.message) == (503, "The request queue is full.")
    run_steps(engine)
    assert engine.add_request(greedy_request("q4")) is None
    run_steps(engine)
    assert_engine_core_clean(engine)
