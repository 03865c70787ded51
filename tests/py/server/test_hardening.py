"""Hostile-but-fair inputs against the demo server: each one gets a clear 4xx (or is served), the
server keeps serving, and the engine stays up and idle-clean (checked after the module).

Regression tests of issue #9's defects 2-9 and 12 (auth and limits with their own server are in
test_guards.py; engine death in test_lifecycle.py).
"""

from __future__ import annotations

import json
import threading

import pytest
import requests
from server_utils import server_state

GREEDY = {"temperature": 0, "max_new_tokens": 4}


def post(url: str, body: dict | bytes, route: str = "/generate", **kw) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(f"{url}{route}", data=body, timeout=300, **kw)
    return requests.post(f"{url}{route}", json=body, timeout=300, **kw)


def assert_still_serving(url: str) -> None:
    r = post(url, {"text": "Hi", "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    assert len(r.json()["output_ids"]) == 4
    assert requests.get(f"{url}/get_server_info").json()["status"] == "ready"


def error_message(r: requests.Response) -> str:
    body = r.json()
    return body["error"]["message"] if "error" in body else body["message"]


# ---- defect 2: one request used to kill the engine for good ------------------------------------
@pytest.mark.parametrize("body,field", [
    ({"text": "Hi", "return_logprob": True, "token_ids_logprob": [999999]}, "token_ids_logprob"),
    ({"text": "Hi", "sampling_params": {"stop_token_ids": [2147483648]}}, "stop_token_ids"),
    ({"text": "Hi", "sampling_params": {"stop_token_ids": [2**70]}}, "stop_token_ids"),
    ({"text": "Hi", "token_ids_logprob": [2**70]}, "token_ids_logprob"),
])
def test_request_that_killed_the_engine_is_a_400(server: str, body: dict, field: str) -> None:
    forward_ct = server_state(server)["forward_ct"]
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert field in error_message(r)
    assert_still_serving(server)
    assert server_state(server)["forward_ct"] > forward_ct  # the same engine, still stepping


# ---- defect 3: stream_interval -1 used to spin the stream loop ---------------------------------
@pytest.mark.parametrize("interval", [-1, 0])
def test_stream_interval_below_one_is_a_400(server: str, interval: int) -> None:
    r = post(server, {"text": "Hi", "stream": True,
                      "sampling_params": {"max_new_tokens": 4, "stream_interval": interval}})
    assert r.status_code == 400
    assert error_message(r) == f"stream_interval must be at least 1, got {interval}."
    assert requests.get(f"{server}/health", timeout=30).status_code == 200


# ---- defect 4: a huge prompt used to stall the event loop --------------------------------------
def test_prompt_too_long_by_its_characters_is_refused_before_tokenizing(server: str) -> None:
    r = post(server, {"text": "a" * 20_000_000, "sampling_params": GREEDY})
    assert r.status_code == 400
    assert error_message(r).startswith("The input (20000000 characters) is longer than the "
                                       "model's context length (8192 tokens) can hold")
    assert_still_serving(server)


def test_tokenizing_a_large_prompt_does_not_stall_health_checks(server: str) -> None:
    """A long /tokenize call (about a million characters: a second or more of tokenizer time)
    runs off the event loop: requests sent meanwhile are answered before it (ordering, not
    timing)."""
    order: list[str] = []
    done = threading.Event()

    def big() -> None:
        words = " ".join(f"w{i}" for i in range(150_000))  # ~1M characters, under the bound
        try:
            r = post(server, {"prompt": words}, route="/tokenize")
            assert r.status_code == 200 and r.json()["count"] > 150_000, r.text[:200]
            order.append("tokenize")
        finally:
            done.set()

    t = threading.Thread(target=big)
    t.start()
    checks = 0
    while not done.is_set() and checks < 10_000:
        assert requests.get(f"{server}/v1/models", timeout=60).status_code == 200
        checks += 1
        order.append("check")
    t.join(120)
    assert "tokenize" in order and "check" in order, order
    assert order.index("check") < order.index("tokenize")


# ---- defect 5: a catastrophic stop regex used to stall the engine ------------------------------
def test_backtracking_stop_regex_is_bounded(server: str) -> None:
    # The output is forced to "a"s; neither pattern can match. "(a+)+b" is linear on the regex
    # engine; "(a|aa)+b" needs exponential time and ends its own request with a 400.
    body = {"text": "Write the letter a many times:", "sampling_params": {
        "max_new_tokens": 64, "regex": "a+", "ignore_eos": True, "stop_regex": "(a+)+b"}}
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["finish_reason"] == {"type": "length", "length": 64}
    assert set(r.json()["text"]) == {"a"}
    body["sampling_params"]["stop_regex"] = "(a|aa)+b"
    r = post(server, body)
    assert r.status_code == 400
    assert error_message(r).startswith("stop_regex '(a|aa)+b' took more than")
    assert_still_serving(server)


def test_stop_regex_matches_across_tokens(server: str) -> None:
    base = post(server, {"text": "Count: 1, 2, 3,", "sampling_params": {
        "temperature": 0, "max_new_tokens": 24}}).json()
    stopped = post(server, {"text": "Count: 1, 2, 3,", "sampling_params": {
        "temperature": 0, "max_new_tokens": 24, "stop_regex": r"\d+, \d+,"}}).json()
    assert stopped["meta_info"]["finish_reason"]["type"] == "stop"
    matched = stopped["meta_info"]["finish_reason"]["matched"]
    assert base["text"].startswith(stopped["text"] + matched)


# ---- defect 6: out-of-range values used to be accepted ------------------------------------------
@pytest.mark.parametrize("body,message", [
    ({"text": "Hi", "return_logprob": True, "token_ids_logprob": [-1]},
     "token_ids_logprob: token id -1 is out of the vocabulary range [0, 49152)."),
    ({"text": "Hi", "sampling_params": {"stop_token_ids": [-1]}},
     "stop_token_ids: token id -1 is out of the vocabulary range [0, 49152)."),
    ({"text": "Hi", "sampling_params": {"stop_token_ids": [49152]}},
     "stop_token_ids: token id 49152 is out of the vocabulary range [0, 49152)."),
    ({"text": "Hi", "return_logprob": True, "logprob_start_len": 1000},
     "logprob_start_len=1000 is higher than the number of input tokens (1). Please use a "
     "smaller logprob_start_len."),
    ({"text": "Hi", "return_logprob": True, "logprob_start_len": -2},
     "logprob_start_len must be -1 (no prompt logprobs) or at least 0, got -2."),
    ({"text": "Hi", "return_logprob": True, "top_logprobs_num": -1},
     "top_logprobs_num must be in [0, 256] (--max-top-logprobs-num), got -1."),
    ({"text": "Hi", "rid": ""},
     "rid must be a non-empty string of at most 1024 characters, got 0 characters."),
    ({"text": ["Hi", "Yo"], "rid": ["a", ""]},
     "rid must be a non-empty string of at most 1024 characters, got 0 characters."),
    ({"text": "Hi", "input_ids": [1, 2]},
     "Only one of text, input_ids or input_embeds may be provided, got text and input_ids."),
    ({"text": "Hi", "sampling_params": {"stop": ""}},
     "Invalid 'stop': empty string. Expected a string with minimum length 1, but got an empty "
     "string instead."),
    ({"text": "Hi", "sampling_params": {"stop": ["x", ""]}},
     "Invalid 'stop': empty string. Expected a string with minimum length 1, but got an empty "
     "string instead."),
    ({"text": "Hi", "sampling_params": {"stop": "x" * 513}},
     "stop strings must be at most 512 characters (--max-stop-string-length), got one of 513"),
    ({"text": "Hi", "sampling_params": {"stop_regex": ""}},
     "Invalid 'stop_regex': empty pattern. Expected a pattern with minimum length 1."),
])
def test_out_of_range_values_are_a_400_naming_the_field(server: str, body: dict,
                                                        message: str) -> None:
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": message}}
    assert_still_serving(server)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e999"])
def test_non_finite_numbers_are_a_400(server: str, value: bytes) -> None:
    # JSON has no NaN or infinity; Python's encoder writes bare literals, which are refused.
    r = post(server, b'{"text": "Hi", "sampling_params": {"logit_bias": {"5": ' + value + b"}}}")
    assert r.status_code == 400 and error_message(r)
    assert_still_serving(server)


def test_valid_edge_values_are_served(server: str) -> None:
    prompt = requests.post(f"{server}/tokenize", json={"prompt": "Hello there"}).json()["tokens"]
    r = post(server, {"input_ids": prompt, "return_logprob": True,
                      "logprob_start_len": len(prompt) - 1, "top_logprobs_num": 256,
                      "token_ids_logprob": [0, 49151],
                      "sampling_params": {**GREEDY, "stop_token_ids": [0, 49151],
                                          "logit_bias": {"7": -1e30}}})
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    assert len(meta["input_token_logprobs"]) == 1
    assert len(meta["output_top_logprobs"][0]) == 256
    assert 7 not in r.json()["output_ids"]


# ---- defect 7: tokenizer routes used to answer a plain-text 500 --------------------------------
@pytest.mark.parametrize("route,body", [
    ("/tokenize", {"messages": "x"}),
    ("/tokenize", {"messages": [{"content": "no role"}]}),
    ("/tokenize", {"prompt": 5}),
    ("/tokenize", {"prompt": "x" * 2_000_000}),
    ("/v1/tokenize", {"messages": [{"role": "user", "content": [{"type": "image"}]}]}),
    ("/detokenize", {"tokens": [-1]}),
    ("/detokenize", {"tokens": [[1, 2], [49152]]}),
    ("/detokenize", {"tokens": [2**80]}),
    ("/v1/detokenize", {"tokens": "abc"}),
])
def test_tokenizer_routes_answer_json_4xx(server: str, route: str, body: dict) -> None:
    r = post(server, body, route=route)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == 400 and r.json()["message"]


def test_detokenize_out_of_vocabulary_names_the_id(server: str) -> None:
    r = post(server, {"tokens": [5, -1]}, route="/detokenize")
    assert r.json()["message"] == "tokens: token id -1 is out of the vocabulary range [0, 49152)."


# ---- defect 8: amplification ---------------------------------------------------------------------
@pytest.mark.parametrize("body,message", [
    ({"text": "Hi", "return_logprob": True, "top_logprobs_num": 100000},
     "top_logprobs_num must be in [0, 256] (--max-top-logprobs-num), got 100000."),
    ({"text": "Hi", "sampling_params": {"n": 1000}}, "n must be at most 128 (--max-n), got 1000."),
    ({"text": ["Hi"] * 20, "sampling_params": {"n": 100}},
     "The request asks for 2000 generations (prompts x n), more than the server's limit of "
     "1024 (--max-batch-size)."),
    ({"text": "Hi", "token_ids_logprob": list(range(65))},
     "token_ids_logprob may hold at most 64 token ids (--max-token-ids-logprob), got 65."),
])
def test_amplifying_requests_are_refused(server: str, body: dict, message: str) -> None:
    r = post(server, body)
    assert r.status_code == 400
    assert error_message(r) == message


def test_oversized_batch_is_refused_before_parsing_it_all(server: str) -> None:
    r = post(server, {"input_ids": [[1]] * 5000})
    assert r.status_code == 400
    assert "input_ids holds a batch of 5000 prompts" in r.json()["message"]


# ---- defect 9: unsupported fields are a 400, not silently ignored -------------------------------
@pytest.mark.parametrize("field,value", [
    ("audio_data", ["a.wav"]),
    ("video_data", "v.mp4"),
    ("session_params", {"id": "s1"}),
    ("priority", 5),
    ("bootstrap_room", 3),
])
def test_unsupported_fields_are_a_400_naming_them(server: str, field: str, value: object) -> None:
    r = post(server, {"text": "Hi", field: value, "sampling_params": GREEDY})
    assert r.status_code == 400
    assert error_message(r).startswith(f"{field} is not supported by this server yet")


def test_image_data_on_a_text_only_model_is_a_400(server: str) -> None:
    r = post(server, {"text": "Hi", "image_data": "https://example.com/cat.png",
                      "sampling_params": GREEDY})
    assert r.status_code == 400
    assert error_message(r).startswith("image_data: the model LlamaForCausalLM does not take "
                                       "images")


def test_unset_unsupported_fields_are_fine(server: str) -> None:
    r = post(server, {"text": "Hi", "image_data": None, "lora_path": [None], "audio_data": [],
                      "sampling_params": GREEDY})
    assert r.status_code == 200, r.text


# ---- defect 12: errors never echo a large body ---------------------------------------------------
def test_deeply_nested_json_error_is_short(server: str) -> None:
    depth = 100_000
    body = ('{"text": "Hi", "sampling_params": ' + "[" * depth + "]" * depth + "}").encode()
    assert len(body) > 200_000
    r = post(server, body)
    assert r.status_code == 400
    assert len(r.content) < 4096
    wide = json.dumps({"text": "Hi", "input_ids": ["x"] * 100_000}).encode()
    r = post(server, wide)
    assert r.status_code == 400 and len(r.content) < 4096
    assert "input_ids[0] must be an integer" in r.json()["message"]
    assert_still_serving(server)


def test_non_finite_logit_bias_from_python_is_refused() -> None:
    """The offline engine takes Python floats: NaN and +inf are refused, -inf bans a token."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logit_bias values must be finite numbers"):
            SamplingParams.from_dict({"logit_bias": {"5": bad}}).verify(100)
    SamplingParams.from_dict({"logit_bias": {"5": float("-inf")}}).verify(100)
