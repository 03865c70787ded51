"""Tiny random-weight Llama / Qwen2 / Qwen3 checkpoints through ModelRunner and the real
scheduler, compared with transformers on the same weights (fp32): greedy tokens, logprobs, and
scheduling independence (batching, prefix cache, chunked prefill, pages, retraction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_test_utils import ARCHS, NEW_TOKENS, PROMPTS, GreedyDriver, hf_logprobs, hf_model
from sglang import _core
from sglang.srt.layers.logits_processor import LogitsOutput
from sglang.srt.model_executor.forward_batch import ForwardBatch, table_as_tensor
from sglang.srt.model_executor.model_runner import ModelRunner


@pytest.fixture(scope="module")
def runners(tiny_models: dict[str, Path]) -> dict[str, ModelRunner]:
    return {name: ModelRunner(str(folder), dtype="float32") for name, folder in tiny_models.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_matches_transformers(
    arch: str, runners: dict[str, ModelRunner], hf_reference: dict[str, list[list[int]]]
) -> None:
    outputs = GreedyDriver(runners[arch]).generate(PROMPTS, NEW_TOKENS)
    assert outputs == hf_reference[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_logprobs_match_transformers(
    arch: str, runners: dict[str, ModelRunner], tiny_models: dict[str, Path]
) -> None:
    driver = GreedyDriver(runners[arch], record_logits=True)
    rids = [driver.add(p, 8) for p in PROMPTS]
    driver.run()
    model = hf_model(tiny_models[arch])
    for rid, prompt in zip(rids, PROMPTS):
        ours = torch.log_softmax(torch.cat(driver.logits[rid]), dim=-1)
        theirs = hf_logprobs(model, prompt + driver.outputs[rid][:-1])
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)


SCHEDULES = {
    "no_radix_cache": {"disable_radix_cache": True},
    "chunked_prefill": {"chunked_prefill_size": 8},
    "page_size_16": {"page_size": 16},
    "retraction": {
        "max_total_tokens": 96,
        "context_length": 96,
        "init_new_token_ratio": 0.0,
        "min_new_token_ratio": 0.0,
    },
}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_give_reference_tokens(
    arch: str,
    schedule: str,
    runners: dict[str, ModelRunner],
    hf_reference: dict[str, list[list[int]]],
) -> None:
    driver = GreedyDriver(runners[arch], overrides=SCHEDULES[schedule])
    assert driver.generate(PROMPTS, NEW_TOKENS) == hf_reference[arch]
    if schedule == "retraction":
        assert driver.retracted > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_alone_and_after_cached_prefix_match_batched(
    arch: str, runners: dict[str, ModelRunner], hf_reference: dict[str, list[list[int]]]
) -> None:
    # One at a time in fresh schedulers: nothing shared.
    alone = [GreedyDriver(runners[arch]).generate([p], NEW_TOKENS)[0] for p in PROMPTS]
    assert alone == hf_reference[arch]
    # One after another in one scheduler: later prompts reuse the cached shared prefix, and with
    # page_size 4 the extend starts inside a prompt at a page boundary.
    for overrides in ({}, {"page_size": 4}):
        driver = GreedyDriver(runners[arch], overrides=overrides)
        sequential = [driver.generate([p], NEW_TOKENS)[0] for p in PROMPTS]
        assert sequential == hf_reference[arch]
        assert driver.sched.stats().cache_hit_tokens > 0


def test_dummy_load_format_runs(tiny_models: dict[str, Path]) -> None:
    a = ModelRunner(str(tiny_models["qwen2"]), load_format="dummy", random_seed=3)
    b = ModelRunner(str(tiny_models["qwen2"]), load_format="dummy", random_seed=3)
    out_a = GreedyDriver(a).generate(PROMPTS[:2], 8)
    assert out_a == GreedyDriver(b).generate(PROMPTS[:2], 8)
    assert all(len(o) == 8 for o in out_a)
    for name, param in a.model.named_parameters():
        assert torch.isfinite(param).all(), name


def _single_prefill(runner: ModelRunner, prompt: list[int], **kwargs: object) -> LogitsOutput:
    cfg = _core.SchedulerConfig()
    cfg.vocab_size = runner.model_config.vocab_size
    cfg.context_length = 256
    cfg.max_total_tokens = 512
    sched = _core.Scheduler(cfg)
    runner.init_kv_pool(sched.num_slots)
    sched.add_request(np.asarray(prompt, dtype=np.int32), max_new_tokens=1)
    plan = sched.schedule()
    rows = np.arange(plan.num_tokens, dtype=np.int32)
    table = table_as_tensor(sched.req_to_token())
    batch = ForwardBatch.from_plan(plan, table, "cpu", logits_rows=rows, **kwargs)  # type: ignore[arg-type]
    return runner.forward(batch)


def test_input_embeds_and_hidden_states(
    runners: dict[str, ModelRunner], tiny_models: dict[str, Path]
) -> None:
    runner = runners["llama"]
    prompt = PROMPTS[1]
    by_ids = _single_prefill(runner, prompt, capture_hidden=True)
    embeds = runner.model.model.embed_tokens.weight[torch.tensor(prompt)].detach().clone()
    by_embeds = _single_prefill(runner, prompt, input_embeds=embeds)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits, atol=1e-5, rtol=0)
    assert by_embeds.hidden_states is None
    model = hf_model(tiny_models["llama"])
    with torch.inference_mode():
        ref = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0]
    assert by_ids.hidden_states is not None and by_ids.logits.dtype == torch.float32
    torch.testing.assert_close(by_ids.hidden_states, ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_runs_and_stays_close(
    tiny_models: dict[str, Path], runners: dict[str, ModelRunner]
) -> None:
    runner = ModelRunner(str(tiny_models["qwen3"]), dtype="bfloat16")
    assert runner.dtype == torch.bfloat16
    assert runner.model.lm_head.weight.dtype == torch.bfloat16
    prompt = PROMPTS[0]
    low = _single_prefill(runner, prompt).logits
    ref = _single_prefill(runners["qwen3"], prompt).logits
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    probs, ref_probs = low.softmax(-1), ref.softmax(-1)
    assert (probs - ref_probs).abs().max() < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cuda_fp32_matches_transformers(
    arch: str, tiny_models: dict[str, Path], hf_reference: dict[str, list[list[int]]]
) -> None:
    runner = ModelRunner(str(tiny_models[arch]), device="cuda", dtype="float32")
    assert runner.device.type == "cuda"
    for overrides in ({}, {"page_size": 16, "chunked_prefill_size": 8}):
        driver = GreedyDriver(runner, overrides=overrides)
        assert driver.generate(PROMPTS, NEW_TOKENS) == hf_reference[arch]


def test_packed_upload_path_gives_the_same_logits(runners: dict[str, ModelRunner]) -> None:
    """The CUDA path of ForwardBatch.from_plan (arrays and the batch's table rows packed into
    one buffer, compact table) exercised on CPU against the zero-copy path."""
    from sglang.srt.model_executor.forward_batch import _PlanArrays

    runner = runners["llama"]
    driver = GreedyDriver(runner, overrides={"page_size": 4})
    driver.generate([PROMPTS[0]], 2)  # cache the shared prefix
    for p in PROMPTS[1:]:
        driver.add(p, 3)
    checked = set()
    while not driver.sched.idle():
        plan = driver.sched.schedule()
        rows = np.asarray(plan.sample_rows, dtype=np.int32)
        plain = runner.forward(ForwardBatch.from_plan(plan, driver.table, "cpu")).logits
        packed_batch = _PlanArrays.read(plan, rows).to_device_batch(
            driver.table, torch.device("cpu")
        )
        assert packed_batch.req_pool_indices.tolist() == list(range(plan.num_reqs))
        packed = runner.forward(packed_batch).logits
        torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)
        checked.add(int(plan.mode))
        driver.sched.commit(plain.argmax(-1).to(torch.int32).numpy())
    assert checked == {1, 2}
