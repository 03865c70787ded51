"""``/v1/completions`` and ``/v1/embeddings`` (contract 5.1, 5.3) through the official ``openai``
client (sync and async) and raw ``requests`` for the error shapes, on the session demo server.

Greedy requests (temperature 0) are compared with ``/generate``'s reply for the same request;
sampled ones use a seed. Every bad request is a 400 in the E2 (parse) or E3 (handler) shape whose
message names the field, and the server keeps serving after them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
import requests
from server_utils import DEMO_MODEL, SERVER_ARGS, serving

PROMPT = "The capital of France is"
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
CAPITAL_SCHEMA = {"type": "object",
                  "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                 "is_big": {"type": "boolean"}},
                  "required": ["capital", "is_big"]}
N_TOKENS = 8


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def greedy(client: openai.OpenAI) -> openai.types.Completion:
    """The greedy completion of PROMPT (N_TOKENS, top-3 logprobs) most tests compare with."""
    return client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS,
                                     temperature=0, logprobs=3)


def generate(server: str, body: dict) -> dict:
    r = requests.post(f"{server}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def tokenize(server: str, text: str) -> list[int]:
    r = requests.post(f"{server}/tokenize", json={"prompt": text}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def complete_raw(server: str, body: dict) -> requests.Response:
    return requests.post(f"{server}/v1/completions", json=body, timeout=120)


# ---- replies ---------------------------------------------------------------------------------------
def test_str_prompt_reply_shape(server: str, client: openai.OpenAI,
                                greedy: openai.types.Completion) -> None:
    out = client.completions.create(model="my-model", prompt=PROMPT, max_tokens=N_TOKENS,
                                    temperature=0)
    assert out.object == "text_completion" and out.model == "my-model"
    assert len(out.id) == 32
    (choice,) = out.choices
    assert choice.index == 0 and choice.logprobs is None
    assert choice.text == greedy.choices[0].text
    native = generate(server, {"text": PROMPT, "sampling_params": {
        "temperature": 0, "max_new_tokens": N_TOKENS}})
    assert choice.text == native["text"]
    assert choice.finish_reason == native["meta_info"]["finish_reason"]["type"]
    assert out.usage.prompt_tokens == native["meta_info"]["prompt_tokens"]
    assert out.usage.completion_tokens == native["meta_info"]["completion_tokens"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    raw = complete_raw(server, {"prompt": PROMPT, "max_tokens": 2}).json()
    assert raw["model"] == "default" and raw["metadata"] == {"weight_version": "default"}
    assert raw["usage"]["prompt_tokens_details"] is None  # no --enable-cache-report
    assert set(raw["choices"][0]) == {"index", "text", "logprobs", "finish_reason",
                                      "matched_stop"}


def test_prompts_times_n_in_prompt_major_order(client: openai.OpenAI,
                                               greedy: openai.types.Completion) -> None:
    prompts = [PROMPT, "One, two, three,"]
    out = client.completions.create(model="m", prompt=prompts, n=2, max_tokens=N_TOKENS,
                                    temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    first = greedy
    second = client.completions.create(model="m", prompt=prompts[1], max_tokens=N_TOKENS,
                                       temperature=0)
    for i, single in enumerate((first, second)):
        assert out.choices[2 * i].text == out.choices[2 * i + 1].text == single.choices[0].text
    # The prompt is counted once however many samples it has.
    assert out.usage.prompt_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert out.usage.completion_tokens == 2 * (first.usage.completion_tokens
                                               + second.usage.completion_tokens)


def test_token_id_prompts(server: str, client: openai.OpenAI,
                          greedy: openai.types.Completion) -> None:
    ids = tokenize(server, PROMPT)
    text = greedy.choices[0].text
    one = client.completions.create(model="m", prompt=ids, max_tokens=N_TOKENS, temperature=0)
    assert one.choices[0].text == text and one.usage.prompt_tokens == len(ids)
    other = tokenize(server, "Hello there")
    two = client.completions.create(model="m", prompt=[ids, other], max_tokens=N_TOKENS,
                                    temperature=0)
    assert len(two.choices) == 2 and two.choices[0].text == text
    assert two.usage.prompt_tokens == len(ids) + len(other)


def test_return_token_ids_user_and_best_of(server: str, client: openai.OpenAI) -> None:
    ids = tokenize(server, PROMPT)
    native = generate(server, {"input_ids": ids, "sampling_params": {
        "temperature": 0, "max_new_tokens": 4}})
    out = client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0,
                                    user="me", best_of=1,
                                    extra_body={"return_token_ids": True})
    extra = out.choices[0].model_extra
    assert extra["token_ids"] == native["output_ids"] and extra["prompt_token_ids"] == ids
    streamed = list(client.completions.create(model="m", prompt=[ids], max_tokens=4,
                                              temperature=0, stream=True,
                                              extra_body={"return_token_ids": True}))
    extras = [c.choices[0].model_extra for c in streamed]
    assert [t for e in extras for t in e["token_ids"]] == native["output_ids"]
    assert extras[0]["prompt_token_ids"] == ids
    assert all("prompt_token_ids" not in e for e in extras[1:])


def test_stop_string_and_length(client: openai.OpenAI,
                                greedy: openai.types.Completion) -> None:
    full = greedy
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == N_TOKENS
    assert full.choices[0].matched_stop is None
    text = full.choices[0].text
    stop = text.strip().split()[1] if len(text.split()) > 1 else text.strip()[1:]
    out = client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS,
                                    temperature=0, stop=[stop])
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and choice.matched_stop == stop
    assert choice.text == text[:text.index(stop)]


def test_seed_reproducible_at_temperature_one(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model="m", prompt="Once upon a time", max_tokens=6,
                                         temperature=1.0, seed=seed).choices[0].text
    a, b = sample(11), sample(11)
    assert a == b
    assert any(sample(s) != a for s in (12, 13))


def test_logprobs_match_generate(server: str, client: openai.OpenAI,
                                 greedy: openai.types.Completion) -> None:
    out = greedy
    lp = out.choices[0].logprobs
    n = N_TOKENS
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert all(len(top) == 3 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    native = generate(server, {"text": PROMPT, "return_logprob": True, "top_logprobs_num": 3,
                               "return_text_in_logprobs": True,
                               "sampling_params": {"temperature": 0, "max_new_tokens": n}})
    meta = native["meta_info"]
    assert lp.token_logprobs == pytest.approx([e[0] for e in meta["output_token_logprobs"]])
    assert lp.tokens == [e[2] for e in meta["output_token_logprobs"]]
    for top, entries in zip(lp.top_logprobs, meta["output_top_logprobs"], strict=True):
        assert top == pytest.approx({e[2]: e[0] for e in entries})
    zero = client.completions.create(model="m", prompt=PROMPT, max_tokens=2, temperature=0,
                                     logprobs=0).choices[0].logprobs
    assert len(zero.tokens) == 2 and zero.top_logprobs == [None, None]


def test_echo_with_and_without_logprobs(server: str, client: openai.OpenAI,
                                        greedy: openai.types.Completion) -> None:
    plain = greedy.choices[0].text
    echo = client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS,
                                     temperature=0, echo=True)
    assert echo.choices[0].text == PROMPT + plain
    ids = tokenize(server, PROMPT)
    out = client.completions.create(model="m", prompt=ids, max_tokens=N_TOKENS, temperature=0,
                                    echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == PROMPT + plain
    assert len(lp.tokens) == len(ids) + N_TOKENS
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == out.choices[0].text


# ---- streaming -------------------------------------------------------------------------------------
def test_stream_joins_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    args = {"model": "m", "prompt": ["Once upon a time", PROMPT], "max_tokens": 8,
            "temperature": 1.0, "seed": 5, "n": 2}
    full = client.completions.create(**args)
    texts = ["", "", "", ""]
    finishes: dict[int, list] = {i: [] for i in range(4)}
    usage = None
    for chunk in client.completions.create(**args, stream=True,
                                           stream_options={"include_usage": True}):
        assert chunk.object == "text_completion"
        if not chunk.choices:
            usage = chunk.usage
            continue
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
        finishes[choice.index].append(choice.finish_reason)
    assert texts == [c.text for c in full.choices]
    for i in range(4):  # the finish reason comes once, in the choice's last chunk
        assert finishes[i][-1] == full.choices[i].finish_reason
        assert all(f is None for f in finishes[i][:-1])
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens)


def test_stream_continuous_usage_and_logprobs(client: openai.OpenAI,
                                              greedy: openai.types.Completion) -> None:
    full = greedy
    chunks = list(client.completions.create(
        model="m", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=3,
        stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == N_TOKENS
    assert all(c.usage.prompt_tokens == full.usage.prompt_tokens for c in chunks)
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert "".join(p.text for p in pieces) == full.choices[0].text
    expected = full.choices[0].logprobs
    def joined(name: str) -> list:
        return [v for p in pieces for v in getattr(p.logprobs, name)]
    assert joined("tokens") == expected.tokens
    assert joined("text_offset") == expected.text_offset
    assert joined("token_logprobs") == pytest.approx(expected.token_logprobs)


def test_async_client(server: str, greedy: openai.types.Completion) -> None:
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)
        full, stream = await asyncio.gather(
            client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS,
                                      temperature=0),
            client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS,
                                      temperature=0, echo=True, stream=True))
        joined = "".join([c.choices[0].text async for c in stream])
        await client.close()
        return full.choices[0].text, joined

    full, joined = asyncio.run(run())
    assert full == greedy.choices[0].text
    assert joined == PROMPT + full


def test_usage_chunk_by_server_default_is_off(server: str) -> None:
    r = requests.post(f"{server}/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 3, "stream": True}, stream=True, timeout=60)
    lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == b"data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert all(e["choices"] for e in events)  # no usage chunk without include_usage


def test_abort_by_rid_and_client_disconnect(server: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True,
            "rid": "oai-abort-me"}
    with requests.post(f"{server}/v1/completions", json=body, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        first = next(x for x in lines if x)
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        requests.post(f"{server}/abort_request", json={"rid": "oai-abort-me"}, timeout=30)
        events = [json.loads(x[6:]) for x in lines if x and x != b"data: [DONE]"]
    assert events[-1]["choices"][0]["finish_reason"] == "abort"
    with requests.post(f"{server}/v1/completions", json={**body, "rid": "oai-gone"},
                       stream=True, timeout=120) as r:
        next(x for x in r.iter_lines() if x)  # then the client goes away mid-stream


@pytest.fixture(scope="module")
def report_server() -> Iterator[str]:
    """The one extra server of this file: the flags that change the usage reports, and hidden
    states."""
    with serving(DEMO_MODEL, [*SERVER_ARGS, "--enable-cache-report",
                              "--stream-response-default-include-usage",
                              "--enable-return-hidden-states"]) as url:
        yield url


def test_cache_report_and_default_stream_usage(report_server: str) -> None:
    body = {"prompt": PROMPT * 8, "max_tokens": 2, "temperature": 0}
    complete_raw(report_server, body)
    again = complete_raw(report_server, body).json()["usage"]
    assert again["prompt_tokens_details"]["cached_tokens"] > 0

    def usage_chunks(extra: dict) -> list:
        r = requests.post(f"{report_server}/v1/completions", json={**body, "stream": True,
                                                                   **extra}, timeout=60)
        events = [json.loads(x[6:]) for x in r.iter_lines() if x and x != b"data: [DONE]"]
        return [e["usage"] for e in events if not e["choices"]]

    (usage,) = usage_chunks({})  # on by the server's default
    assert usage["completion_tokens"] == 2 and usage["prompt_tokens"] == again["prompt_tokens"]
    assert usage_chunks({"stream_options": {"include_usage": False}}) == []


def test_hidden_states(report_server: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "return_hidden_states": True}
    choice = complete_raw(report_server, body).json()["choices"][0]
    vector = choice["hidden_states"]
    assert len(vector) > 8 and all(isinstance(x, float) for x in vector)
    r = requests.post(f"{report_server}/v1/completions", json={**body, "stream": True},
                      timeout=60)
    events = [json.loads(x[6:]) for x in r.iter_lines() if x and x != b"data: [DONE]"]
    last = [e["choices"][0] for e in events if e["choices"]][-1]
    assert last["finish_reason"] == "length"
    assert last["hidden_states"] == pytest.approx(vector, rel=1e-3, abs=1e-3)


# ---- constrained output ----------------------------------------------------------------------------
def test_json_schema_extra_and_response_format(client: openai.OpenAI) -> None:
    prompt = CHAT.format("What is the capital of France? Answer in JSON.")
    out = client.completions.create(model="m", prompt=prompt, max_tokens=32, temperature=0,
                                    extra_body={"json_schema": json.dumps(CAPITAL_SCHEMA)})
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].text), CAPITAL_SCHEMA)
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}}
    out = client.completions.create(model="m", prompt=prompt, max_tokens=32, temperature=0,
                                    extra_body={"response_format": fmt})
    jsonschema.validate(json.loads(out.choices[0].text), CAPITAL_SCHEMA)


# ---- errors ----------------------------------------------------------------------------------------
BAD_REQUESTS = [
    ({"max_tokens": 0}, "E2", "max_tokens must be positive"),
    ({"n": 0}, "E2", "n must be at least 1"),
    ({"suffix": "!"}, "E3", "suffix"),
    ({"prompt": ""}, "E3", "Prompt cannot be empty"),
    ({"prompt": []}, "E3", "Prompt cannot be empty"),
    ({"prompt": [1, "a"]}, "E2", "prompt[1]"),
    ({"prompt": [[1, 2], 3]}, "E2", "prompt[1]"),
    ({"prompt": {"text": "a"}}, "E2", "prompt"),
    ({"temperature": -1}, "E3", "temperature"),
    ({"top_p": 2}, "E3", "top_p"),
    ({"stream_options": {"include_usage": True}}, "E3",
     "Stream options can only be defined when `stream=True`."),
    ({"logprobs": 1000}, "E3", "logprobs"),
    ({"logprobs": -1}, "E3", "logprobs"),
    ({"lora_path": "adapter"}, "E3", "lora_path"),
    ({"session_params": {"id": "s"}}, "E3", "session_params"),
    ({"priority": 1}, "E3", "priority"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "E3",
     "schema_ is required"),
    ({"response_format": {"type": "xml"}}, "E2", "response_format"),
    ({"max_tokens": "many"}, "E2", "max_tokens"),
    ({"return_hidden_states": True}, "E3", "--enable-return-hidden-states"),
    ({"custom_logit_processor": "{}"}, "E3", "--enable-custom-logit-processor"),
    ({"response_format": {"type": "json_object"}, "regex": "a+"}, "E3", "response_format"),
]


@pytest.mark.parametrize(("extra", "shape", "needle"), BAD_REQUESTS,
                         ids=[json.dumps(b[0])[:40] for b in BAD_REQUESTS])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_are_400s(server: str, extra: dict, shape: str, needle: str,
                               stream: bool) -> None:
    body = {"prompt": PROMPT, "max_tokens": 4, **extra}
    if stream and "stream_options" in extra:  # the contrast: valid with stream=True
        body["stream"] = True
        assert complete_raw(server, body).status_code == 200
        return
    if stream:
        body["stream"] = True
    r = complete_raw(server, body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["object"] == "error" and err["code"] == 400 and err["param"] is None
    assert err["type"] == ("Bad Request" if shape == "E2" else "BadRequestError"), err
    assert needle in err["message"], err


def test_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens must be positive"):
        client.completions.create(model="m", prompt=PROMPT, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model="m", prompt=PROMPT, suffix="x")


def test_non_json_media_type_is_refused(server: str) -> None:
    r = requests.post(f"{server}/v1/completions", data=json.dumps({"prompt": "a"}),
                      headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400 and "Only 'application/json'" in r.json()["message"]


def test_server_serves_after_bad_requests(server: str, client: openai.OpenAI) -> None:
    for body in ({"prompt": [[]]}, {"prompt": ["a", ""]}, {"prompt": [10**12]},
                 {"prompt": [[1], []]}):
        r = complete_raw(server, {**body, "max_tokens": 2})
        assert r.status_code == 400, r.text
    out = client.completions.create(model="m", prompt=PROMPT, max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2


# ---- embeddings ------------------------------------------------------------------------------------
def test_embeddings_on_a_generation_model(server: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="--is-embedding"):
        client.embeddings.create(model="m", input="hello")
    for path, body in (("/encode", {"text": "hello"}), ("/classify", {"text": "hello"}),
                       ("/v1/classify", {"input": "hello"})):
        r = requests.post(f"{server}{path}", json=body, timeout=30)
        assert r.status_code == 400 and "--is-embedding" in r.text, (path, r.text)
    for body, needle in (({"input": ""}, "Input cannot be empty"),
                         ({"input": "   "}, "Input cannot be empty or whitespace only"),
                         ({"input": ["a", 1]}, "must be strings"),
                         ({"input": [1, -2]}, "non-negative"),
                         ({"input": "a", "lora_path": "x"}, "lora_path"),
                         ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
                         ({"input": "a", "dimensions": 0}, "dimensions")):
        r = requests.post(f"{server}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == 400 and needle in r.json()["message"], r.text
