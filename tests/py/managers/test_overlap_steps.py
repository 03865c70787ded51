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


@pytest.mark.gpu
def test_no_host_sync_between_steps_on_a_gpu(tiny_model: Path) -> None:
    """Decode steps under CUDA's sync debug mode: the only waits are for the previous step's
    token copy (an event, not flagged); anything else that syncs the stream is reported."""
    cpu = make_engine(tiny_model)
    gpu = make_engine(tiny_model, "cuda")
    for e in (cpu, gpu):
        for rid in ("a", "b", "c"):
            assert e.add_request(greedy_request(rid, 24)) is None
    want = {rid: output_tokens(o) for rid, o in run_steps(cpu).items()}
    got: dict[str, list[ReqOutput]] = {}
    for _ in range(3):  # prefill and the first decode steps (warm-up, graph selection)
        for out in gpu.step() or []:
            got.setdefault(out.rid, []).append(out)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(10):
                for out in gpu.step() or []:
                    got.setdefault(out.rid, []).append(out)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
             if "synchroniz" in str(w.message)]
    assert not syncs, syncs
    for rid, outs in run_steps(gpu).items():
        got.setdefault(rid, []).extend(outs)
    assert {rid: output_tokens(o) for rid, o in got.items()} == want
    assert gpu.internal_state()["scheduled_ahead_steps"] > 10
    assert_engine_core_clean(gpu)
