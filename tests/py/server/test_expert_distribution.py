"""The expert-distribution endpoints on a server running a tiny random Qwen3-MoE with
``--expert-distribution-recorder-mode stat``: start -> generate -> stop -> dump writes a ``.pt`` in
``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` whose counts equal the router decisions counted
independently (a forward hook on transformers' router, same prompt); the reply texts; a server
without the recorder answers 400; an unknown mode is refused at launch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from server_utils import serving

PROMPT = [5, 17, 99, 3, 250, 31, 8, 8, 9, 40, 2, 101, 60, 61]
NUM_EXPERTS, TOP_K, LAYERS = 8, 2, 2


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=512, hidden_size=64, intermediate_size=96,
                            moe_intermediate_size=32, num_hidden_layers=LAYERS,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=NUM_EXPERTS, num_experts_per_tok=TOP_K,
                            max_position_embeddings=256, norm_topk_prob=True)  # fmt: skip
    torch.manual_seed(4)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("tiny-qwen3-moe")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("expert-dumps")


@pytest.fixture(scope="module")
def moe_server(moe_folder: Path, dump_dir: Path) -> Iterator[str]:
    old = os.environ.get("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR")
    os.environ["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] = str(dump_dir)
    try:
        with serving(str(moe_folder), ["--skip-tokenizer-init", "--dtype", "float32",
                                       "--expert-distribution-recorder-mode", "stat",
                                       "--log-level", "warning"]) as url:  # fmt: skip
            yield url
    finally:
        if old is None:
            os.environ.pop("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", None)
        else:
            os.environ["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] = old


def _hf_counts(folder: Path, prompt: list[int]) -> torch.Tensor:
    """[layers, experts]: how many of the prompt's tokens transformers' router sends where."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    counts = torch.zeros(LAYERS, NUM_EXPERTS, dtype=torch.int64)
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_m: object, _inp: object, out: tuple, i: int = i) -> None:
            counts[i] += torch.bincount(out[-1].reshape(-1), minlength=NUM_EXPERTS)
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.inference_mode():
        model(torch.tensor([prompt]))
    for h in hooks:
        h.remove()
    return counts


def test_start_generate_stop_dump(moe_server: str, moe_folder: Path, dump_dir: Path) -> None:
    url = moe_server
    r = requests.post(f"{url}/start_expert_distribution_record", timeout=30)
    assert (r.status_code, r.text) == (200, "Start recording the expert distribution.\n")
    r = requests.post(f"{url}/generate", timeout=60, json={
        "input_ids": PROMPT, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    assert r.status_code == 200, r.text
    r = requests.get(f"{url}/stop_expert_distribution_record", timeout=30)
    assert (r.status_code, r.text) == (200, "Stop recording the expert distribution.\n")
    # after the stop, nothing more is recorded
    requests.post(f"{url}/generate", timeout=60, json={
        "input_ids": PROMPT[:5], "sampling_params": {"max_new_tokens": 3, "temperature": 0}})
    r = requests.post(f"{url}/dump_expert_distribution_record", timeout=30)
    assert (r.status_code, r.text) == (200, "Dump expert distribution record.\n")
    (path,) = dump_dir.glob("expert_distribution_recorder_*.pt")
    data = torch.load(path)
    assert set(data) == {"rank", "logical_count", "average_utilization_rate_over_window"}
    count = data["logical_count"]
    assert count.shape == (1000, LAYERS, NUM_EXPERTS) and data["rank"] == 0
    assert int(count[0].sum()) == len(PROMPT) * TOP_K * LAYERS  # the one prefill pass
    assert int(count[1:].sum()) == 0
    torch.testing.assert_close(count.sum(0).to(torch.int64), _hf_counts(moe_folder, PROMPT))


def test_recorder_off_answers_400(server: str) -> None:
    for action in ("start", "stop", "dump"):
        r = requests.post(f"{server}/{action}_expert_distribution_record", timeout=30)
        assert r.status_code == 400 and "--expert-distribution-recorder-mode" in r.text


def test_unknown_mode_is_refused() -> None:
    from sglang.srt.server_args import ServerArgs

    with pytest.raises(ValueError, match="expert-distribution-recorder-mode"):
        ServerArgs(model_path="x", expert_distribution_recorder_mode="csv")
    with pytest.raises(ValueError, match="expert-distribution-recorder-buffer-size"):
        ServerArgs(model_path="x", expert_distribution_recorder_mode="stat",
                   expert_distribution_recorder_buffer_size=0)  # fmt: skip
