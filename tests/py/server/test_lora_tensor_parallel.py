"""Multi-LoRA with tensor parallelism: a ``--tp-size 2`` server (two ranks over gloo) of a tiny
random Llama with two KV heads (one per rank) and of a tiny Qwen2 with one KV head (replicated on
both ranks), fp32, serving three PEFT adapters of different ranks and targets (q/k/v/gate/up on
column-parallel layers, o/down on row-parallel ones) in two slots, against transformers + peft:
greedy tokens and logprobs for each adapter and the base, a batch mixing them all (the slots
evict), an adapter loaded at run time then used, unloaded, loaded again under the same name with
other weights, and one unloaded while a request still runs with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from server_utils import DEMO_MODEL, server_state, serving
from test_lora import (
    ADAPTERS,
    GREEDY,
    PROMPTS,
    HFLora,
    _post,
    _save_adapter,
    _tiny_config,
    check_against_hf,
    generate,
    ok,
    refused,
)

peft = pytest.importorskip("peft")

LONG = 160  # tokens of the request that outlives its adapter's unload
KV_HEADS = {"llama": 2, "qwen2": 1}  # split over the 2 ranks / replicated on both


def _save_base(folder: Path, arch: str) -> Path:
    from sglang.srt.hf_transformers_utils import get_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = get_tokenizer(DEMO_MODEL)
    config = _tiny_config(arch, len(tokenizer))
    config.num_key_value_heads = KV_HEADS[arch]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if "norm" in name else 0.15
            param.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn_like(param))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(KV_HEADS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def base(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_base(tmp_path_factory.mktemp(f"tp-lora-base-{arch}"), arch)


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-adapters")
    return {name: _save_adapter(base, root / name, *spec) for name, spec in ADAPTERS.items()}


@pytest.fixture(scope="module")
def hf(base: Path, adapters: dict[str, Path]) -> HFLora:
    return HFLora(base, adapters)


@pytest.fixture(scope="module")
def url(base: Path, adapters: dict[str, Path]) -> Iterator[str]:
    paths = [f"{name}={folder}" for name, folder in adapters.items()]
    with serving(str(base), ["--tp-size", "2", "--dtype", "float32", "--lora-paths", *paths,
                             "--max-loras-per-batch", "2", "--max-lora-rank", "8",
                             "--lora-target-modules", "all", "--random-seed", "7",
                             "--max-total-tokens", "4096", "--chunked-prefill-size", "16",
                             "--skip-server-warmup", "--log-level", "warning"]) as u:  # fmt: skip
        yield u


@pytest.mark.parametrize("name", [*ADAPTERS, None])
def test_each_adapter_matches_peft(url: str, hf: HFLora, name: str | None) -> None:
    prompt = PROMPTS[1]
    out = ok(generate(url, input_ids=prompt, lora_path=name, return_logprob=True,
                      logprob_start_len=0))
    check_against_hf(hf, name, prompt, out)


def test_batch_mixing_every_adapter_evicts_and_matches_peft(url: str, hf: HFLora) -> None:
    loads = server_state(url)["lora_slot_loads"]
    names = ["alpha", None, "beta", "gamma", "alpha", "gamma", None, "beta"]
    prompts = [PROMPTS[i % 4] for i in range(len(names))]
    outs = ok(generate(url, input_ids=prompts, lora_path=names, return_logprob=True,
                       logprob_start_len=0))
    for name, prompt, out in zip(names, prompts, outs):
        check_against_hf(hf, name, prompt, out)
    assert server_state(url)["lora_slot_loads"] > loads  # 3 adapters, 2 slots


def test_load_use_unload_reload(url: str, hf: HFLora, adapters: dict[str, Path]) -> None:
    r = ok(_post(url, "load_lora_adapter", lora_name="beta2", lora_path=str(adapters["beta"])))
    assert r["success"] and "beta2" in r["loaded_adapters"]
    out = ok(generate(url, input_ids=PROMPTS[2], lora_path="beta2", return_logprob=True,
                      logprob_start_len=0))
    check_against_hf(hf, "beta", PROMPTS[2], out)
    ok(_post(url, "unload_lora_adapter", lora_name="beta2"))
    refused(generate(url, input_ids=PROMPTS[2], lora_path="beta2"), "unknown LoRA adapter")
    # The same name with other weights: a new load id on every rank, no stale slot.
    ok(_post(url, "load_lora_adapter", lora_name="beta2", lora_path=str(adapters["gamma"])))
    out = ok(generate(url, input_ids=PROMPTS[2], lora_path="beta2", return_logprob=True,
                      logprob_start_len=0))
    check_against_hf(hf, "gamma", PROMPTS[2], out)
    ok(_post(url, "unload_lora_adapter", lora_name="beta2"))
    # Refused on rank 0 (nothing reaches the followers); the server keeps serving.
    refused(_post(url, "load_lora_adapter", lora_name="alpha", lora_path=str(adapters["beta"])),
            "already loaded")


def test_unload_while_a_request_runs_with_it(url: str, hf: HFLora,
                                             adapters: dict[str, Path]) -> None:  # fmt: skip
    """The running request keeps its adapter on every rank (retired, slots evicted meanwhile)."""
    ok(_post(url, "load_lora_adapter", lora_name="g2", lora_path=str(adapters["gamma"])))
    params = {**GREEDY, "max_new_tokens": LONG}
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(out=generate(
        url, input_ids=PROMPTS[0], lora_path="g2", sampling_params=params)))
    thread.start()
    while thread.is_alive() and not server_state(url)["num_running_reqs"]:
        time.sleep(0.01)
    ok(_post(url, "unload_lora_adapter", lora_name="g2"))
    # Other adapters meanwhile take both slots (g2's slot is evicted, then copied back).
    ok(generate(url, input_ids=PROMPTS[1:3], lora_path=["alpha", "beta"]))
    thread.join(120)
    tokens = ok(result["out"])["output_ids"]
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        hf.model.set_adapter("gamma")
        want = hf.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=False, max_new_tokens=LONG, pad_token_id=0)
    assert tokens == want[0, len(PROMPTS[0]):].tolist()


def test_health_after_everything(url: str) -> None:
    assert requests.get(f"{url}/health", timeout=30).status_code == 200  # (serving: clean)
