"""Driving an in-process ``EngineCore`` step by step in tests (no server, no tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sglang.srt.managers.io_struct import ReqOutput, TokenizedGenerateReq
from sglang.srt.sampling.sampling_params import SamplingParams

PROMPT = (5, 17, 230, 41, 9, 77)


def greedy_request(rid: str, max_new_tokens: int = 6,
                   prompt: Sequence[int] = PROMPT) -> TokenizedGenerateReq:
    """A greedy request that ignores EOS: exactly ``max_new_tokens`` tokens."""
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, ignore_eos=True)
    sampling.normalize()
    return TokenizedGenerateReq(rid=rid, input_ids=list(prompt), sampling=sampling)


def run_steps(engine: Any, steps: int = 1000) -> dict[str, list[ReqOutput]]:
    """Steps the engine until it is idle (at most ``steps``); its outputs by request id."""
    outs: dict[str, list[ReqOutput]] = {}
    for _ in range(steps):
        if engine.idle():
            break
        for out in engine.step() or []:
            outs.setdefault(out.rid, []).append(out)
    return outs


def output_tokens(outs: list[ReqOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def assert_engine_core_clean(engine: Any) -> None:
    """Idle, the core's integrity check passes, and no KV is held by requests."""
    assert engine.idle()
    state = engine.internal_state()
    assert state["integrity_ok"] and state["num_used_tokens"] == 0
