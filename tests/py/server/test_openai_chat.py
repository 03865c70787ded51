"""``/v1/chat/completions`` through the official ``openai`` client (contract 5.2): replies and
stream shapes, sampling fields, logprobs, response_format, forced tool calls, and the 400s of
bad requests (the server keeps serving after them). Tool-parser and reasoning end-to-end tests
live with the parsers."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
import requests
from server_utils import DEMO_MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"enum": ["c", "f"]}},
                  "required": ["city", "unit"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                        "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ADD_TOOL = [TOOLS[1]]


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer():
    from sglang.srt.hf_transformers_utils import get_tokenizer

    return get_tokenizer(DEMO_MODEL)


def chat(client: openai.OpenAI, messages=None, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model="demo", messages=messages or QUESTION, **kwargs)


def joined_stream(client: openai.OpenAI, **kwargs) -> tuple[dict[int, str], list]:
    """The content of each choice of a stream, and its chunks."""
    chunks = list(chat(client, stream=True, **kwargs))
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts, chunks


# ---- replies -----------------------------------------------------------------------------------
def test_basic_reply(client, tokenizer) -> None:
    r = chat(client, temperature=0)
    assert r.object == "chat.completion" and r.model == "demo"
    assert len(r.id) == 32
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    extra = choice.model_extra
    assert "matched_stop" in extra and choice.message.model_extra["reasoning_content"] is None
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True,
                                           return_dict=False)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.to_dict()["metadata"] == {"weight_version": "default"}


def test_system_and_multi_turn(client) -> None:
    messages = [{"role": "system", "content": "You answer with one word."},
                {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "Apple"},
                {"role": "user", "content": [{"type": "text", "text": "Name"},
                                             {"type": "text", "text": "another one."}]}]
    r = chat(client, messages, temperature=0, max_tokens=8)
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content


def test_n_choices(client) -> None:
    single = chat(client, temperature=0, max_tokens=2)
    r = chat(client, n=2, temperature=1.0, seed=5, max_tokens=6)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counted once
    assert 2 <= r.usage.completion_tokens <= 12


def test_stop_string(client) -> None:
    r = chat(client, temperature=0, stop=["Paris"], max_tokens=20)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["matched_stop"] == "Paris"
    assert "Paris" not in choice.message.content


def test_max_tokens_length(client) -> None:
    r = chat(client, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = chat(client, temperature=0, max_completion_tokens=2, max_tokens=None)
    assert r.usage.completion_tokens == 2


def test_seed_reproducible(client) -> None:
    a = chat(client, temperature=1.0, seed=42, max_tokens=6).choices[0].message.content
    b = chat(client, temperature=1.0, seed=42, max_tokens=6).choices[0].message.content
    assert a == b


def test_logprobs_shape(client) -> None:
    r = chat(client, temperature=0, logprobs=True, top_logprobs=3, max_tokens=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    first = content[0]
    assert first.token and first.bytes == list(first.token.encode()) and first.logprob <= 0
    assert len(first.top_logprobs) == 3
    assert first.top_logprobs[0].token == first.token  # greedy: the top token is the chosen one
    assert all(t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in first.top_logprobs)
    assert chat(client, max_tokens=2).choices[0].logprobs is None


def test_stream_equals_non_stream(client) -> None:
    kwargs = {"temperature": 0.8, "seed": 7, "max_tokens": 12, "n": 2}
    whole = chat(client, **kwargs)
    texts, chunks = joined_stream(client, stream_options={"include_usage": True}, **kwargs)
    assert texts == {c.index: c.message.content for c in whole.choices}
    first = {}
    for c in chunks[:-1]:
        assert c.object == "chat.completion.chunk" and len(c.choices) == 1
        first.setdefault(c.choices[0].index, c.choices[0])
    for choice in first.values():  # the role chunk comes first for each choice
        assert choice.delta.role == "assistant" and choice.delta.content == ""
    finals = [c.choices[0] for c in chunks[:-1] if c.choices[0].finish_reason is not None]
    assert sorted(f.index for f in finals) == [0, 1]
    by_index = {c.index: c for c in whole.choices}
    for f in finals:
        assert f.finish_reason == by_index[f.index].finish_reason
        assert f.delta.content is None and f.delta.role is None
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_stream_holds_back_stop_string_prefixes(client) -> None:
    """A stop string of several tokens: its first tokens are never streamed (the joined stream
    equals the trimmed reply)."""
    kwargs = {"temperature": 0, "max_tokens": 12, "stop": [" of France"]}
    whole = chat(client, **kwargs).choices[0]
    assert whole.finish_reason == "stop" and whole.model_extra["matched_stop"] == " of France"
    texts, _ = joined_stream(client, **kwargs)
    assert texts[0] == whole.message.content


def test_stream_logprobs(client) -> None:
    _, chunks = joined_stream(client, temperature=0, logprobs=True, top_logprobs=1, max_tokens=4,
                              stream_options={"continuous_usage_stats": True})
    entries = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert len(entries) == 4 and all(len(e.top_logprobs) == 1 for e in entries)
    counts = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].logprobs]
    assert counts == sorted(counts) and counts[-1] == 4  # continuous_usage_stats


def test_response_format_json_schema(client) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = chat(client, [{"role": "user", "content": "Describe a person as JSON."}], temperature=0,
             max_tokens=60, response_format={"type": "json_schema",
                                             "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = chat(client, temperature=0, max_tokens=40, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = chat(client, temperature=0, max_tokens=4, response_format={"type": "text"})
    assert r.choices[0].message.content


def test_continue_final_message(client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is"}]
    r = chat(client, messages, temperature=0, max_tokens=4, extra_body={
        "continue_final_message": True})
    assert "Paris" in r.choices[0].message.content
    assert not r.choices[0].message.content.startswith("The capital")


def test_sampling_defaults_apply_when_omitted(client, server) -> None:
    info = requests.get(f"{server}/get_server_info", timeout=30).json()
    defaults = info["internal_states"][0]["chat_sampling_defaults"]
    assert set(defaults) >= {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}
    omitted = chat(client, seed=11, max_tokens=5).choices[0].message.content
    explicit = chat(client, seed=11, max_tokens=5, temperature=defaults["temperature"],
                    top_p=defaults["top_p"], extra_body={
                        "top_k": defaults["top_k"], "min_p": defaults["min_p"],
                        "repetition_penalty": defaults["repetition_penalty"]})
    assert omitted == explicit.choices[0].message.content


def test_sglang_extras(client) -> None:
    r = chat(client, temperature=0, max_tokens=6, extra_body={
        "regex": "(yes|no)", "rid": "chat-extras-rid", "min_tokens": 1})
    assert r.choices[0].message.content in ("yes", "no") and r.id == "chat-extras-rid"
    r = chat(client, temperature=0, max_tokens=4, user="someone", extra_body={
        "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
    assert r.usage.completion_tokens == 4


# ---- tools -------------------------------------------------------------------------------------
def check_calls(calls, names=None) -> None:
    assert calls
    for i, call in enumerate(calls):
        assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
        assert call.model_extra.get("index", i) == i
        if names:
            assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_tool_choice_named(client) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = chat(client, [{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
             tool_choice=choice, temperature=0, max_tokens=40)
    message = r.choices[0].message
    check_calls(message.tool_calls, {"get_weather"})
    assert r.choices[0].finish_reason == "tool_calls" and message.content == ""


def test_tool_choice_required(client) -> None:
    # One call at most (maxItems 1): the grammar ends the output after the array.
    r = chat(client, [{"role": "user", "content": "Add 2 and 3."}], tools=ADD_TOOL,
             tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=30)
    calls = r.choices[0].message.tool_calls
    check_calls(calls, {"add"})
    assert len(calls) == 1 and r.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_tool_calls_stream(client, tool_choice) -> None:
    choice = tool_choice if tool_choice == "required" else {
        "type": "function", "function": {"name": "add"}}
    kwargs = {"tools": ADD_TOOL, "tool_choice": choice, "parallel_tool_calls": False,
              "temperature": 0, "max_tokens": 30}
    messages = [{"role": "user", "content": "Add 2 and 3."}]
    whole = chat(client, messages, **kwargs).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chat(client, messages, stream=True, **kwargs):
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": d.id, "name": d.function.name,
                                                  "arguments": ""})
                assert (d.id is not None) == (call["arguments"] == "" and d.function.name
                                              is not None)
                call["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(w.function.name, json.loads(w.function.arguments)) for w in whole]
    for c in calls.values():
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


def test_tool_result_conversation(client) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 21}'},
    ]
    r = chat(client, messages, tools=TOOLS, temperature=0, max_tokens=3)
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")


# ---- concurrency -------------------------------------------------------------------------------
def test_async_client_concurrent(server) -> None:
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0)
        replies = await asyncio.gather(*(aclient.chat.completions.create(
            model="demo", messages=QUESTION, temperature=0, max_tokens=6) for _ in range(3)))
        stream = await aclient.chat.completions.create(
            model="demo", messages=QUESTION, temperature=0, max_tokens=6, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
        await aclient.close()
        return [r.choices[0].message.content for r in replies] + [streamed]

    texts = asyncio.run(run())
    assert len(set(texts)) == 1


# ---- bad requests ------------------------------------------------------------------------------
BAD_REQUESTS = [
    ({"messages": []}, "Messages cannot be empty."),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "'wizard'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "schema_ is required for json_schema response format request."),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"n": 0}, "n must be at least 1"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "http://x/y.png"}}]}]},
     ("messages[0].content[0]: image_url parts are not supported: the model LlamaForCausalLM "
      "does not take images")),
    ({"messages": [{"role": "user", "content": [{"type": "video_url",
                                                 "video_url": {"url": "http://x/y.mp4"}}]}]},
     "content parts of type 'video_url' are not supported"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "Tool 'nope' not found in tools list."),
    ({"tool_choice": "required"}, "Tools cannot be empty if tool choice is set to required."),
    ({"max_tokens": 10**6}, "max_completion_tokens is too large: 1000000."),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs requires logprobs"),
    ({"temperature": -1}, "temperature"),
    ({"lora_path": "adapter"}, "lora_path"),
    ({"priority": 3}, "priority"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "add_generation_prompt"),
]


@pytest.mark.parametrize(("patch", "needle"), BAD_REQUESTS,
                         ids=[f"bad{i}" for i in range(len(BAD_REQUESTS))])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests(server, patch, needle, stream) -> None:
    body = {"model": "demo", "messages": QUESTION, "max_tokens": 4, "stream": stream, **patch}
    r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["object"] == "error" and err["code"] == 400
    assert needle in err["message"]


def test_media_type_and_serving_after_errors(server, client) -> None:
    r = requests.post(f"{server}/v1/chat/completions", data=json.dumps({"messages": QUESTION}),
                      headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400 and "Unsupported Media Type" in r.json()["message"]
    assert chat(client, temperature=0, max_tokens=2).choices[0].message.content


# ---- output splitting (no server) --------------------------------------------------------------
def split_stream(plan, text: str, step: int = 3) -> dict:
    """The deltas of ``text`` fed ``step`` characters at a time, joined."""
    from sglang.srt.entrypoints.openai.chat import ChoiceOutput

    output = ChoiceOutput(plan)
    joined: dict = {"reasoning_content": "", "content": "", "calls": {}}
    pieces = [text[i:i + step] for i in range(0, len(text), step)] or [""]
    for i, piece in enumerate(pieces):
        delta = output.feed(piece, i == len(pieces) - 1)
        joined["reasoning_content"] += delta.get("reasoning_content", "")
        joined["content"] += delta.get("content", "")
        for d in delta.get("tool_calls", []):
            call = joined["calls"].setdefault(d["index"], {"arguments": ""})
            if "id" in d:
                call["id"], call["name"] = d["id"], d["function"]["name"]
            call["arguments"] += d["function"]["arguments"]
    return joined


@pytest.mark.parametrize("stream_reasoning", [True, False])
def test_choice_output_reasoning_and_tool_calls(stream_reasoning) -> None:
    """Reasoning split first, then hermes tool calls out of the content; streamed deltas join to
    the whole-output result."""
    from sglang.srt.entrypoints.openai.chat import ChoiceOutput, OutputPlan

    plan = OutputPlan(reasoning_parser="qwen3", stream_reasoning=stream_reasoning,
                      tool_parser="hermes", tools=TOOLS)
    text = ('<think>I should add.</think>Let me add.\n<tool_call>\n{"name": "add", '
            '"arguments": {"a": 2, "b": 3}}\n</tool_call>')
    whole = ChoiceOutput(plan)
    reasoning, content, calls = whole.parse(text)
    assert reasoning == "I should add." and whole.made_calls
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("add", {"a": 2, "b": 3})]
    streamed = split_stream(plan, text)
    assert streamed["reasoning_content"] == reasoning
    assert streamed["content"].strip() == content.strip()
    call = streamed["calls"][0]
    assert call["name"] == "add" and call["id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"a": 2, "b": 3}


def test_stop_prefix_len() -> None:
    from sglang.srt.entrypoints.openai.chat import stop_prefix_len

    assert stop_prefix_len("The Par", ["Paris"]) == 3
    assert stop_prefix_len("xxPari", ["Paris", "ari!"]) == 4
    assert stop_prefix_len("abc", ["c"]) == 0 and stop_prefix_len("abc", []) == 0


def test_choice_output_plain_and_unknown_parser() -> None:
    from sglang.srt.entrypoints.openai.chat import ChoiceOutput, OutputPlan
    from sglang.srt.entrypoints.openai.common import OpenAIError

    assert ChoiceOutput(OutputPlan()).parse("hi <think>x</think>") == \
        (None, "hi <think>x</think>", [])
    assert split_stream(OutputPlan(), "hello world")["content"] == "hello world"
    with pytest.raises(OpenAIError, match="Unknown reasoning parser"):
        ChoiceOutput(OutputPlan(reasoning_parser="nope"))


def test_special_tokens_stay_in_the_text_when_tools_may_be_called() -> None:
    """As SGLang: tool-call markers can be special tokens, so they are not skipped when tools are
    offered (tool_choice other than none); otherwise the request's skip_special_tokens holds."""
    from types import SimpleNamespace

    from sglang.srt.entrypoints.openai.chat import ChatCompletionRequest, chat_sampling_params

    tm = SimpleNamespace(info=SimpleNamespace(context_length=2048), chat_sampling_defaults={},
                         args=SimpleNamespace(allow_auto_truncate=False))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def skip(**extra) -> bool:
        req = ChatCompletionRequest.model_validate({**base, **extra})
        return chat_sampling_params(tm, req, prompt_len=10)["skip_special_tokens"]

    assert skip() is True
    assert skip(tools=[tool]) is False
    assert skip(tools=[tool], tool_choice="required") is False
    assert skip(tools=[tool], tool_choice="none") is True
