"""The offline engine, sgl.Engine: generate (single, batch, stream), async_generate, cache flush,
server info, errors, and shutdown as a context manager."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psutil
import pytest

import sglang as sgl

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def llm() -> Iterator[sgl.Engine]:
    with sgl.Engine(model_path="smollm2-135m-instruct", max_total_tokens=8192,
                    random_seed=7) as engine:
        yield engine


def test_generate_single_and_batch(llm: sgl.Engine) -> None:
    one = llm.generate("The capital of France is", GREEDY)
    assert set(one) == {"text", "output_ids", "meta_info"}
    assert len(one["output_ids"]) == 8
    batch = llm.generate(["The capital of France is", "1, 2, 3,"], GREEDY)
    assert len(batch) == 2 and batch[0]["output_ids"] == one["output_ids"]
    ids = llm.generate(input_ids=[[504, 3575, 282]], sampling_params=GREEDY)
    assert len(ids) == 1 and len(ids[0]["output_ids"]) == 8


def test_stream(llm: sgl.Engine) -> None:
    full = llm.generate("Tell me about tea.", GREEDY)
    chunks = list(llm.generate("Tell me about tea.", GREEDY, stream=True))
    assert chunks[-1]["text"] == full["text"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_async_generate(llm: sgl.Engine) -> None:
    async def run() -> tuple[dict, list[dict]]:
        out = await llm.async_generate("The capital of France is", GREEDY)
        stream = await llm.async_generate("The capital of France is", GREEDY, stream=True)
        chunks = [c async for c in stream]
        return out, chunks

    out, chunks = asyncio.run(run())
    assert chunks[-1]["text"] == out["text"]


def test_errors_are_value_errors(llm: sgl.Engine) -> None:
    with pytest.raises(ValueError, match="temperature must be a non-negative"):
        llm.generate("x", {"temperature": -1})
    assert llm.generate("x", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1


def test_info_and_flush(llm: sgl.Engine) -> None:
    assert llm.flush_cache() is True
    info = llm.get_server_info()
    assert info["status"] == "ready" and info["max_total_num_tokens"] == 8192
    assert llm.get_model_info()["model_path"] == "smollm2-135m-instruct"


def test_shutdown_stops_engine_process() -> None:
    engine = sgl.Engine(model_path="smollm2-135m-instruct", max_total_tokens=2048)
    proc = psutil.Process(engine.tokenizer_manager.engine.proc.pid)
    assert engine.generate("Hi", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1
    engine.shutdown()
    proc.wait(15)
    assert not proc.is_running()


def test_skip_tokenizer_init_refuses_text_features(tiny_model) -> None:
    with sgl.Engine(model_path=str(tiny_model), skip_tokenizer_init=True,
                    max_total_tokens=1024) as engine:
        out = engine.generate(input_ids=[1, 2, 3], sampling_params={
            "max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
        assert "text" not in out and len(out["output_ids"]) == 4
        cases = [
            ({"stop": "x"}, "stop=['x'] is unavailable when skip_tokenizer_init=True (requires "
                            "tokenizer to decode tokens to text for matching)."),
            ({"stop_regex": "a+"}, "stop_regex=['a+'] is unavailable when "
                                   "skip_tokenizer_init=True (requires tokenizer to decode "
                                   "tokens to text for matching)."),
            ({"min_new_tokens": 2}, "min_new_tokens=2 is unavailable when "
                                    "skip_tokenizer_init=True (requires tokenizer for "
                                    "eos_token_id)."),
        ]
        for params, message in cases:
            with pytest.raises(ValueError) as err:
                engine.generate(input_ids=[1, 2, 3], sampling_params=params)
            assert str(err.value) == message


def test_grammar_compile_timeout_then_cached(tiny_model, monkeypatch) -> None:
    """A grammar that does not compile in time ends its request with a 400-type error while the
    compile finishes in the background; the next request with the same grammar uses the result."""
    import json
    import time

    monkeypatch.setenv("SGLANG_GRAMMAR_COMPILE_TIMEOUT", "0.001")  # read by the engine process
    fields = {f"f{i}": {"type": "string", "pattern": "^[a-z]{1,12}$"} for i in range(40)}
    schema = json.dumps({"type": "object", "properties": fields, "required": list(fields)})
    params = {"max_new_tokens": 2, "json_schema": schema}
    with sgl.Engine(model_path=str(tiny_model), max_total_tokens=1024) as engine:
        with pytest.raises(ValueError, match=r"^Grammar compilation timed out after 0.001 s\.$"):
            engine.generate(input_ids=[1, 2, 3], sampling_params=params)
        deadline = time.time() + 60
        while True:  # the compile goes on in the background; then the cached result is used
            try:
                out = engine.generate(input_ids=[1, 2, 3], sampling_params=params)
                break
            except ValueError:
                assert time.time() < deadline
                time.sleep(0.5)
        assert out["text"].startswith('{"')
        state = engine.get_server_info()["internal_states"][0]
        assert state["idle"] and state["num_grammar_waiting"] == 0
