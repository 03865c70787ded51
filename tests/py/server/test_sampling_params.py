"""Every sampling parameter of /generate changes the output as the contract says (demo model, real
HTTP): top-k / top-p / min-p by the support of many seeded draws, min_new_tokens past EOS,
stop_regex, logit_bias, sampling_seed (alone and inside a batch), n > 1, explicit nulls, per-item
lists, and the validation messages of the contract's section 3.1 as 400s."""

from __future__ import annotations

import math

import pytest
import requests

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# A prompt whose next-token distribution is spread over many tokens.
OPEN_PROMPT = "My favourite thing to do on a sunny day is"
DRAWS = 64


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/generate", json=body, timeout=300)


Dist = list[tuple[int, float]]  # (token id, probability), highest first


def draws_with_distributions(url: str, extra: dict, top: int = 200) -> list[tuple[int, Dist]]:
    """DRAWS seeded first tokens at temperature 1 in one batch, each with the distribution its row
    was drawn from (the row's own top logprobs, taken before top-k/top-p/min-p). Each draw is
    judged by its own row: batched GPU kernels may round a row differently from a batch of one."""
    params = [{"max_new_tokens": 1, "temperature": 1.0, "sampling_seed": 1000 + i, **extra}
              for i in range(DRAWS)]
    out = post(url, {"text": [OPEN_PROMPT] * DRAWS, "sampling_params": params,
                     "return_logprob": True, "top_logprobs_num": top}).json()
    return [(o["output_ids"][0],
             [(tid, math.exp(lp)) for lp, tid, _ in o["meta_info"]["output_top_logprobs"][0]])
            for o in out]


def draw_first_tokens(url: str, extra: dict) -> list[int]:
    return [tok for tok, _ in draws_with_distributions(url, extra)]


def test_unrestricted_draws_spread(server: str) -> None:
    assert len(set(draw_first_tokens(server, {}))) > 5


def test_top_k_limits_the_support(server: str) -> None:
    draws = draws_with_distributions(server, {"top_k": 3})
    for tok, dist in draws:
        third = dist[2][1]
        assert tok in {tid for tid, p in dist if p >= third * (1 - 1e-6)}, (tok, dist[:4])
    assert len({tok for tok, _ in draws}) > 1
    for tok, dist in draws_with_distributions(server, {"top_k": 1}):
        assert tok == dist[0][0] or dist[1][1] >= dist[0][1] * (1 - 1e-6), (tok, dist[:2])


def test_top_p_limits_the_support(server: str) -> None:
    top_p, sizes = 0.5, set()
    draws = draws_with_distributions(server, {"top_p": top_p})
    for tok, dist in draws:
        allowed, before = set(), 0.0
        for tid, p in dist:  # the smallest prefix of the sorted tokens reaching top_p
            if before >= top_p + 1e-4:
                break
            allowed.add(tid)
            before += p
        assert tok in allowed, (tok, dist[:len(allowed) + 1])
        sizes.add(len(allowed))
    assert sizes == {1} or len({tok for tok, _ in draws}) > 1


def test_min_p_limits_the_support(server: str) -> None:
    min_p, sizes = 0.2, set()
    draws = draws_with_distributions(server, {"min_p": min_p})
    for tok, dist in draws:
        allowed = {tid for tid, p in dist if p >= min_p * dist[0][1] * 0.999}
        assert tok in allowed, (tok, dist[:len(allowed) + 1])
        sizes.add(len(allowed))
    assert sizes == {1} or len({tok for tok, _ in draws}) > 1


def test_min_new_tokens_forces_length_past_eos(server: str) -> None:
    base = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                           "max_new_tokens": 64}}).json()
    natural = base["meta_info"]["completion_tokens"]
    assert base["meta_info"]["finish_reason"]["type"] == "stop" and natural < 20
    forced = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 64, "min_new_tokens": natural + 10}}).json()
    assert forced["meta_info"]["completion_tokens"] >= natural + 10
    eos = base["meta_info"]["finish_reason"]["matched"]
    assert eos not in forced["output_ids"][: natural + 10]


def test_stop_regex_stops_and_trims(server: str) -> None:
    base = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                           "max_new_tokens": 32}}).json()
    assert "Paris" in base["text"]
    out = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 32, "stop_regex": [r"P[a-z]+s", r"\d{5}"]}}).json()
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Paris"}
    assert out["text"] == base["text"][: base["text"].index("Paris")]
    kept = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 32, "stop_regex": r"P[a-z]+s",
        "no_stop_trim": True}}).json()
    assert kept["text"].endswith("Paris")


def test_logit_bias_forces_and_forbids(server: str) -> None:
    base = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                           "max_new_tokens": 8}}).json()
    first = base["output_ids"][0]
    forbidden = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 8, "logit_bias": {str(first): -100.0}}}).json()
    assert forbidden["output_ids"][0] != first
    forced = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0.7, "max_new_tokens": 6, "ignore_eos": True,
        "logit_bias": {"1234": 100.0}}}).json()
    assert forced["output_ids"] == [1234] * 6


def test_sampling_seed_reproduces_alone_and_in_a_batch(server: str) -> None:
    params = {"temperature": 1.0, "max_new_tokens": 16, "sampling_seed": 7, "ignore_eos": True}
    alone = post(server, {"text": OPEN_PROMPT, "sampling_params": params}).json()
    again = post(server, {"text": OPEN_PROMPT, "sampling_params": params}).json()
    assert alone["output_ids"] == again["output_ids"]
    batch = post(server, {
        "text": ["Tell me a story about a dragon.", OPEN_PROMPT, "List three fruits:"],
        "sampling_params": [{**params, "sampling_seed": 1}, params,
                            {**params, "sampling_seed": 99}]}).json()
    assert batch[1]["output_ids"] == alone["output_ids"]
    others = [post(server, {"text": OPEN_PROMPT, "sampling_params": {**params,
                                                                     "sampling_seed": s}}
                   ).json()["output_ids"] for s in (8, 9)]
    assert any(o != alone["output_ids"] for o in others)


def test_n_gives_distinct_samples_in_prompt_major_order(server: str) -> None:
    out = post(server, {"text": [OPEN_PROMPT, "List three fruits:"], "sampling_params": {
        "n": 3, "temperature": 1.0, "max_new_tokens": 12, "ignore_eos": True}}).json()
    assert len(out) == 6
    prompt_tokens = [o["meta_info"]["prompt_tokens"] for o in out]
    assert prompt_tokens[:3] == [prompt_tokens[0]] * 3
    assert prompt_tokens[3:] == [prompt_tokens[3]] * 3 and prompt_tokens[0] != prompt_tokens[3]
    assert len({tuple(o["output_ids"]) for o in out[:3]}) == 3
    assert len({tuple(o["output_ids"]) for o in out[3:]}) == 3


def test_explicit_null_means_default(server: str) -> None:
    nulls = {k: None for k in ("temperature", "top_p", "top_k", "min_p", "stop", "logit_bias",
                               "frequency_penalty", "sampling_seed", "stream_interval")}
    out = post(server, {"text": CHAT, "sampling_params": {
        **nulls, "temperature": 0, "max_new_tokens": 8}}).json()
    base = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                           "max_new_tokens": 8}}).json()
    assert out["output_ids"] == base["output_ids"]
    unlimited = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                                "max_new_tokens": None}}).json()
    assert unlimited["meta_info"]["finish_reason"]["type"] == "stop"


def test_per_item_options_in_a_batch(server: str) -> None:
    out = post(server, {"text": [CHAT, CHAT], "return_logprob": [True, False],
                        "top_logprobs_num": [2, 0],
                        "sampling_params": [{"temperature": 0, "max_new_tokens": 3},
                                            {"temperature": 0, "max_new_tokens": 5}]}).json()
    assert len(out[0]["output_ids"]) == 3 and len(out[1]["output_ids"]) == 5
    assert len(out[0]["meta_info"]["output_top_logprobs"][0]) == 2
    assert "output_token_logprobs" not in out[1]["meta_info"]


def test_skip_special_tokens(server: str) -> None:
    ids = requests.post(f"{server}/tokenize", json={"prompt": "<|im_start|><|im_end|>"}
                        ).json()["tokens"]
    body = {"input_ids": [1, 2, 3], "sampling_params": {
        "max_new_tokens": 2, "temperature": 0, "ignore_eos": True,
        "logit_bias": {str(ids[0]): 100.0}}}
    skipped = post(server, body).json()
    assert skipped["text"] == ""
    body["sampling_params"]["skip_special_tokens"] = False
    shown = post(server, body).json()
    assert shown["text"].count("<|im_start|>") == 2


STOP_REGEX_LONG = "a" * 257
VALIDATION = [
    ({"stop_regex": ["x"] * 33}, "at most 32 stop_regex patterns are allowed, got 33"),
    ({"stop_regex": STOP_REGEX_LONG}, "stop_regex is 257 bytes, over the 256-byte limit"),
    ({"stop_regex": "(unbalanced"}, "Invalid stop_regex '(unbalanced'"),
    ({"sampling_seed": 2**63}, f"sampling_seed must be in [-2^63, 2^63-1], got {2**63}."),
    ({"logit_bias": {"-1": 1.0}}, "logit_bias must has keys in [0, 49151], got -1."),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias must has keys in [0, 49151], got abc."),
    ({"top_k": -2}, "top_k must be -1 (disable) or at least 1, got -2."),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5."),
    ({"min_p": -0.1}, "min_p must be in [0, 1], got -0.1."),
    ({"repetition_penalty": 2.5}, "repetition_penalty must be in (0, 2] (1.0 = no penalty)"),
    ({"min_new_tokens": -1}, "min_new_tokens must be in [0, max_new_tokens(128)], got -1."),
    ({"temperature": 1, "regex": "a", "ebnf": "root ::= \"a\""},
     "Only one of json_schema, regex, ebnf, or structural_tag can be set."),
    ({"structural_tag": "{}", "json_schema": "{}"},
     "Only one of json_schema, regex, ebnf, or structural_tag can be set."),
    ({"bogus_key": 1}, "Unknown sampling parameter 'bogus_key'"),
    ({"n": 0}, "n must be a positive integer, got 0."),
]


@pytest.mark.parametrize("params,message", VALIDATION)
def test_validation_messages(server: str, params: dict, message: str) -> None:
    r = post(server, {"text": "Hi", "sampling_params": params})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(message), r.text
    ok = post(server, {"text": "Hi", "sampling_params": {"temperature": 0, "max_new_tokens": 2}})
    assert ok.status_code == 200


REQUEST_ERRORS = [
    ({"text": "x", "custom_logit_processor": "{}"},
     "The server is not configured to enable custom logit processor. Please set "
     "`--enable-custom-logit-processor` to enable this feature."),
    ({"text": "x", "return_hidden_states": True},
     "The server is not configured to return hidden states."),
    ({"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 3}]},
     "The parallel_sample_num should be the same for all samples in sample params."),
    ({"text": ["a", "b"], "return_logprob": [True, False], "sampling_params": {"n": 2}},
     "Cannot use list return_logprob with parallel_sample_num > 1"),
    ({"text": ["a", "b"], "top_logprobs_num": [1, 2], "sampling_params": {"n": 2}},
     "Cannot use list top_logprobs_num with parallel_sample_num > 1"),
    ({"text": ["a", "b"], "sampling_params": [{}]},
     "The length of sampling_params should be equal to the batch size."),
    ({"text": ["a", "b"], "return_logprob": [True]},
     "The length of per-item options should be equal to the batch size."),
    ({"text": "x", "return_hidden_states": "middle"},
     "return_hidden_states must be a boolean, 'full' or 'last', got 'middle'."),
]


@pytest.mark.parametrize("body,message", REQUEST_ERRORS)
def test_request_level_errors(server: str, body: dict, message: str) -> None:
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(message), r.text
