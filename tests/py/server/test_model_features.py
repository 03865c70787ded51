"""Request options that need the model's weights to check, on a tiny random Llama whose weights the
test also loads with HF transformers (fp32): penalties against a torch reference on the same
logits, custom logit processors (``--enable-custom-logit-processor``), ``return_hidden_states``
(``--enable-return-hidden-states``) against HF's last hidden state, and ``input_embeds`` against the
equivalent ``input_ids``. The server uses a small chunk size so prompts are prefilled in chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from server_utils import serving, user_logit_processors
from sglang.srt.sampling.custom_logit_processor import (
    DisallowedTokensLogitsProcessor,
)
from sglang.srt.sampling.sampling_params import chat_sampling_defaults

CHUNK = 16
PREFERRED = {"max_new_tokens": 3, "temperature": 0}
PROMPTS = [[1, 450, 7283, 310, 3444, 338], list(range(100, 140)), [5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def feature_server(tiny_model: Path) -> Iterator[str]:
    with serving(str(tiny_model), [
            "--max-total-tokens", "4096", "--chunked-prefill-size", str(CHUNK),
            "--enable-custom-logit-processor", "--enable-return-hidden-states",
            "--preferred-sampling-params", json.dumps(PREFERRED),
            "--random-seed", "7", "--dtype", "float32", "--skip-server-warmup",
            "--log-level", "warning"]) as url:
        yield url


@pytest.fixture(scope="module")
def hf_model(tiny_model: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    return model.eval()


def generate(url: str, body: dict) -> dict | list:
    r = requests.post(f"{url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def hf_forward(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [len, vocab] and last hidden states [len, hidden] of HF on ``ids``."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), out.hidden_states[-1][0].float()


# ---- penalties -------------------------------------------------------------------------------
def penalised(logits: torch.Tensor, prompt: list[int], output: list[int], freq: float,
              pres: float, rep: float) -> torch.Tensor:
    """The contract's penalties on one row: frequency/presence from the output tokens, then
    repetition over prompt and output tokens."""
    out = logits.clone()
    counts = torch.zeros_like(out)
    for t in output:
        counts[t] += 1
    out -= freq * counts + pres * (counts > 0).float()
    seen = torch.zeros(out.shape[0], dtype=torch.bool)
    seen[torch.tensor(prompt + output, dtype=torch.long)] = True
    repeated = torch.where(out > 0, out / rep, out * rep)
    return torch.where(seen, repeated, out)


@pytest.mark.parametrize("freq,pres,rep", [(0.8, 0.0, 1.0), (0.0, 1.5, 1.0), (0.0, 0.0, 1.8),
                                           (0.5, 0.3, 1.3), (-0.5, -0.5, 0.7)])
def test_penalties_match_torch_reference(feature_server: str, hf_model: torch.nn.Module,
                                         freq: float, pres: float, rep: float) -> None:
    prompt = PROMPTS[0]
    steps = 12
    out = generate(feature_server, {"input_ids": prompt, "return_logprob": True,
                                    "sampling_params": {
                                        "temperature": 0, "max_new_tokens": steps,
                                        "ignore_eos": True, "frequency_penalty": freq,
                                        "presence_penalty": pres, "repetition_penalty": rep}})
    plain = generate(feature_server, {"input_ids": prompt, "sampling_params": {
        "temperature": 0, "max_new_tokens": steps, "ignore_eos": True}})
    assert out["output_ids"] != plain["output_ids"]  # the penalties change this output
    output: list[int] = []
    for k in range(steps):
        logits, _ = hf_forward(hf_model, prompt + output)
        row = penalised(logits[-1], prompt, output, freq, pres, rep)
        expected = int(row.argmax())
        assert out["output_ids"][k] == expected, f"step {k}"
        logprob = float(torch.log_softmax(row, -1)[expected])
        assert abs(out["meta_info"]["output_token_logprobs"][k][0] - logprob) < 1e-3
        output.append(expected)


# ---- custom logit processors ------------------------------------------------------------------
_USER = user_logit_processors()
DeterministicLogitProcessor = _USER["DeterministicLogitProcessor"]
CountingProcessor = _USER["CountingProcessor"]
FailingProcessor = _USER["FailingProcessor"]


def test_deterministic_processor_forces_every_row(feature_server: str) -> None:
    body = {"input_ids": [PROMPTS[0], PROMPTS[2]],
            "custom_logit_processor": DeterministicLogitProcessor.to_str(),
            "sampling_params": {"temperature": 0.9, "max_new_tokens": 6, "ignore_eos": True,
                                "custom_params": {"token_id": 5}}}
    out = generate(feature_server, body)
    assert [o["output_ids"] for o in out] == [[5] * 6, [5] * 6]
    streamed = requests.post(f"{feature_server}/generate", json={**body, "stream": True},
                             timeout=60)
    assert streamed.status_code == 200 and b'"output_ids":[5,5,5,5,5,5]' in streamed.content


def test_processor_rows_batched_with_other_requests(feature_server: str) -> None:
    plain = generate(feature_server, {"input_ids": PROMPTS[1], "sampling_params": {
        "temperature": 0, "max_new_tokens": 6, "ignore_eos": True}})
    processor = DeterministicLogitProcessor.to_str()
    out = generate(feature_server, {
        "input_ids": [PROMPTS[0], PROMPTS[1], PROMPTS[2]],
        "custom_logit_processor": [processor, None, processor],
        "sampling_params": [
            {"temperature": 0, "max_new_tokens": 6, "custom_params": {"token_id": 7}},
            {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True},
            {"temperature": 0, "max_new_tokens": 6, "custom_params": {"token_id": 9}}]})
    assert out[0]["output_ids"] == [7] * 6 and out[2]["output_ids"] == [9] * 6
    assert out[1]["output_ids"] == plain["output_ids"]


def test_processor_sees_the_request(feature_server: str) -> None:
    out = generate(feature_server, {"input_ids": PROMPTS[2],
                                    "custom_logit_processor": CountingProcessor.to_str(),
                                    "sampling_params": {"temperature": 0, "max_new_tokens": 5,
                                                        "ignore_eos": True}})
    assert out["output_ids"] == [10, 11, 12, 13, 14]


def test_disallowed_tokens_builtin(feature_server: str) -> None:
    base = generate(feature_server, {"input_ids": PROMPTS[0], "sampling_params": {
        "temperature": 0, "max_new_tokens": 8, "ignore_eos": True}})
    banned = sorted(set(base["output_ids"]))
    out = generate(feature_server, {
        "input_ids": PROMPTS[0],
        "custom_logit_processor": DisallowedTokensLogitsProcessor.to_str(),
        "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True,
                            "custom_params": {"token_ids": banned}}})
    assert not set(out["output_ids"]) & set(banned)


def test_broken_processors_are_400_and_server_keeps_serving(feature_server: str) -> None:
    bad = requests.post(f"{feature_server}/generate", json={
        "input_ids": PROMPTS[0], "custom_logit_processor": '{"callable": "zz"}'}, timeout=60)
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("Invalid custom_logit_processor")
    failing = requests.post(f"{feature_server}/generate", json={
        "input_ids": PROMPTS[0], "custom_logit_processor": FailingProcessor.to_str(),
        "sampling_params": {"max_new_tokens": 4}}, timeout=60)
    assert failing.status_code == 400
    assert failing.json()["error"]["message"] == (
        "The custom logit processor failed: RuntimeError: boom")
    generate(feature_server, {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 2}})


# ---- hidden states ----------------------------------------------------------------------------
def test_hidden_states_match_hf(feature_server: str, hf_model: torch.nn.Module) -> None:
    steps = 8
    out = generate(feature_server, {"input_ids": PROMPTS, "return_hidden_states": True,
                                    "sampling_params": {"temperature": 0, "max_new_tokens": steps,
                                                        "ignore_eos": True}})
    for prompt, o in zip(PROMPTS, out):
        hidden = o["meta_info"]["hidden_states"]
        assert len(hidden) == steps
        assert len(hidden[0]) == len(prompt)  # the prompt block, every position (in chunks)
        ours = torch.tensor(hidden[0] + hidden[1:])
        _, expected = hf_forward(hf_model, prompt + o["output_ids"][:-1])
        assert ours.shape == expected.shape
        assert torch.allclose(ours, expected, atol=1e-4, rtol=0), (ours - expected).abs().max()
    keys = list(out[0]["meta_info"])
    assert keys.index("cached_tokens") < keys.index("hidden_states") < keys.index("e2e_latency")


def test_hidden_states_last_mode_and_off(feature_server: str, hf_model: torch.nn.Module) -> None:
    prompt = PROMPTS[1]
    out = generate(feature_server, {"input_ids": prompt, "return_hidden_states": "last",
                                    "sampling_params": {"temperature": 0, "max_new_tokens": 3,
                                                        "ignore_eos": True}})
    hidden = out["meta_info"]["hidden_states"]
    assert len(hidden) == 3 and len(hidden[0]) == 1
    _, expected = hf_forward(hf_model, prompt + out["output_ids"][:-1])
    ours = torch.tensor(hidden[0] + hidden[1:])
    assert torch.allclose(ours, expected[len(prompt) - 1:], atol=1e-4, rtol=0)
    off = generate(feature_server, {"input_ids": prompt, "sampling_params": {"max_new_tokens": 2}})
    assert "hidden_states" not in off["meta_info"]


# ---- input_embeds -----------------------------------------------------------------------------
def test_input_embeds_give_the_same_tokens_as_ids(feature_server: str,
                                                  hf_model: torch.nn.Module) -> None:
    table = hf_model.get_input_embeddings().weight.detach()
    params = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}
    by_ids = generate(feature_server, {"input_ids": PROMPTS, "sampling_params": params})
    embeds = [table[torch.tensor(p)].tolist() for p in PROMPTS]
    by_embeds = generate(feature_server, {"input_embeds": embeds, "sampling_params": params})
    assert [o["output_ids"] for o in by_embeds] == [o["output_ids"] for o in by_ids]
    single = generate(feature_server, {"input_embeds": embeds[1], "sampling_params": params})
    assert single["output_ids"] == by_ids[1]["output_ids"]
    assert single["meta_info"]["prompt_tokens"] == len(PROMPTS[1])
    # A repeat of the same embeddings reuses the cache; different embeddings never do.
    again = generate(feature_server, {"input_embeds": embeds[1], "sampling_params": params})
    assert again["meta_info"]["cached_tokens"] > 0 and again["output_ids"] == single["output_ids"]
    other = [[v + 0.5 for v in row] for row in embeds[1]]
    fresh = generate(feature_server, {"input_embeds": other, "sampling_params": params})
    assert fresh["meta_info"]["cached_tokens"] == 0


def test_input_embeds_with_n_and_hidden_states(feature_server: str,
                                               hf_model: torch.nn.Module) -> None:
    table = hf_model.get_input_embeddings().weight.detach()
    embeds = table[torch.tensor(PROMPTS[0])].tolist()
    out = generate(feature_server, {"input_embeds": embeds, "return_hidden_states": True,
                                    "sampling_params": {"n": 2, "temperature": 1.0,
                                                        "max_new_tokens": 4, "ignore_eos": True}})
    assert len(out) == 2
    for o in out:
        _, expected = hf_forward(hf_model, PROMPTS[0] + o["output_ids"][:-1])
        hidden = o["meta_info"]["hidden_states"]
        assert torch.allclose(torch.tensor(hidden[0] + hidden[1:]), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("embeds,message", [
    ([], "input_embeds cannot be empty."),
    ([[0.0] * 31], "input_embeds rows must have the model's hidden size (32), got a row of 31."),
])
def test_bad_input_embeds(feature_server: str, embeds: list, message: str) -> None:
    r = requests.post(f"{feature_server}/generate", json={"input_embeds": embeds}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == message


# ---- --preferred-sampling-params and --sampling-defaults -------------------------------------
def test_preferred_sampling_params_merge_under_requests(feature_server: str) -> None:
    info = requests.get(f"{feature_server}/get_model_info", timeout=30).json()
    assert info["preferred_sampling_params"] == PREFERRED
    default = generate(feature_server, {"input_ids": PROMPTS[0]})
    assert len(default["output_ids"]) == 3  # max_new_tokens from the preferred params
    again = generate(feature_server, {"input_ids": PROMPTS[0]})
    assert again["output_ids"] == default["output_ids"]  # temperature 0 from them too
    explicit = generate(feature_server, {"input_ids": PROMPTS[0], "sampling_params": {
        "max_new_tokens": 5, "ignore_eos": True}})
    assert len(explicit["output_ids"]) == 5


def test_chat_sampling_defaults(feature_server: str) -> None:
    state = requests.get(f"{feature_server}/get_server_info", timeout=30).json()
    model_mode = state["internal_states"][0]["chat_sampling_defaults"]
    # --sampling-defaults model (the default): generation_config.json's keys over OpenAI's.
    assert model_mode == {"temperature": 0.6, "top_p": 0.9, "top_k": -1, "min_p": 0.0,
                          "repetition_penalty": 1.0}
    assert chat_sampling_defaults("openai", {"temperature": 0.6}) == {
        "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    with pytest.raises(ValueError):
        chat_sampling_defaults("hf", {})
