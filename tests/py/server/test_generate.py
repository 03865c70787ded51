"""/generate through real HTTP on the demo model: shapes, batching, n>1, streaming, logprobs, stops,
prefix caching and aborts."""

from __future__ import annotations

import json
import threading
import time

import requests
from server_utils import wait_running

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GREEDY = {"temperature": 0, "max_new_tokens": 16}


def post(url: str, body: dict, **kw) -> requests.Response:
    return requests.post(f"{url}/generate", json=body, timeout=300, **kw)


def sse(resp: requests.Response) -> list:
    events = []
    for line in resp.iter_lines():
        if not line:
            continue
        assert line.startswith(b"data: "), line
        data = line[len(b"data: "):]
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def test_capital_of_france(server: str) -> None:
    r = post(server, {"text": CHAT, "sampling_params": {"temperature": 0, "max_new_tokens": 32}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == "The capital of France is Paris."
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2}
    assert out["output_ids"][-1] == 2  # EOS included in output_ids, trimmed from text


def test_response_shape_and_length_finish(server: str) -> None:
    r = post(server, {"text": "The quick brown fox", "sampling_params": {"max_new_tokens": 5,
                                                                         "temperature": 0}})
    out = r.json()
    assert list(out) == ["text", "output_ids", "meta_info"]
    meta = out["meta_info"]
    assert list(meta) == ["id", "finish_reason", "prompt_tokens", "weight_version",
                          "num_retractions", "reasoning_tokens", "completion_tokens",
                          "cached_tokens", "e2e_latency", "response_sent_to_client_ts"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["completion_tokens"] == len(out["output_ids"]) == 5
    assert meta["prompt_tokens"] == 4
    assert meta["weight_version"] == "default"
    assert len(meta["id"]) == 32


def test_input_ids_and_batches(server: str) -> None:
    ids = requests.post(f"{server}/tokenize", json={"prompt": "Hello, my name is"}).json()["tokens"]
    single = post(server, {"input_ids": ids, "sampling_params": GREEDY}).json()
    text = post(server, {"text": "Hello, my name is", "sampling_params": GREEDY}).json()
    assert single["output_ids"] == text["output_ids"]
    batch = post(server, {"text": ["Hello, my name is", "The sky is"],
                          "sampling_params": GREEDY, "rid": "batch"}).json()
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == single["output_ids"]
    assert [b["meta_info"]["id"] for b in batch] == ["batch_0", "batch_1"]
    per_item = post(server, {"input_ids": [ids, ids], "sampling_params": [
        {"temperature": 0, "max_new_tokens": 3}, {"temperature": 0, "max_new_tokens": 6}]}).json()
    assert [len(p["output_ids"]) for p in per_item] == [3, 6]


def test_n_samples_prompt_major(server: str) -> None:
    r = post(server, {"text": ["Once upon a time", "In the year 3000"],
                      "sampling_params": {"n": 3, "temperature": 1.0, "max_new_tokens": 12}})
    out = r.json()
    assert len(out) == 6
    assert len({o["meta_info"]["id"] for o in out}) == 6
    first = {o["text"] for o in out[:3]}
    assert len(first) >= 2  # distinct samples
    greedy = post(server, {"text": "Once upon a time", "sampling_params": {"n": 2, **GREEDY}}).json()
    assert greedy[0]["output_ids"] == greedy[1]["output_ids"]
    assert greedy[0]["meta_info"]["cached_tokens"] > 0  # the shared prompt was prefilled once


def test_stream_matches_non_stream(server: str) -> None:
    body = {"text": "Write a haiku about the sea.", "sampling_params": {**GREEDY,
                                                                       "max_new_tokens": 24}}
    full = post(server, body).json()
    with post(server, {**body, "stream": True}, stream=True) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 2  # tokens arriving between two sends are coalesced, as in SGLang
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur["text"].startswith(prev["text"])  # cumulative
    assert chunks[-1]["text"] == full["text"]
    assert chunks[-1]["output_ids"] == full["output_ids"]
    assert "index" not in chunks[-1]


def test_stream_interval_and_batch_index(server: str) -> None:
    body = {"text": ["One", "Two"], "stream": True,
            "sampling_params": {**GREEDY, "max_new_tokens": 6, "stream_interval": 3}}
    with post(server, body, stream=True) as r:
        chunks = sse(r)[:-1]
    assert sorted({c["index"] for c in chunks}) == [0, 1]
    for index in (0, 1):
        lengths = [len(c["output_ids"]) for c in chunks if c["index"] == index]
        assert lengths[-1] == 6
        assert all(b - a >= 3 for a, b in zip([0, *lengths[:-1]], lengths[:-1]))


def test_cjk_and_emoji_stream_equals_non_stream(server: str) -> None:
    body = {"text": "Translate to Chinese and add emoji: I love tea.",
            "sampling_params": {"temperature": 0, "max_new_tokens": 40}}
    full = post(server, body).json()
    with post(server, {**body, "stream": True}, stream=True) as r:
        chunks = sse(r)[:-1]
    assert chunks[-1]["text"].encode() == full["text"].encode()
    assert all("\ufffd" not in c["text"] for c in chunks)


def test_logprobs(server: str) -> None:
    body = {"text": "The capital of Italy is", "return_logprob": True, "logprob_start_len": 0,
            "top_logprobs_num": 3, "token_ids_logprob": [5, 7], "return_text_in_logprobs": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 4}}
    meta = post(server, body).json()["meta_info"]
    prompt_tokens = meta["prompt_tokens"]
    assert len(meta["input_token_logprobs"]) == prompt_tokens
    assert meta["input_token_logprobs"][0][0] is None
    assert all(e[0] <= 0 for e in meta["input_token_logprobs"][1:])
    assert len(meta["output_token_logprobs"]) == 4
    for tok, top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        lp, tid, text = tok
        assert isinstance(text, str)
        assert len(top) == 3
        assert tid == top[0][1] and abs(lp - top[0][0]) < 1e-6  # greedy picks the top token
    assert len(meta["input_top_logprobs"]) == prompt_tokens
    assert meta["input_top_logprobs"][0] is None
    assert [e[1] for e in meta["output_token_ids_logprobs"][0]] == [5, 7]
    no_text = post(server, {**body, "return_text_in_logprobs": False}).json()["meta_info"]
    assert no_text["output_token_logprobs"][0][2] is None
    start = post(server, {**body, "logprob_start_len": 2}).json()["meta_info"]
    assert len(start["input_token_logprobs"]) == prompt_tokens - 2
    assert abs(start["input_token_logprobs"][0][0]
               - meta["input_token_logprobs"][2][0]) < 1e-4


def test_stop_strings_and_tokens(server: str) -> None:
    base = post(server, {"text": CHAT, "sampling_params": {"temperature": 0,
                                                           "max_new_tokens": 32}}).json()
    assert "Paris" in base["text"]
    stopped = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 32, "stop": ["Paris"]}}).json()
    assert stopped["text"] == base["text"][: base["text"].index("Paris")]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Paris"}
    kept = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 32, "stop": "Paris", "no_stop_trim": True}}).json()
    assert kept["text"].endswith("Paris")
    target = base["output_ids"][2]
    by_token = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 32, "stop_token_ids": [target]}}).json()
    assert by_token["output_ids"] == base["output_ids"][:3]
    assert by_token["meta_info"]["finish_reason"] == {"type": "stop", "matched": target}
    ignore = post(server, {"text": CHAT, "sampling_params": {
        "temperature": 0, "max_new_tokens": 12, "ignore_eos": True}}).json()
    assert len(ignore["output_ids"]) == 12


def test_prefix_cache_reports_cached_tokens(server: str) -> None:
    prompt = "A long shared system prompt about astronomy and the planets of the solar system. " * 4
    first = post(server, {"text": prompt + "Q1", "sampling_params": GREEDY}).json()
    second = post(server, {"text": prompt + "Q2", "sampling_params": GREEDY}).json()
    assert second["meta_info"]["cached_tokens"] >= first["meta_info"]["prompt_tokens"] - 4
    assert requests.post(f"{server}/flush_cache").status_code == 200
    third = post(server, {"text": prompt + "Q2", "sampling_params": GREEDY}).json()
    assert third["meta_info"]["cached_tokens"] == 0
    assert third["output_ids"] == second["output_ids"]


def test_abort_request_by_rid(server: str) -> None:
    result: dict = {}

    def run() -> None:
        result["r"] = post(server, {"text": "Count to one thousand:", "rid": "to-abort",
                                    "sampling_params": {"max_new_tokens": 2000,
                                                        "ignore_eos": True}})

    t = threading.Thread(target=run)
    t.start()
    wait_running(server, 1)  # the request runs: the abort finds it (an event, not a delay)
    assert requests.post(f"{server}/abort_request", json={"rid": "to-abort"}).status_code == 200
    t.join(60)
    out = result["r"].json()
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(out["output_ids"]) < 2000


def test_client_disconnect_aborts(server: str) -> None:
    body = {"text": "Tell me a very long story.", "stream": True,
            "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}
    with post(server, body, stream=True) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    deadline = time.time() + 30
    while time.time() < deadline:
        state = requests.get(f"{server}/get_server_info").json()["internal_states"][0]
        if state["idle"]:
            break
        time.sleep(0.2)
    assert state["idle"], state
