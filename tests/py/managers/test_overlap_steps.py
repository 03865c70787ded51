"""Overlap scheduling inside one EngineCore (no server): a step ends before its tokens reach the
host, so the outputs of step N come with step N+1. A failed forward while a step is pending, an
abort of a request whose token is pending, and (on a GPU) no host sync between launching one
step and the next but the wait for the previous step's token copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sglang.srt.managers.engine_core import EngineCore
from sglang.srt.managers.io_struct import ReqOutput
from sglang.srt.server_args import ServerArgs
from sglang.test.engine_steps import (
    assert_engine_core_clean,
    greedy_request,
    output_tokens,
    run_steps,
)


def make_engine(model: Path, device: str = "cpu") -> EngineCore:
    return EngineCore(ServerArgs(model_path=str(model), max_total_tokens=2048, random_seed=1,
                                 device=device, dtype="float32", skip_tokenizer_init=True,
                                 enable_overlap_schedule=True))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (fp32 safetensors, no tokenizer: the engine core needs none)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama-overlap")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[EngineCore]:
    yield make_engine(tiny_model)


def test_outputs_come_one_step_later(engine: EngineCore) -> None:
    assert engine.add_request(greedy_request("a", 3)) is None
    assert not engine.step()  # the prefill's token is still "on the device"
    assert engine.internal_state()["scheduled_ahead_steps"] >= 1
    first = engine.step()  # planned with a placeholder; reports the prefill's token
    assert [o.rid for o in first] == ["a"] and len(first[0].new_token_ids) == 1
    rest = run_steps(engine)["a"]
    assert len(output_tokens(rest)) == 2 and rest[-1].finish_reason is not None
    assert_engine_core_clean(engine)


def test_failed_forward_with_a_pending_step(engine: EngineCore, monkeypatch) -> None:
    assert engine.add_request(greedy_request("ref")) is None
    reference = output_tokens(run_steps(engine)["ref"])
    for rid in ("a", "b"):
        assert engine.add_request(greedy_request(rid, 50)) is None
    engine.step()  # prefill (pending)
    engine.step()  # a decode step (pending); the prefill's tokens reported

    def broken(batch):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken)
    outs = engine.step()
    monkeypatch.undo()
    # the pending step's tokens are still reported, then the failed step's requests end
    for rid in ("a", "b"):
        mine = [o for o in outs if o.rid == rid]
        assert [len(o.new_token_ids) for o in mine] == [1, 0]
        assert mine[0].finish_reason is None
        assert mine[1].finish_reason.is_error and mine[1].finish_reason.status_code == 500
    assert_engine_core_clean(engine)
    assert engine.add_request(greedy_request("after")) is None
    assert output_tokens(run_steps(engine)["after"]) == reference
    assert_engine_core_clean(engine)


def test_abort_while_the_token_is_pending(engine: EngineCore) -> None:
    assert engine.add_request(greedy_request("ref")) is None
    reference = output_tokens(run_steps(engine)["ref"])
    for rid in ("a", "b"):
        assert engine.add_request(greedy_request(rid)) is None
    assert not engine.step()  # prefill: both tokens pending
    assert engine.abort("a") == []  # deferred: reported by a later commit
    outs = engine.step()
    by_rid = {o.rid: o for o in outs}
    assert by_rid["a"].finish_reason.kind.name == "ABORT" and not by_rid["a"].new_token_ids
    assert len(by_rid["b"].new_token_ids) == 1 and by_rid["b"].finish_reason is None
    rest = run_steps(engine)
    assert "a" not in rest
    assert [by_rid["b"].new_token_ids[0], *output_tokens(rest["b"])] == reference
    assert_engine_core_clean(engine)


def _logprobs(outs: list[ReqOutput]) -> list[float]:
    return [lp for o in outs for lp, _ in o.output_token_logprobs or []]


def _add_requests(engine: EngineCore) -> None:
    for rid in ("a", "b", "c"):
        req = greedy_request(rid, 24)
        if rid == "c":  # its logprobs are computed on the device and read a step later
            req.return_logprob, req.top_logprobs_num, req.token_ids_logprob = True, 2, [3, 4]
        assert engine.add_request(req) is None


def _steps_against_reference(tiny_model: Path, device: str, sync_debug: bool) -> list[str]:
    """Runs three requests on ``device`` with overlap, the middle ten decode steps under CUDA's
    sync debug mode when ``sync_debug``; checks tokens and logprobs against a CPU engine
    without overlap. Returns the syncs reported."""
    reference = EngineCore(ServerArgs(model_path=str(tiny_model), max_total_tokens=2048,
                                      random_seed=1, device="cpu", dtype="float32",
                                      skip_tokenizer_init=True))
    engine = make_engine(tiny_model, device)
    _add_requests(reference)
    _add_requests(engine)
    want = run_steps(reference)
    got: dict[str, list[ReqOutput]] = {}

    def step(n: int) -> None:
        for _ in range(n):
            for out in engine.step() or []:
                got.setdefault(out.rid, []).append(out)

    step(3)  # prefill and the first decode steps (warm-up, graph selection)
    caught: list[warnings.WarningMessage] = []
    if sync_debug:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(10)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for rid, outs in run_steps(engine).items():
        got.setdefault(rid, []).extend(outs)
    assert {r: output_tokens(o) for r, o in got.items()} == \
        {r: output_tokens(o) for r, o in want.items()}
    assert len(_logprobs(want["c"])) == 24
    assert _logprobs(got["c"]) == pytest.approx(_logprobs(want["c"]), abs=1e-4)
    assert engine.internal_state()["scheduled_ahead_steps"] > 10
    assert_engine_core_clean(engine)
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if "synchroniz" in str(w.message)]


def test_same_tokens_and_logprobs_as_without_overlap(tiny_model: Path) -> None:
    assert _steps_against_reference(tiny_model, "cpu", sync_debug=False) == []


@pytest.mark.gpu
def test_no_host_sync_between_steps_on_a_gpu(tiny_model: Path) -> None:
    """Decode steps under CUDA's sync debug mode: the only waits are for the previous step's
    token copy (an event, not flagged); anything else that syncs the stream is reported. One
    request asks for logprobs (computed on the device, read with the ids)."""
    syncs = _steps_against_reference(tiny_model, "cuda", sync_debug=True)
    assert not syncs, syncs
