"""Every native endpoint besides /generate, and the bad-input matrix (400s; the server keeps
serving)."""

from __future__ import annotations

import pytest
import requests

GREEDY = {"temperature": 0, "max_new_tokens": 4}


def test_health(server: str) -> None:
    assert requests.get(f"{server}/health").status_code == 200
    assert requests.get(f"{server}/health_generate").status_code == 200


def test_model_info(server: str) -> None:
    info = requests.get(f"{server}/get_model_info").json()
    assert set(info) == {"model_path", "tokenizer_path", "is_generation",
                         "preferred_sampling_params", "weight_version",
                         "has_image_understanding", "has_audio_understanding"}
    assert info["model_path"] == info["tokenizer_path"] == "smollm2-135m-instruct"
    assert info["is_generation"] is True and info["preferred_sampling_params"] is None
    new = requests.get(f"{server}/model_info").json()
    assert new["architectures"] == ["LlamaForCausalLM"]
    assert new["served_model_name"] == "smollm2-135m-instruct"


def test_server_info(server: str) -> None:
    for route in ("/get_server_info", "/server_info"):
        info = requests.get(f"{server}{route}").json()
        assert info["status"] == "ready"
        assert info["model_path"] == "smollm2-135m-instruct"
        assert info["max_total_num_tokens"] == 16384
        assert info["max_req_input_len"] > 0
        assert info["version"]
        state = info["internal_states"][0]
        assert {"last_gen_throughput", "memory_usage"} <= set(state)
        assert state["memory_usage"]["token_capacity"] == 16384


def test_flush_cache(server: str) -> None:
    r = requests.post(f"{server}/flush_cache")
    assert r.status_code == 200
    assert r.text.startswith("Cache flushed.\nPlease check backend logs")
    assert requests.get(f"{server}/flush_cache").status_code == 200


def test_tokenize_detokenize(server: str) -> None:
    r = requests.post(f"{server}/tokenize", json={"prompt": "Hello world"}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] > 0
    batch = requests.post(f"{server}/v1/tokenize", json={"prompt": ["a", "b c"]}).json()
    assert batch["count"] == [len(t) for t in batch["tokens"]]
    text = requests.post(f"{server}/detokenize", json={"tokens": r["tokens"]}).json()
    assert text == {"text": "Hello world"}
    assert requests.post(f"{server}/v1/detokenize", json={"tokens": []}).json() == {"text": ""}
    chat = requests.post(f"{server}/tokenize", json={
        "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] > 3
    both = requests.post(f"{server}/tokenize", json={"prompt": "x", "messages": []})
    assert both.status_code == 400
    assert both.json()["message"] == "Exactly one of 'prompt' or 'messages' must be provided."
    bad = requests.post(f"{server}/detokenize", json={"tokens": ["a"]})
    assert bad.status_code == 400
    assert bad.json()["message"] == "Invalid input: 'tokens' must be a list of integers."


def test_models(server: str) -> None:
    models = requests.get(f"{server}/v1/models").json()
    card = models["data"][0]
    assert models["object"] == "list"
    assert card["id"] == "smollm2-135m-instruct" and card["owned_by"] == "sglang"
    assert card["max_model_len"] == 8192
    assert requests.get(f"{server}/v1/models/smollm2-135m-instruct").json()["id"] == card["id"]
    missing = requests.get(f"{server}/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_unknown_route(server: str) -> None:
    assert requests.get(f"{server}/nope").status_code == 404


BAD_INPUTS = [
    ({"sampling_params": GREEDY}, "Either text, input_ids or input_embeds should be provided."),
    ({"input_ids": []}, "input_ids cannot be empty."),
    ({"input_ids": [1, -1]}, "Input token id -1 is out of the vocabulary range [0, 49152)."),
    ({"input_ids": [1, 49152]}, "Input token id 49152 is out of the vocabulary range [0, 49152)."),
    ({"text": "x", "sampling_params": {"temperature": -1}},
     "temperature must be a non-negative finite number, got -1."),
    ({"text": "x", "sampling_params": {"top_p": 0}}, "top_p must be in (0, 1], got 0."),
    ({"text": "x", "sampling_params": {"top_k": 0}},
     "top_k must be -1 (disable) or at least 1, got 0."),
    ({"text": "x", "sampling_params": {"min_p": 2}}, "min_p must be in [0, 1], got 2."),
    ({"text": "x", "sampling_params": {"frequency_penalty": 3}},
     "frequency_penalty must be in [-2, 2], got 3."),
    ({"text": "x", "sampling_params": {"presence_penalty": -2.5}},
     "presence_penalty must be in [-2, 2], got -2.5."),
    ({"text": "x", "sampling_params": {"repetition_penalty": 0}},
     "repetition_penalty must be in (0, 2] (1.0 = no penalty), got 0."),
    ({"text": "x", "sampling_params": {"max_new_tokens": -1}},
     "max_new_tokens must be at least 0, got -1."),
    ({"text": "x", "sampling_params": {"min_new_tokens": 9, "max_new_tokens": 4}},
     "min_new_tokens must be in [0, max_new_tokens(4)], got 9."),
    ({"input_ids": [1] * 9000}, "The input (9000 tokens) is longer than the model's context "
                                "length (8192 tokens)."),
    ({"text": ["a", "b"], "rid": ["same", "same"]},
     "Duplicate request IDs detected within the request: ['same']"),
    ({"text": ["a", "b"], "rid": ["only-one"]},
     "The specified rids length mismatch with the batch_size for batch processing."),
    ({"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}},
     "Only one of json_schema, regex, ebnf, or structural_tag can be set."),
    ({"text": "x", "sampling_params": {"logit_bias": {"99999": 1.0}}},
     "logit_bias must has keys in [0, 49151], got 99999."),
    ({"text": "x", "sampling_params": {"stop": ["s"] * 33}},
     "at most 32 stop strings are allowed, got 33"),
]


@pytest.mark.parametrize("body,message", BAD_INPUTS)
def test_bad_input_is_400_and_server_keeps_serving(server: str, body: dict, message: str) -> None:
    r = requests.post(f"{server}/generate", json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": message}}
    ok = requests.post(f"{server}/generate", json={"text": "Hi", "sampling_params": GREEDY})
    assert ok.status_code == 200


def test_context_budget_message(server: str) -> None:
    r = requests.post(f"{server}/generate", json={"input_ids": [1] * 8000,
                                                  "sampling_params": {"max_new_tokens": 500}})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        "Requested token count exceeds the model's maximum context length of 8192 tokens. "
        "You requested a total of 8500 tokens: 8000 tokens from the input messages and 500 "
        "tokens for the completion.")


@pytest.mark.parametrize("body", [
    {"text": 5},
    {"input_ids": "abc"},
    {"text": "x", "sampling_params": "hot"},
    {"text": "x", "stream": "maybe"},
])
def test_wrong_json_types(server: str, body: dict) -> None:
    r = requests.post(f"{server}/generate", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["object"] == "error" and err["code"] == 400 and err["type"] == "Bad Request"


def test_wrong_sampling_param_types(server: str) -> None:
    r = requests.post(f"{server}/generate", json={"text": "x",
                                                  "sampling_params": {"temperature": "hot"}})
    assert r.status_code == 400
    assert "temperature" in r.json()["error"]["message"]


def test_malformed_json_body(server: str) -> None:
    r = requests.post(f"{server}/generate", data=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == 400
    assert requests.post(f"{server}/generate", json={"text": "Hi", "sampling_params": GREEDY}
                         ).status_code == 200
