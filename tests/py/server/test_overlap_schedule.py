"""Overlap scheduling (--enable-overlap-schedule forces on a CPU what CUDA does by default):
the next step is planned and launched before the last one's tokens reach the host (placeholders
replaced on the device), and a step's outputs are processed while the next forward runs. Two
offline engines on the demo model, overlap on and off, must give the same results for greedy and
seeded sampling, logprobs, stop tokens and stop strings (decided one step late with overlap,
never shown), max_new_tokens and min_new_tokens, penalties (not scheduled ahead), n > 1, a grammar
and a custom logit processor that reads the output ids (the pending tokens are accepted and
appended before the next step's masks and processors), streaming and aborts; both end idle and
integrity-clean.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sglang as sgl
from server_utils import user_logit_processors

PROMPTS = ["The capital of France is", "List three fruits:", "def add(a, b):",
           "Once upon a time", "The weather today"]
GREEDY = {"temperature": 0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[sgl.Engine, sgl.Engine]]:
    common = {"model_path": "smollm2-135m-instruct", "max_total_tokens": 8192, "random_seed": 7,
              "enable_custom_logit_processor": True}
    with sgl.Engine(**common) as plain, sgl.Engine(**common, enable_overlap_schedule=True) as ov:
        yield plain, ov
        for engine in (plain, ov):
            state = engine.get_server_info()["internal_states"][0]
            assert state["idle"] and state["integrity_ok"] and state["num_used_tokens"] == 0


def _state(engine: sgl.Engine) -> dict:
    return engine.get_server_info()["internal_states"][0]


def _same(plain: sgl.Engine, ov: sgl.Engine, *args: object, **kwargs: object) -> list[dict]:
    a = plain.generate(*args, **kwargs)
    b = ov.generate(*args, **kwargs)
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    for x, y in zip(a, b, strict=True):
        assert x["text"] == y["text"] and x["output_ids"] == y["output_ids"]
        assert x["meta_info"]["finish_reason"] == y["meta_info"]["finish_reason"]
        lx = x["meta_info"].get("output_token_logprobs")
        ly = y["meta_info"].get("output_token_logprobs")
        assert (lx is None) == (ly is None)
        if lx is not None:
            assert [t for _, t, *_ in lx] == [t for _, t, *_ in ly]
            assert max(abs(p - q) for (p, *_), (q, *_) in zip(lx, ly, strict=True)) < 1e-5
    return b


def test_modes(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    assert _state(plain)["overlap_schedule"] is False
    assert _state(ov)["overlap_schedule"] is True


def test_greedy_batch_with_logprobs(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    before = _state(ov)
    _same(plain, ov, PROMPTS, GREEDY, return_logprob=True, top_logprobs_num=3)
    after = _state(ov)
    assert after["overlapped_steps"] > before["overlapped_steps"]  # outputs waited a step
    # every step but the last of the batch was planned before its predecessor's tokens
    assert after["scheduled_ahead_steps"] - before["scheduled_ahead_steps"] >= \
        GREEDY["max_new_tokens"] - 2
    assert _state(plain)["scheduled_ahead_steps"] == 0


def test_lengths_and_stop_tokens(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    """Requests that end at different steps of one batch: the length ones are never planned
    again; a stop token's request is planned once more and dropped there, unseen."""
    plain, ov = engines
    free = plain.generate(PROMPTS, GREEDY)
    params = []
    for k, out in enumerate(free):
        ids = out["output_ids"]
        if k % 2:  # stop at a token that first appears mid-run
            stop = next((t for i, t in enumerate(ids) if i >= 2 and t not in ids[:i]), ids[-1])
            params.append({**GREEDY, "stop_token_ids": [stop]})
        else:
            params.append({**GREEDY, "max_new_tokens": 1 + 3 * k, "min_new_tokens": k})
    before = _state(ov)["scheduled_ahead_steps"]
    outs = _same(plain, ov, PROMPTS, params)
    assert _state(ov)["scheduled_ahead_steps"] > before
    assert [len(o["output_ids"]) for o in outs[::2]] == [1, 7, 13]
    assert any(o["meta_info"]["finish_reason"].get("matched") is not None for o in outs[1::2])
    # a prefill-only request next to decoding ones
    _same(plain, ov, PROMPTS[:3], [GREEDY, {**GREEDY, "max_new_tokens": 0}, GREEDY])


def test_seeded_sampling_penalties_and_n(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    sampling = {"temperature": 0.9, "top_p": 0.9, "max_new_tokens": 20, "sampling_seed": 3,
                "frequency_penalty": 0.5, "repetition_penalty": 1.1}
    before = _state(ov)["scheduled_ahead_steps"]
    _same(plain, ov, PROMPTS, sampling)
    # penalty counts live on the host: those steps wait for their tokens
    assert _state(ov)["scheduled_ahead_steps"] == before
    _same(plain, ov, PROMPTS[0], {**sampling, "n": 3})
    no_penalty = {k: v for k, v in sampling.items() if "penalty" not in k}
    _same(plain, ov, PROMPTS, no_penalty)
    _same(plain, ov, PROMPTS[1], {**no_penalty, "n": 3})
    assert _state(ov)["scheduled_ahead_steps"] > before


def test_stop_strings_end_at_the_same_text(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    free = plain.generate(PROMPTS, GREEDY)
    stops = []
    for out in free:  # a stop string from the middle of each free-running text
        words = out["text"].split()
        stops.append(words[len(words) // 2] if len(words) > 2 else out["text"][2:5])
    outs = [_same(plain, ov, p, {**GREEDY, "stop": [s]})[0] for p, s in zip(PROMPTS, stops)]
    assert any(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
    assert all(len(o["output_ids"]) <= GREEDY["max_new_tokens"] for o in outs)


def test_grammar_steps(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    sampling = {**GREEDY, "max_new_tokens": 16, "regex": "(yes|no), [a-z ]{3,12}\\."}
    before = _state(ov)["scheduled_ahead_steps"]
    outs = _same(plain, ov, ["Is the sky blue? Answer:", "Is water dry? Answer:"], sampling)
    assert all(o["text"].startswith(("yes", "no")) for o in outs)
    assert _state(ov)["scheduled_ahead_steps"] > before  # masks filled after the accept
    # a grammar next to free requests, and one that ends (its regex complete) mid-batch
    short = {**GREEDY, "max_new_tokens": 16, "regex": "(yes|no)"}
    _same(plain, ov, PROMPTS[:3], [GREEDY, short, sampling])


def test_custom_processor_sees_every_token(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    # token len(prompt) + 2 + len(output_ids): wrong at once if the output ids lag
    processor = user_logit_processors()["CountingProcessor"].to_str()
    plain, ov = engines
    prompt = [1, 450, 7283, 310, 3444, 338]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    before = _state(ov)["scheduled_ahead_steps"]
    outs = _same(plain, ov, input_ids=[prompt, prompt[:3]], sampling_params=params,
                 custom_logit_processor=[processor, None])
    assert outs[0]["output_ids"] == list(range(len(prompt) + 2, len(prompt) + 10))
    assert _state(ov)["scheduled_ahead_steps"] > before


def test_streaming_chunks_add_up(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    plain, ov = engines
    full = plain.generate(PROMPTS[3], GREEDY)
    chunks = list(ov.generate(PROMPTS[3], GREEDY, stream=True))
    assert len(chunks) > 2 and chunks[-1]["text"] == full["text"]
    assert chunks[-1]["output_ids"] == full["output_ids"]


def test_abort_everything_mid_run(engines: tuple[sgl.Engine, sgl.Engine]) -> None:
    import asyncio

    _, ov = engines
    long = {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}

    async def run() -> list[dict]:
        tasks = [asyncio.ensure_future(ov.async_generate(p, long)) for p in PROMPTS]
        await asyncio.sleep(0.5)
        await ov.tokenizer_manager.abort_request(abort_all=True)
        return await asyncio.gather(*tasks)

    outs = asyncio.run_coroutine_threadsafe(run(), ov.loop).result(120)
    assert all(o["meta_info"]["finish_reason"]["type"] == "abort" for o in outs)
    assert all(len(o["output_ids"]) < 400 for o in outs)


def test_flags() -> None:
    from sglang.srt.server_args import ServerArgs, prepare_server_args

    assert not ServerArgs(model_path="x", device="cpu").overlap_schedule()
    assert ServerArgs(model_path="x", device="cuda").overlap_schedule()  # SGLang's default
    assert not ServerArgs(model_path="x", device="cuda",
                          disable_overlap_schedule=True).overlap_schedule()
    assert ServerArgs(model_path="x", device="cpu", enable_overlap_schedule=True).overlap_schedule()
    with pytest.raises(ValueError, match="contradict"):
        ServerArgs(model_path="x", enable_overlap_schedule=True, disable_overlap_schedule=True)
    args = prepare_server_args(["--model-path", "x", "--device", "cuda",
                                "--disable-overlap-schedule"])
    assert args.disable_overlap_schedule and not args.overlap_schedule()
